"""The LSTM over code sequences (``featbench classify --clf lstm``), as the paper ran it.

PROTOCOL.md: on a network's codes, one LSTM per AU with one hidden layer of 200 units and a
binary output, trained with SGD (lr 1e-4, momentum 0.9) and Gaussian weight noise (std 0.1)
put on the weights before each batch's gradient; training and validation sequences are cut
around each run of activation (3 extra frames before and after), long inactive stretches
(500-1000 frames) dropped; test scores each subject's whole sequence.

What this module holds, stated once
-----------------------------------
**Sequences** (:func:`cut_track`, :func:`cut_sequences`). A sequence is a stretch of one
subject's video whose frames follow each other (frame numbers consecutive) and all have codes;
a frame without codes -- or, in training and validation, without a label for the AU -- ends
a sequence, and the breaks are counted and reported, never bridged. Subject (and video)
boundaries always end a sequence. In ``train`` mode (training and validation) each run of
activation with ``context`` frames either side becomes one sequence (runs that close merge) and
each inactive stretch between runs another, dropped when it is ``drop_gap`` frames or longer
(the paper's "long inactive stretches of 500-1000 frames"; default 500). ``test`` mode keeps
every frame: each test subject's whole sequence, in frame order. Without balancing
(``--no-balance``) training and validation use whole sequences too.

**The network** (:class:`SequenceLSTM`): z-scoring with the training subjects' mean and std
(stored in the model, so that a saved ``.pt`` scores raw codes alone), one LSTM layer
(``--hidden``, ``--bidirectional``) and a linear output per AU (one AU: the paper's per-AU
model; ``--multilabel``: one network with an output per AU, trained on the frames that
label each AU). Batches are :class:`torch.nn.utils.rnn.PackedSequence` s: variable-length
sequences without padding to the longest.

**Training** goes through THE loop, :func:`classify.training.fit` (epoch chosen by F1 on the
validation subjects' sequences, a checkpoint per epoch that a rerun resumes, weight noise,
AMP on CUDA). The loss is the binary cross-entropy *summed* over the frames of a batch (as
CURRENNT, the toolkit with per-batch weight noise, sums the error over time steps), which is
what makes the paper's small learning rate train. The protocol balances training per AU; a
sequence cannot drop negative frames the way rows do, so balancing weights each positive frame
by the training sequences' negatives / positives instead (``--no-balance``: whole sequences,
unweighted unless ``--class-weight balanced``). Batches hold sequences of similar length
(shuffled within buckets, bucket order shuffled) so that packing wastes few time steps. Scores are logits; a frame is called present
when its logit is > the threshold (0, or with ``--tune-threshold`` the F1-best one on the
validation subjects' whole sequences, scored as test is).

Per-AU networks train in parallel worker processes on CPU (torch threads = cores // workers);
on CUDA they train one after another on the device.
"""

import os
import sys
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from featbench.core.errors import StoreError, UsageError
from featbench.core.metrics import au_metrics
from featbench.core.threads import set_torch_threads
from featbench.core.workspace import atomic_path

from classify.estimators import best_threshold, decide
from classify.registry import ClassifierSpec
from classify.training import TrainConfig, fit
from extract.encoders import resolve_device

FORMAT = "featbench-lstm/1"


# --- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LSTMOptions:
    """What a user varies for ``--clf lstm``; the defaults are the paper's.

    Attributes
    ----------
    hidden : int
        Units of the LSTM layer (paper: 200).
    epochs : int
        At most this many epochs; the epoch is chosen on the validation subjects.
    lr : float
        SGD learning rate (paper: 1e-4; momentum 0.9).
    weight_noise : float
        Std of the Gaussian noise on the weights for each training batch (paper: 0.1).
    bidirectional : bool
        A bidirectional LSTM (test scores whole sequences offline, so it may look ahead).
    context : int
        Frames kept before and after each run of activation (paper: 3).
    drop_gap : int
        Inactive stretches this long or longer are dropped in training and validation (paper:
        500-1000).
    multilabel : bool
        One network with one output per AU instead of one network per AU.
    batch : int
        Sequences per batch.
    patience : int or None
        Stop after this many epochs without a better validation F1.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    hidden: int = 200
    epochs: int = 25
    lr: float = 1e-4
    weight_noise: float = 0.1
    bidirectional: bool = False
    context: int = 3
    drop_gap: int = 500
    multilabel: bool = False
    batch: int = 16
    patience: object = 5
    device: str = "auto"

    def __post_init__(self):
        checks = (("--hidden", self.hidden, 1), ("--epochs", self.epochs, 1),
                  ("--context", self.context, 0), ("--drop-gap", self.drop_gap, 1),
                  ("--batch", self.batch, 1))
        for flag, value, low in checks:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise UsageError(f"{flag} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_noise, (int, float)) and np.isfinite(self.weight_noise)
                and self.weight_noise >= 0):
            raise UsageError(f"--weight-noise must be a number >= 0, got {self.weight_noise!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise UsageError(f"--patience must be an integer >= 1, got {self.patience!r}")
        resolve_device(self.device)  # an unknown or absent device says so now, not mid-run

    def tag(self):
        """Return the run-name tag of the non-default settings (None for the paper's)."""
        d, parts = LSTMOptions.__dataclass_fields__, []
        short = {"hidden": "h", "epochs": "e", "lr": "lr", "weight_noise": "wn", "context": "c",
                 "drop_gap": "gap", "batch": "b", "patience": "p"}
        if self.multilabel:
            parts.append("ml")
        if self.bidirectional:
            parts.append("bi")
        for name, prefix in short.items():
            value = getattr(self, name)
            if value != d[name].default:
                parts.append(f"{prefix}{'none' if value is None else format(value, 'g')}")
        return "-".join(parts) or None

    def train_config(self, seed=0):
        """Return the :class:`classify.training.TrainConfig` of these options."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, momentum=0.9, optimizer="sgd",
                           patience=self.patience, monitor="val_score",
                           weight_noise=self.weight_noise, seed=seed, device=self.device,
                           amp=True, channels_last=False)


def options_from(value):
    """Return :class:`LSTMOptions` from None, a dict of option values or the options."""
    if value is None:
        return LSTMOptions()
    if isinstance(value, LSTMOptions):
        return value
    unknown = set(value) - set(LSTMOptions.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown LSTM option(s): {', '.join(sorted(unknown))}")
    return LSTMOptions(**value)


# --- sequences ---------------------------------------------------------------------------------
def cut_track(y, *, mode="train", context=3, drop_gap=500):
    """Cut one unbroken track (consecutive frames of one video, all with codes) into sequences.

    Parameters
    ----------
    y : array of shape (n,) or (n, k)
        Labels in frame order: 1 present, 0 absent, -1 unlabelled. With several columns (the
        multilabel network) a frame is active when any AU is present and unlabelled when no AU
        is labelled.
    mode : {"train", "whole", "test"}
        ``train``: unlabelled frames break the track; each run of activation with ``context``
        frames either side is one sequence (runs closer than that merge), each inactive
        stretch between them another, dropped when it is ``drop_gap`` frames or longer;
        ``whole``: unlabelled frames break the track, nothing else is cut; ``test``: the
        whole track.
    context, drop_gap : int

    Returns
    -------
    list of (start, stop)
        Half-open index ranges into the track, in order, none empty.
    """
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    n = len(y)
    if mode == "test":
        return [(0, n)] if n else []
    if mode not in ("train", "whole"):
        raise ValueError(f"mode must be train, whole or test, got {mode!r}")
    labelled = (y >= 0).any(axis=1)
    if mode == "whole":
        return _runs(labelled)
    active = (y == 1).any(axis=1)
    near = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(active & labelled)
    if idx.size:  # frames within `context` of an active frame
        diff = np.zeros(n + 1, dtype=np.int64)
        np.add.at(diff, np.maximum(idx - context, 0), 1)
        np.add.at(diff, np.minimum(idx + context + 1, n), -1)
        near = np.cumsum(diff[:-1]) > 0
    out = []
    for s, e in _runs(labelled):  # unlabelled frames break the track
        runs = [(a + s, b + s, True) for a, b in _runs(near[s:e])]
        runs += [(a + s, b + s, False) for a, b in _runs(~near[s:e]) if b - a < drop_gap]
        out += [(a, b) for a, b, _ in sorted(runs)]
    return out


def _runs(mask):
    """Return the (start, stop) ranges of the true runs of a boolean array."""
    m = np.r_[False, np.asarray(mask, dtype=bool), False].astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


@dataclass
class Cut:
    """Sequences of table rows and what breaking them cost."""

    sequences: list = field(default_factory=list)
    frames: int = 0
    missing_breaks: int = 0    # a frame number skipped inside a video (no codes / no frame)
    unlabelled: int = 0        # frames left out because the AU(s) had no label there
    dropped_inactive: int = 0  # frames of long inactive stretches left out

    def report(self):
        """Return a JSON-ready dict of the counts."""
        return {"sequences": len(self.sequences), "frames": self.frames,
                "breaks_at_missing_frames": self.missing_breaks,
                "unlabelled_frames_left_out": self.unlabelled,
                "inactive_frames_dropped": self.dropped_inactive}


def cut_sequences(rows, group, frame, y, *, mode, context=3, drop_gap=500):
    """Cut table rows of one part (train / validation / test subjects) into sequences.

    Parameters
    ----------
    rows : array of int
        Table rows that have codes (any order).
    group : array of int, indexed by table row
        One id per (subject, video): a sequence never crosses it.
    frame : array of int, indexed by table row
        Frame numbers; a skipped number (a frame without codes) breaks the sequence.
    y : array, indexed by table row, of shape (n,) or (n, k)
    mode : {"train", "whole", "test"}
        As :func:`cut_track`.

    Returns
    -------
    Cut
        ``sequences``: arrays of table rows in frame order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = Cut()
    if rows.size == 0:
        return out
    rows = rows[np.lexsort((frame[rows], group[rows]))]
    g, f = group[rows], frame[rows]
    new_group = np.r_[True, g[1:] != g[:-1]]
    jump = np.r_[False, (f[1:] != f[:-1] + 1) & ~new_group[1:]]
    out.missing_breaks = int(jump.sum())
    starts = np.flatnonzero(new_group | jump)
    y = np.asarray(y)
    for s, e in zip(starts, np.r_[starts[1:], rows.size]):
        track = rows[s:e]
        yt = y[track]
        pieces = cut_track(yt, mode=mode, context=context, drop_gap=drop_gap)
        if mode != "test":
            lab = (yt >= 0).any(axis=1) if yt.ndim > 1 else yt >= 0
            out.unlabelled += int((~lab).sum())
            out.dropped_inactive += int(lab.sum()) - sum(b - a for a, b in pieces)
        out.sequences += [track[a:b] for a, b in pieces]
    out.frames = int(sum(len(s) for s in out.sequences))
    return out


# --- the network -------------------------------------------------------------------------------
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
        shape (total frames, n_out), in the packed order (``packed.data``'s).
        """

        def __init__(self, dims, n_out=1, *, hidden=200, bidirectional=False, mean=None, std=None):
            super().__init__()
            self.dims, self.n_out, self.hidden, self.bidirectional = dims, n_out, hidden, bidirectional
            mean = torch.zeros(dims) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
            std = torch.ones(dims) if std is None else torch.as_tensor(std, dtype=torch.float32)
            self.register_buffer("mean", mean.clone())
            self.register_buffer("std", std.clone())
            self.lstm = nn.LSTM(dims, hidden, batch_first=False, bidirectional=bidirectional)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_out)

        def forward(self, packed):
            x = (packed.data.float() - self.mean) / self.std
            out, _ = self.lstm(PackedSequence(x, packed.batch_sizes, packed.sorted_indices,
                                              packed.unsorted_indices))
            return self.head(out.data)

    _CLASS = SequenceLSTM
    return _CLASS


def fit_scaler(X):
    """Return (mean, std) of the rows ``X`` (std 1 where a feature is constant)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[~(std > 0)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def pack(seqs):
    """Return ``(PackedSequence of the codes, packed order of the rows)`` for a list of
    ``(codes (len, dims), rows (len,))`` pairs."""
    torch = _torch()
    from torch.nn.utils.rnn import pack_sequence

    x = pack_sequence([torch.as_tensor(c) for c, _ in seqs], enforce_sorted=False)
    order = pack_sequence([torch.as_tensor(r) for _, r in seqs], enforce_sorted=False).data
    return x, order


def score_sequences(model, X, pos, sequences, *, device="cpu", batch_frames=20000):
    """Return ``{table row: logits (n_out,)}`` as an array: logits of every row of ``sequences``.

    Parameters
    ----------
    model : SequenceLSTM
    X : array (n_codes, dims)
    pos : array mapping a table row to its row of ``X``
    sequences : list of arrays of table rows
        Scored each as one whole sequence, in order, in batches of about ``batch_frames``.

    Returns
    -------
    rows : array (m,) of table rows, logits : array (m, n_out) float32
    """
    torch = _torch()
    model.eval()
    rows_out, logits_out = [], []
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    with torch.inference_mode():
        i = 0
        while i < len(order):
            batch, n = [], 0
            while i < len(order) and (not batch or n + len(sequences[order[i]]) <= batch_frames):
                s = sequences[order[i]]
                batch.append((np.asarray(X[pos[s]], dtype=np.float32), s))
                n += len(s)
                i += 1
            x, rows = pack(batch)
            out = model(x.to(device))
            rows_out.append(rows.numpy())
            logits_out.append(out.float().cpu().numpy())
    if not rows_out:
        return np.zeros(0, dtype=np.int64), np.zeros((0, model.n_out), dtype=np.float32)
    return np.concatenate(rows_out), np.concatenate(logits_out)


# --- training one network ----------------------------------------------------------------------
@dataclass
class LSTMFit:
    """A trained network and what was chosen on validation (AUFit's fields, plus the epochs)."""

    model: object
    aus: list
    threshold: float = 0.0
    thresholds: list = field(default_factory=list)
    val_f1: float = float("nan")
    C: float = float("nan")
    grid: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    best_epoch: int = 0
    history: list = field(default_factory=list)
    cuts: dict = field(default_factory=dict)
    device: str = "cpu"
    options: dict = field(default_factory=dict)
    seconds: float = float("nan")
    cpu_seconds: float = float("nan")

    def decision_function(self, X):
        """Not per frame: an LSTM scores sequences (see :func:`score_sequences`)."""
        raise TypeError("an LSTM scores sequences, not frames: use classify.lstm.score_sequences")


def train_network(X, pos, group, frame, Y, parts, *, options, seed=0, tune_threshold=False,
                  balance=True, class_weight=None, checkpoint_dir=None, identity=None,
                  progress=False):
    """Train one network on the training subjects' sequences; score validation and test.

    Parameters
    ----------
    X : array (n_codes, dims)
    pos, group, frame : arrays indexed by table row (code row, video id, frame number)
    Y : array (n_rows, k) int8
        The labels of the network's AUs (k = 1 for a per-AU network).
    parts : dict
        ``train``, ``validation``, ``test``: table rows with codes.
    options : LSTMOptions
    tune_threshold : bool
        Choose each output's threshold by F1 on the validation subjects' whole sequences.
    balance : bool
        Cut training and validation around activation runs (else whole sequences).
    class_weight : {None, "balanced"}
        Weight positive frames by negatives / positives of the training sequences (always so
        with ``balance``: the sequences cannot drop negative frames the way balanced rows do).

    Returns
    -------
    LSTMFit, test_scores (n_test, k) in the order of ``parts["test"]``
    """
    torch = _torch()

    k = Y.shape[1]
    mode = "train" if balance else "whole"
    cut = {p: cut_sequences(parts[p], group, frame, Y, mode=mode, context=options.context,
                            drop_gap=options.drop_gap) for p in ("train", "validation")}
    train = cut["train"].sequences
    fit_out = LSTMFit(model=None, aus=[], options=asdict(options),
                      cuts={p: c.report() for p, c in cut.items()})
    if not train:
        raise UsageError("no training sequence (no training frame with codes and labels)")
    train_rows = np.concatenate(train)
    mean, std = fit_scaler(X[pos[train_rows]])  # training subjects only
    torch.manual_seed(seed)
    model = build_model(X.shape[1], k, hidden=options.hidden, bidirectional=options.bidirectional,
                        mean=mean, std=std)
    device = resolve_device(options.device)
    train_data = [(np.asarray(X[pos[s]], dtype=np.float32), np.asarray(Y[s], dtype=np.float32))
                  for s in train]
    frame_loss = _frame_loss(_pos_weight(Y[train_rows], balance=balance, class_weight=class_weight))

    def train_batches(epoch, rng):
        return _length_bucketed_batches(train_data, options.batch, rng)

    def step_loss(model, batch):
        x, y = batch
        return frame_loss(model(x), y)[0]

    evaluate = partial(_validation_score, X=X, pos=pos, Y=Y, seqs=cut["validation"].sequences,
                       frame_loss=frame_loss, device=device)
    result = fit(model, train_batches=train_batches, step_loss=step_loss, evaluate=evaluate,
                 config=options.train_config(seed), checkpoint_dir=checkpoint_dir,
                 identity=identity, progress=progress)
    fit_out.model, fit_out.best_epoch, fit_out.history = model, result.best_epoch, result.history
    fit_out.device = str(result.device)
    if not (result.best and np.isfinite(result.best.get("val_score", np.nan))):
        fit_out.notes.append("no validation F1 (no positive in validation): last epoch kept")
    seq = dict(X=X, pos=pos, group=group, frame=frame, Y=Y, device=device)
    _choose_thresholds(fit_out, parts["validation"], tune_threshold=tune_threshold, **seq)
    return fit_out, _score_test(fit_out, parts["test"], **seq)


def _pos_weight(ytr, *, balance, class_weight):
    """Return the (k,) weight of positive frames (negatives / positives in training), or None.

    Always with ``balance``: sequences cannot drop negative frames the way balanced rows do.
    """
    if not (balance or class_weight == "balanced"):
        return None
    torch = _torch()
    n_pos = (ytr == 1).sum(axis=0).clip(min=1)
    n_neg = (ytr == 0).sum(axis=0)
    return torch.as_tensor(n_neg / n_pos, dtype=torch.float32)


def _frame_loss(pos_weight):
    """Return ``loss(logits, y) -> (summed BCE over labelled frames, their count)``; y < 0: no label."""
    torch = _torch()

    def frame_loss(logits, y):
        mask = y >= 0
        w = None if pos_weight is None else pos_weight.to(logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), y.clamp(min=0), pos_weight=w, reduction="none")
        return (loss * mask).sum(), mask.sum()

    return frame_loss


def _length_bucketed_batches(train_data, batch, rng):
    """Yield packed ``(x, y)`` batches of ``batch`` sequences in a seeded random order.

    Sequences are grouped in buckets of similar lengths (8 batches each), so a batch pads little.
    """
    order = rng.permutation(len(train_data))
    span = batch * 8
    order = np.concatenate([sorted(order[i:i + span], key=lambda j: len(train_data[j][0]))
                            for i in range(0, len(order), span)]) if len(order) else order
    starts = rng.permutation(np.arange(0, len(order), batch))
    for i in starts:
        chunk = [train_data[j] for j in order[i:i + batch]]
        x, _ = pack([(c, np.zeros(len(c))) for c, _ in chunk])
        y, _ = pack([(t, np.zeros(len(t))) for _, t in chunk])
        yield x, y.data


def _validation_score(model, *, X, pos, Y, seqs, frame_loss, device):
    """Return the epoch's validation loss and mean F1 (threshold 0) over the cut sequences ``seqs``."""
    torch = _torch()

    if not seqs:
        return {"val_loss": float("nan"), "val_score": float("nan")}
    rows, logits = score_sequences(model, X, pos, seqs, device=device)
    y = Y[rows]
    total, n = frame_loss(torch.as_tensor(logits), torch.as_tensor(y, dtype=torch.float32))
    f1 = [au_metrics(y[:, a], decide(logits[:, a], 0.0))["f1"] for a in range(Y.shape[1])]
    f1 = [f for f in f1 if np.isfinite(f)]
    return {"val_loss": float(total / max(int(n), 1)),
            "val_score": float(np.mean(f1)) if f1 else float("nan")}


def _choose_thresholds(fit_out, val_rows, *, tune_threshold, X, pos, group, frame, Y, device):
    """Set ``fit_out``'s thresholds and validation F1 on the validation subjects' whole sequences.

    Scored as test is; a threshold is tuned only with ``tune_threshold`` (else 0).
    """

    k = Y.shape[1]
    thresholds = np.zeros(k)
    whole_val = cut_sequences(val_rows, group, frame, Y, mode="test").sequences
    vrows, vlogits = score_sequences(fit_out.model, X, pos, whole_val, device=device)
    val_f1 = np.full(k, np.nan)
    for a in range(k):
        lab = Y[vrows, a] >= 0
        ya, sa = Y[vrows, a][lab], vlogits[lab, a]
        if tune_threshold:
            if (ya == 1).any():
                thresholds[a] = best_threshold(ya, sa)
            else:
                fit_out.notes.append("no positive in validation: threshold left at 0")
        if ya.size:
            val_f1[a] = au_metrics(ya, decide(sa, thresholds[a]))["f1"]
    fit_out.thresholds, fit_out.threshold = thresholds.tolist(), float(thresholds[0])
    fit_out.val_f1 = float(val_f1[0]) if k == 1 else float(np.nanmean(val_f1)) if np.isfinite(val_f1).any() else float("nan")
    fit_out.val_f1_per_output = val_f1.tolist()


def _score_test(fit_out, test_rows, *, X, pos, group, frame, Y, device):
    """Return (n_test, k) scores of each test subject's whole sequence, in ``test_rows``' order.

    Sequences broken at frames without codes are reported in ``fit_out.notes``, never bridged;
    the model is moved back to the CPU afterwards.
    """
    test = cut_sequences(test_rows, group, frame, Y, mode="test")
    fit_out.cuts["test"] = test.report()
    breaks = {p: c["breaks_at_missing_frames"] for p, c in fit_out.cuts.items()
              if c["breaks_at_missing_frames"]}
    if breaks:
        fit_out.notes.append("sequences broken at frames without codes: " +
                             ", ".join(f"{n} in {p}" for p, n in breaks.items()))
    trows, tlogits = score_sequences(fit_out.model, X, pos, test.sequences, device=device)
    fit_out.model.to("cpu")
    scores = np.full((len(test_rows), Y.shape[1]), np.nan, dtype=np.float32)
    where = {int(r): i for i, r in enumerate(test_rows)}
    scores[[where[int(r)] for r in trows]] = tlogits
    return scores


# --- saving and loading ------------------------------------------------------------------------
def save_model(fit, path, *, meta=None):
    """Save a trained network, its AUs and thresholds as one self-contained ``.pt`` file."""
    torch = _torch()
    m = fit.model
    state = {"format": FORMAT, "state_dict": {k: v.cpu() for k, v in m.state_dict().items()},
             "dims": m.dims, "n_out": m.n_out, "hidden": m.hidden, "bidirectional": m.bidirectional,
             "aus": list(fit.aus), "thresholds": list(fit.thresholds), "best_epoch": fit.best_epoch,
             "options": fit.options, "meta": dict(meta or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_model(path):
    """Return ``(SequenceLSTM in eval mode, saved dict)`` of a ``.pt`` file made by :func:`save_model`."""
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise StoreError(f"{path}: not a readable LSTM model file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StoreError(f"{path}: not a featbench LSTM model file (format {FORMAT} expected)")
    model = build_model(state["dims"], state["n_out"], hidden=state["hidden"],
                        bidirectional=state["bidirectional"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    return model, state


# --- the run's hook: every (fold, AU) job, per-AU networks or one multilabel network per fold --
def _network_task(task, *, codes, labels, pos, group, frame, options, seed, tune_threshold,
                  balance, class_weight, checkpoint_root, fingerprint, threads=None, progress=False):
    """Train one network (a fold's AU, or a fold's AUs for --multilabel); return per-AU results."""
    if threads:  # this worker's share of the cores: fit's per-epoch choice leaves it alone
        set_torch_threads(int(threads))
    import time

    t0, c0 = time.perf_counter(), time.process_time()
    fi, cols, aus, region, rows = task
    X = codes[region]
    if isinstance(X, str):
        X = np.load(X, mmap_mode="r")
    Y = labels[:, cols]
    out = []
    stats = {}
    for part in ("train", "validation"):
        y = Y[rows[part]]
        lab = (y >= 0)
        stats[part] = (lab.sum(axis=0), ((y == 1) & lab).sum(axis=0))
    base = [{"fold": fi, "au": au, "n_train": int(stats["train"][0][j]),
             "n_train_pos": int(stats["train"][1][j]), "n_val": int(stats["validation"][0][j]),
             "n_val_pos": int(stats["validation"][1][j]), "fit": None,
             "scores": np.full(rows["test"].size, np.nan, dtype=np.float32)}
            for j, au in enumerate(aus)]
    trainable = [j for j, b in enumerate(base) if 0 < b["n_train_pos"] < b["n_train"]]
    for j, b in enumerate(base):
        if j not in trainable:
            what = "positive" if b["n_train_pos"] == 0 else "negative"
            b["error"] = f"no {what} frame in training: no classifier"
    if not trainable:
        return base
    keep = [cols[j] for j in trainable]
    ckpt = None
    if checkpoint_root:
        ckpt = os.path.join(checkpoint_root, f"{fi}-{'+'.join(aus[j] for j in trainable)}")
    identity = {"options": asdict(options), "seed": seed, "fold": fi, "aus": [aus[j] for j in trainable],
                "region": region, "balance": balance, "class_weight": class_weight,
                "subjects": fingerprint, "train_rows": int(rows["train"].size)}
    fit, scores = train_network(X, pos, group, frame, labels[:, keep], rows, options=options,
                                seed=seed, tune_threshold=tune_threshold, balance=balance,
                                class_weight=class_weight, checkpoint_dir=ckpt,
                                identity=identity, progress=progress)
    fit.aus = [aus[j] for j in trainable]
    fit.seconds = round(time.perf_counter() - t0, 2)
    fit.cpu_seconds = round(time.process_time() - c0, 2)  # this worker's threads, all of them
    for col, j in enumerate(trainable):
        b = base[j]
        b["fit"] = fit if len(trainable) == 1 else _View(fit, col)
        b["scores"] = scores[:, col]
    return base


class _View:
    """One AU's face of a multilabel fit: its threshold and val F1, the shared network."""

    def __init__(self, fit, col):
        self.shared, self.col = fit, col
        self.model, self.C, self.grid = fit.model, float("nan"), {}
        self.threshold = float(fit.thresholds[col])
        self.val_f1 = float(fit.val_f1_per_output[col])
        self.notes = list(fit.notes)
        self.best_epoch, self.history, self.cuts = fit.best_epoch, fit.history, fit.cuts
        self.seconds, self.cpu_seconds = fit.seconds, fit.cpu_seconds


def run_jobs(jobs, *, table, codes, labels, pos, options, seed, tune_threshold, balance,
             class_weight, checkpoint_root=None, n_jobs=None, progress=True):
    """Train every (fold, AU) job of a classify run with LSTMs; return run.py's result dicts.

    Per-AU networks (the paper) train in parallel worker processes on CPU; ``--multilabel``
    trains one network per fold over the fold's AUs.
    """
    import tempfile

    from tqdm import tqdm

    groups = table.frames["subject"].astype(str) + "\x00" + table.frames["video"].astype(str)
    group = groups.factorize()[0].astype(np.int64)
    frame = table.frames["frame"].to_numpy(dtype=np.int64)
    if options.multilabel:
        tasks, seen = [], {}
        for fi, ai, au, region, rows in jobs:
            seen.setdefault((fi, region), (rows, []))[1].append((ai, au))
        for (fi, region), (rows, members) in seen.items():
            tasks.append((fi, [a for a, _ in members], [u for _, u in members], region, rows))
    else:
        tasks = [(fi, [ai], [au], region, rows) for fi, ai, au, region, rows in jobs]
    fingerprint = table.fingerprint()
    kw = dict(labels=labels, pos=pos, group=group, frame=frame, options=options, seed=seed,
              tune_threshold=tune_threshold, balance=balance, class_weight=class_weight,
              checkpoint_root=str(checkpoint_root) if checkpoint_root else None,
              fingerprint=fingerprint)
    device = resolve_device(options.device)
    cores = os.cpu_count() or 1
    workers = 1 if str(device).startswith("cuda") else max(
        1, min(len(tasks), cores if n_jobs in (None, -1) else int(n_jobs)))
    bar = dict(total=len(tasks), desc="lstm", unit="net", file=sys.stderr, disable=not progress,
               leave=False)
    results = []
    if workers == 1:
        for t in tqdm(tasks, **bar):
            results += _network_task(t, codes=codes, **kw)
        return results
    from joblib import Parallel, delayed

    with tempfile.TemporaryDirectory(prefix="featbench-codes-") as tmp:
        files = {}
        for region, c in codes.items():
            files[region] = os.path.join(tmp, f"{region}.npy")
            np.save(files[region], c)
        gen = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")(
            delayed(_network_task)(t, codes=files, threads=max(1, cores // workers), **kw)
            for t in tasks)
        for part in tqdm(gen, **bar):
            results += part
    return results


def save_fits(folder, splits, by, au_list):
    """Write each trained network of a run once into ``folder``; return {(fold, au): entry}."""
    entries, saved = {}, {}
    for fi, split in enumerate(splits):
        for au in au_list:
            r = by[(fi, au)]
            if r["fit"] is None:
                continue
            fit = getattr(r["fit"], "shared", r["fit"])
            if id(fit) not in saved:
                stem = au if len(fit.aus) == 1 else "multilabel"
                name = f"{stem}.pt" if len(splits) == 1 else f"{stem}-{split.name}.pt"
                save_model(fit, folder / name, meta={"fold": split.name})
                saved[id(fit)] = name
            f = r["fit"]
            entries[(fi, au)] = {"model_file": saved[id(fit)], "output": fit.aus.index(au),
                                 "threshold": f.threshold, "val_f1": f.val_f1, "notes": f.notes,
                                 "best_epoch": f.best_epoch, "sequences": f.cuts,
                                 "seconds": f.seconds, "cpu_seconds": f.cpu_seconds,
                                 "history": f.history}
    return entries


def _spec():
    return ClassifierSpec(name="lstm", needs_sequences=True, train_jobs=run_jobs, save_fits=save_fits,
                          options=options_from, load=load_model, suffix=".pt",
                          help="LSTM over each subject's code sequence, epoch chosen on validation")


#: the ``lstm`` entry of :mod:`classify.registry`
SPEC = _spec()
