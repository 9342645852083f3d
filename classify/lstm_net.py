"""The LSTM's network (:mod:`classify.lstm`): :class:`SequenceLSTM`, made and rebuilt here.

:func:`build_model` makes a fresh one for training; :func:`network_of` rebuilds a trained unit
from its run's model entry (``featbench predict``, the model check: :mod:`classify.loaders`),
so applying an LSTM run needs this module, not the training one. The network (z-scoring, one
LSTM layer, a linear output per AU; why its input weights start at zero on wide codes) is
described in :mod:`classify.lstm`'s docstring.
"""


def _torch():
    import torch

    return torch


def build_model(dims, n_out=1, *, hidden=200, bidirectional=False, mean=None, std=None):
    """Return a :class:`SequenceLSTM` (made here so that torch loads only when needed)."""
    return _model_class()(dims, n_out, hidden=hidden, bidirectional=bidirectional, mean=mean, std=std)


_CLASS = None


def _model_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    torch = _torch()
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence

    class SequenceLSTM(nn.Module):
        """z-score -> LSTM (one layer) -> linear, one logit per AU and frame.

        ``forward`` takes a PackedSequence of raw codes and returns the logits of its frames,
        shape (total frames, n_out), in the packed order (``packed.data``'s); training, the
        run's scoring and predict's streaming (``hx``, ``state``) all go through it.
        """

        def __init__(self, dims, n_out=1, *, hidden=200, bidirectional=False, mean=None, std=None):
            super().__init__()
            self.dims, self.n_out, self.hidden, self.bidirectional = dims, n_out, hidden, bidirectional
            mean = torch.zeros(dims) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
            std = torch.ones(dims) if std is None else torch.as_tensor(std, dtype=torch.float32)
            self.register_buffer("mean", mean.clone())
            self.register_buffer("std", std.clone())
            self.lstm = nn.LSTM(dims, hidden, batch_first=False, bidirectional=bidirectional)
            # the input weights start at zero and their weight noise is scaled to the code's
            # width: see "The input weights" in the module docstring
            self.noise_scales = {}
            if dims > hidden:  # a code wider than the state (PyTorch's init is made for less)
                with torch.no_grad():
                    for name, w in self.lstm.named_parameters():
                        if name.startswith("weight_ih"):
                            w.zero_()
                            self.noise_scales[f"lstm.{name}"] = (hidden / dims) ** 0.5
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_out)

        def forward(self, packed, hx=None, *, state=False):
            """Logits of the packed frames; with ``state``, ``(logits, (h, c))`` that a next
            stretch of the same sequences continues from (``hx``)."""
            x = (packed.data.float() - self.mean) / self.std
            out, hx = self.lstm(PackedSequence(x, packed.batch_sizes, packed.sorted_indices,
                                               packed.unsorted_indices), hx)
            logits = self.head(out.data)
            return (logits, hx) if state else logits

    _CLASS = SequenceLSTM
    return _CLASS


def network_of(entry, state):
    """The :class:`SequenceLSTM` of a unit ``entry`` with ``state`` loaded, in eval mode."""
    model = build_model(entry["dims"], entry["n_out"], hidden=entry["hidden"],
                        bidirectional=entry["bidirectional"])
    model.load_state_dict(state)
    return model.eval()
