"""The network a fine-tuning run trains: a registry CNN with new fully connected layers and head.

:func:`create_finetune_net` builds ``spec``'s whole network with ``--weights`` (through
:func:`extract.weights.build_network`, so every weight source of ``featbench extract`` works
here too), then

1. **re-initialises** fully connected layers (``reinit``):

   ``fc``       every fully connected layer after the conv body (fc6, fc7 of the VGG-family
                nets; none but the classifier for ResNet / GoogLeNet / MobileNet; dlib_face's
                128-d fc, after which the new output layer comes): the paper's default;
   ``fc6-fc7``  fc6 and fc7 (the paper's variant; only networks that have both). For CNN-F,
                AlexNet, VGG these are the same layers as ``fc``: the two spellings name the
                paper's two descriptions and give their runs distinct names;
   ``head``     none: fc6 / fc7 keep their pretrained weights, only the new output layer is
                fresh (the usual modern recipe, for comparison);

2. **replaces the classifier** by a new linear layer: ``per-au`` = 2 outputs (absent /
   present: one network per AU, the paper's), ``multilabel`` = one logit per AU. A network
   whose output is its code (dlib_face's 128-d face descriptor, timm's pooled features) keeps
   it and gets the new layer after it (``ft_head``). For a face-identity embedding
   (:data:`EMBEDDINGS`: dlib_face) ``ft_head`` is batch norm + linear: the batch norm
   standardises the code as the z-scoring before an SVM on frozen codes does. Without it the
   new layer barely learns in a few epochs: dlib's descriptor varies by about 0.03 per
   dimension across a subject's expressions (it is trained to ignore them), and a linear head
   on the embedded set's frozen dlib codes scored a mean F1 of 0.05-0.21 after 180-900 steps,
   against 0.35-0.52 with the batch norm (README);

3. **freezes** every parameter before ``train_from`` (``--train-from conv4``: conv1-3 stay as
   loaded, bit for bit; their batch-norm statistics too).

Layer names for ``--train-from``: ``conv1`` ... and ``fc6``, ``fc7``, ``fc8`` (the new output
layer) for the AlexNet-shaped nets (``features`` + ``classifier``); any module name of the
network (``layer3``, ``features.10``) for every network.

The module's input is a batch of aligned faces, ``(N, S, S, 3)`` uint8 RGB, and the spec's
normalisation (:func:`extract.encoders.create_preprocess`) is its first layer, as in
extraction. Its ``net`` keeps the registry network's layer names (only the classifier's shape
differs), so the saved ``net`` state dict loads into ``featbench extract --weights PATH``.
"""

import dataclasses

from featbench.core.errors import UsageError, did_you_mean

from extract.encoders import create_preprocess
from extract.registry import get_spec
from extract.weights import (MEAN_KEY, WeightsChoice, build_network, effective_mean, parse_weights,
                             weights_identity, weights_source)

HEADS = ("per-au", "multilabel")
#: network families whose code is a face-identity embedding: their new output layer
#: standardises the code first (see the module docstring)
EMBEDDINGS = ("dlib",)
REINITS = ("fc", "fc6-fc7", "head")


def check_choice(value, choices, flag):
    """Return ``value`` if it is one of ``choices``; else a UsageError naming the flag and choices."""
    if value not in choices:
        raise UsageError(did_you_mean(str(value), choices, what=f"{flag} value",
                                      hint="choices: " + ", ".join(choices)))
    return value


def _torch_nn():
    import torch
    from torch import nn

    return torch, nn


def fc_layers(net):
    """Return ``[(qualified name, nn.Linear)]`` of the fully connected layers after the conv body.

    They are the linear layers that are direct children of the last linear layer's parent
    (``classifier`` of VGG-family nets and MobileNets; the network itself for ResNet's ``fc``);
    the last one is the classifier that the fine-tuning head replaces. Empty when the network
    has no linear classifier (timm models built with ``num_classes=0``).
    """
    _, nn = _torch_nn()
    last = None
    for qual, mod in net.named_modules():
        if isinstance(mod, nn.Linear):
            last = qual
    if last is None:
        return []
    parent_name, _, attr = last.rpartition(".")
    if not parent_name:  # ResNet / GoogLeNet: fc is a direct child of the network
        return [(last, net.get_submodule(last))]
    parent = net.get_submodule(parent_name)
    return [(f"{parent_name}.{n}", m) for n, m in parent.named_children() if isinstance(m, nn.Linear)]


def layer_names(net, fcs):
    """Return ``{name: module name}`` of the friendly layer names ``--train-from`` accepts.

    ``conv1`` ... for the direct conv children of an AlexNet-shaped ``features``; ``fc6`` ...
    for its fully connected layers (the last of which is the new output layer).
    """
    _, nn = _torch_nn()
    names = {}
    feats = getattr(net, "features", None)
    if isinstance(feats, nn.Sequential) and isinstance(getattr(net, "classifier", None), nn.Sequential):
        convs = [n for n, m in feats.named_children() if isinstance(m, nn.Conv2d)]
        names.update({f"conv{i}": f"features.{n}" for i, n in enumerate(convs, 1)})
        names.update({f"fc{6 + i}": qual for i, (qual, _) in enumerate(fcs)})
    return names


def _reset(modules, seed):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in modules:
            m.reset_parameters()


def _make_class():
    import numpy as np

    torch, nn = _torch_nn()

    class _FinetuneNet(nn.Module):
        """uint8 faces -> logits: preprocessing, the network, an optional extra output layer."""

        def __init__(self, preprocess, net, extra_head=None, *, spec=None, mean=None):
            super().__init__()
            self.preprocess = preprocess
            self.net = net
            self.extra_head = extra_head
            self.frozen_norms = []  # a plain list: not registered as submodules twice
            self.spec = spec  # the registry spec at the trained input size
            self.mean = mean  # the mean the weights brought (effective at that size), or None

        def forward(self, x):
            z = self.net(self.preprocess(x))
            return self.extra_head(z) if self.extra_head is not None else z

        def train(self, mode=True):
            super().train(mode)
            for m in self.frozen_norms:  # frozen layers keep their statistics too
                m.eval()
            return self

        def export_state(self):
            """The state dict featbench saves: ``net``'s keys (+ ``ft_head.*`` for an extra head,
            + :data:`extract.weights.MEAN_KEY` when the starting weights brought their own mean,
            so whoever loads the file normalises faces as in training)."""
            sd = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
            if self.extra_head is not None:
                sd.update({f"ft_head.{k}": v.detach().cpu() for k, v in self.extra_head.state_dict().items()})
            if self.mean is not None:
                sd[MEAN_KEY] = torch.from_numpy(np.asarray(self.mean, np.float32).copy())
            return sd

        def load_exported(self, sd):
            """Load what :meth:`export_state` saved (its mean, when it has one, too)."""
            head = {k[len("ft_head."):]: v for k, v in sd.items() if k.startswith("ft_head.")}
            self.net.load_state_dict({k: v for k, v in sd.items()
                                      if not k.startswith("ft_head.") and k != MEAN_KEY})
            if self.extra_head is not None:
                self.extra_head.load_state_dict(head)
            if MEAN_KEY in sd:
                self.mean = sd[MEAN_KEY].float().numpy()
                self.preprocess = create_preprocess(self.spec, mean=self.mean).to(
                    next(self.net.parameters()).device)
            return self

    return _FinetuneNet


_CLASS = None


def _cls():
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


#: the largest ``--input-size`` featbench trains at (faces are aligned at 224 pixels)
MAX_INPUT_SIZE = 1024


def check_input_size(size):
    """Refuse an ``--input-size`` outside 16-:data:`MAX_INPUT_SIZE` pixels (one line)."""
    if size is not None and not 16 <= int(size) <= MAX_INPUT_SIZE:
        raise UsageError(f"--input-size {size}: must be 16-{MAX_INPUT_SIZE} pixels (faces are "
                         "aligned at 224)")


def _probe_fc6_input(net, size):
    """Return the flattened size that reaches fc6 of an AlexNet-shaped net for ``size`` inputs."""
    torch, _ = _torch_nn()
    check_input_size(size)
    try:
        with torch.no_grad():
            z = net.avgpool(net.features(torch.zeros(1, 3, size, size)))
    except RuntimeError:  # a pooling layer's output would be empty
        raise UsageError(f"--input-size {size} is too small for this network's conv layers") from None
    return int(z[0].numel())


def create_finetune_net(spec, weights=None, *, outputs, reinit="fc", train_from=None,
                        input_size=None, seed=0):
    """Build the network a fine-tuning run trains (see the module docstring).

    Parameters
    ----------
    spec : BackboneSpec
        A ``torch`` kind spec of the extract registry.
    weights : str or WeightsChoice, optional
        ``--weights`` (None: the spec's default).
    outputs : int
        Size of the new output layer (2 for ``per-au``, the unit's AU count for ``multilabel``).
    reinit : {"fc", "fc6-fc7", "head"}
    train_from : str, optional
        Freeze every parameter before this layer.
    input_size : int, optional
        Side of the input faces (default: the spec's). A size that changes fc6's input
        rebuilds fc6, which needs ``reinit`` to re-initialise it.
    seed : int
        Seeds the re-initialised and new layers.

    Returns
    -------
    net : torch.nn.Module
        uint8 (N, S, S, 3) faces -> (N, outputs) logits.
    info : dict
        ``weights`` (identity string), ``reinit_layers``, ``output_layer``, ``frozen``
        (names of frozen parameters), ``trained`` (count of trained parameters), ``input_size``,
        ``preprocessing`` (the normalisation the network's first layer applies; a mean the
        weights brought travels in the saved state too: :meth:`export_state`).

    Raises
    ------
    UsageError
        Not a torch network, an unknown ``reinit`` or layer, a size that does not fit.
    WeightsError
        Weights that are unavailable or do not fit the architecture.
    """
    check_choice(reinit, REINITS, "--reinit")
    if spec.kind != "torch":
        raise UsageError(f"{spec.name} is not a torch network here, so it cannot be fine-tuned "
                         "(featbench models lists the networks; every CNN can)")
    choice = weights if isinstance(weights, WeightsChoice) else parse_weights(weights, spec)
    size = int(input_size or spec.input_size)
    if size < 16:
        raise UsageError(f"--input-size must be at least 16, got {size}")
    net, mean = build_network(spec, choice)
    fcs = [] if spec.name.startswith("timm:") else fc_layers(net)
    # a network whose output is its code (dlib_face's 128-d fc, timm's pooled features) keeps
    # it and gets a new output layer after it; any other has its classifier replaced
    extra = not fcs or fcs[-1][1].out_features == spec.dims
    hidden = list(fcs) if extra else list(fcs[:-1])
    if reinit == "fc6-fc7":
        if len(hidden) < 2:
            raise UsageError(f"--reinit fc6-fc7: {spec.name} has no fc6 and fc7 (its fully connected "
                             f"layers: {', '.join(q for q, _ in fcs) or 'none'}); use --reinit fc")
        hidden = hidden[-2:]
    reinit_mods = [] if reinit == "head" else [m for _, m in hidden]
    reinit_names = [q for q, m in fcs if any(m is r for r in reinit_mods)]
    if fcs and not extra:
        fcs, reinit_mods = _fit_fc6_to_size(net, spec, size, fcs, reinit_mods)
    _reset(reinit_mods, seed)
    out_q, extra_head = _new_output_layer(net, spec, fcs, extra, outputs, seed)
    sized = dataclasses.replace(spec, input_size=size)
    mean = None if mean is None else effective_mean(sized, mean)
    model = _cls()(create_preprocess(sized, mean=mean), net, extra_head, spec=sized, mean=mean)
    frozen = _freeze(model, net, fcs, train_from, out_q)
    _probe_forward(model, spec, size)
    info = {"weights": weights_identity(spec, choice), "reinit_layers": reinit_names,
            "preprocessing": weights_source(sized).preprocessing(mean),
            "output_layer": out_q, "frozen": frozen, "input_size": size,
            "trained": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "layers": list(layer_names(net, fcs))}
    return model, info


def _probe_forward(model, spec, size):
    """Refuse, in one line, an input size whose faces the network's layers cannot take (a
    pooling output that would be empty): one face of zeros through it, before any data is read."""
    torch, _ = _torch_nn()
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    except RuntimeError:
        raise UsageError(f"--input-size {size} is too small for {spec.name}'s layers (its own "
                         f"input size is {spec.input_size})") from None
    finally:
        model.train(was_training)


def _fit_fc6_to_size(net, spec, size, fcs, reinit_mods):
    """Rebuild fc6 for ``size`` when the conv body then gives it another input size.

    An input size other than the network's own changes what reaches fc6 in nets without
    adaptive pooling (CNN-F/M/S, ZFNet): fc6 is then rebuilt, which only a re-init allows.
    Returns the (possibly new) ``fcs`` and ``reinit_mods``.
    """
    _, nn = _torch_nn()
    if not (hasattr(net, "features") and hasattr(net, "avgpool")) or size == spec.input_size:
        return fcs, reinit_mods
    first_q, first = fcs[0]
    got = _probe_fc6_input(net, size)
    if got == first.in_features:
        return fcs, reinit_mods
    if not any(first is m for m in reinit_mods):
        raise UsageError(f"--input-size {size}: {spec.name}'s {first_q} would see {got} "
                         f"values instead of {first.in_features}; use --reinit fc "
                         f"(re-initialises it) or --input-size {spec.input_size}")
    new = nn.Linear(got, first.out_features)
    parent, _, attr = first_q.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, new)
    return fc_layers(net), [new if m is first else m for m in reinit_mods]


def _new_output_layer(net, spec, fcs, extra, outputs, seed):
    """Replace the classifier by ``outputs`` logits (or add ``ft_head`` after the code layer).

    Returns ``(output layer name, extra head or None)``; seeded by ``seed + 1``.
    """
    torch, nn = _torch_nn()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        if extra and spec.family in EMBEDDINGS:  # standardised (as an SVM's scaler does)
            return "ft_head", nn.Sequential(nn.BatchNorm1d(int(spec.dims)),
                                            nn.Linear(int(spec.dims), int(outputs)))
        if extra:
            return "ft_head", nn.Linear(int(spec.dims), int(outputs))
        out_q, last = fcs[-1]
        head = nn.Linear(last.in_features, int(outputs))
        parent, _, attr = out_q.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, head)
        return out_q, None


def _freeze(model, net, fcs, train_from, out_q):
    """Freeze ``net``'s parameters before ``train_from``; return the frozen parameter names."""
    _, nn = _torch_nn()
    if not train_from:
        return []
    friendly = layer_names(net, fcs)
    if out_q == "ft_head":
        friendly["ft_head"] = "ft_head"
    qual = friendly.get(train_from, train_from)
    params = list(net.named_parameters())
    if qual == "ft_head":
        start = len(params)
    else:
        start = next((i for i, (n, _) in enumerate(params) if n.startswith(qual + ".")), None)
    if start is None:
        mods = [n for n, m in net.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
        raise UsageError(did_you_mean(str(train_from), list(friendly) + mods, what="--train-from layer",
                                      hint=f"{', '.join(friendly) or 'module names such as ' + ', '.join(mods[:4])}"
                                           " are layers of this network"))
    frozen = [n for n, _ in params[:start]]
    frozen_ids = set()
    for n, p in params[:start]:
        p.requires_grad_(False)
        frozen_ids.add(id(p))
    for m in net.modules():  # batch norms whose parameters are all frozen keep their statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = list(m.parameters(recurse=False))
            if own and all(id(p) in frozen_ids for p in own):
                model.frozen_norms.append(m)
    return frozen


# --- a trained unit, rebuilt from its run's model (training, predict, export, the model check) ---
def unit_network(settings, unit, state):
    """Return the network of ``unit`` of a fine-tuning run's model ``settings`` (the manifest's
    ``settings``) with ``state`` loaded.

    ``featbench predict`` and ``featbench export`` rebuild units through here
    (:mod:`classify.loaders`), as :func:`classify.finetune.load_unit` does.
    """
    cfg, entry = settings["config"], settings["units"][unit]
    outputs = 2 if cfg["head"] == "per-au" else len(entry["aus"])
    net, _ = create_finetune_net(get_spec(cfg["model"]), "random:0", outputs=outputs,
                                 reinit=cfg["reinit"], input_size=settings["network"]["input_size"])
    return net.load_exported(state)


def logit_difference(logits):
    """A 2-way (absent, present) head's score: ``logit(present) - logit(absent)``, (n, 1)."""
    return logits[:, 1:2] - logits[:, 0:1]


def scores_of(settings):
    """How a fine-tuning run's network outputs become its scores (``settings``: the manifest's):
    per-au heads give :func:`logit_difference`, a multilabel head its logits (None)."""
    return logit_difference if settings["config"]["head"] == "per-au" else None
