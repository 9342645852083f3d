"""Method B's network (:mod:`classify.transfer`): a registry backbone + a fresh head, on faces.

:func:`build_net` makes it for training (stage 1's one linear layer over expression classes,
stage 2's MLP over AUs) from a :class:`StartWeights`; :func:`network_of` rebuilds a trained
stage-2 network from its run's model settings (``featbench predict``, ``featbench export``, the
model check: :mod:`classify.loaders`), so applying a run needs this module, not the training
one; :func:`full_state_dict` names a trained backbone's weights as the registry's whole network
does (``featbench extract --weights backbone.safetensors``).
"""

from dataclasses import replace

from torch import nn  # imported by transfer's command and by a transfer run's loader only

from featbench.core.identity import WeightsId

from extract.encoders import create_preprocess
from extract.registry import get_spec
from extract.weights import load_network


class StartWeights:
    """A backbone's starting point: its registry spec, the weights to load and their identity."""

    def __init__(self, spec, weights, identity=None):
        self.spec, self.weights = spec, weights
        self._identity = identity

    def identity(self):
        """The starting weights' identity as far as known before loading them."""
        return self._identity or str(self.weights)

    def load(self):
        """Return ``(module, preprocess_mean, identity)``: the trainable truncated backbone."""
        net = load_network(self.spec, self.weights)
        for p in net.module.parameters():
            p.requires_grad_(True)
        return net.module, net.mean, self._identity or net.weights_id


def build_net(spec, start, head_sizes, *, input_size=None, dropout=0.0, seed=0):
    """Return ``(TransferNet, weights identity)``: preprocess + backbone + a fresh head.

    ``head_sizes`` are the head's layer sizes after the backbone's code: ``(classes,)`` is
    stage 1's one linear layer, ``(512, 256, aus)`` stage 2's two-hidden-layer MLP.
    """
    import torch

    backbone, mean, identity = start.load()
    spec_in = replace(spec, input_size=int(input_size)) if input_size else spec
    layers, width = [], spec.dims
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 7919)  # the head's init: seeded, the same for every start
        for i, size in enumerate(head_sizes):
            if i:
                layers += [nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
            layers.append(nn.Linear(width, int(size)))
            width = int(size)
    net = TransferNet(create_preprocess(spec_in, mean=mean), backbone, nn.Sequential(*layers))
    return net, str(WeightsId.parse(identity))  # the one string form (file sha256:...)


class TransferNet(nn.Module):
    """uint8 NHWC faces -> logits: preprocess, backbone (to its code), head."""

    def __init__(self, preprocess, backbone, head):
        super().__init__()
        self.preprocess, self.backbone, self.head = preprocess, backbone, head

    def forward(self, x):
        return self.head(self.backbone(self.preprocess(x)))


def full_state_dict(spec, backbone):
    """Return ``backbone``'s weights keyed as the registry's whole network names them.

    The truncated backbone of an fc6 network is a new ``Sequential`` whose keys (``0.0.weight``)
    are not the network's (``features.0.weight``); a file ``featbench extract --weights PATH``
    reads needs the latter. The mapping is found on a probe network, by tensor identity.
    """
    import torch

    with torch.device("meta"):
        probe = spec.constructor()
    full = {id(t): k for k, t in list(probe.named_parameters()) + list(probe.named_buffers())}
    code = spec.truncate(probe)
    names = {k: full.get(id(t)) for k, t in list(code.named_parameters()) + list(code.named_buffers())}
    out = {}
    for key, value in backbone.state_dict().items():
        name = names.get(key)
        if name is None:
            raise RuntimeError(f"{spec.name}: backbone key {key!r} has no name in the full network")
        out[name] = value.detach().to("cpu", copy=True)
    return out


def unit_network(settings, unit, state):
    """A transfer run's ``unit`` (its one network, ``model``) from the model's ``settings``
    (with ``aus``), ``state`` loaded: the kind's builder (:mod:`classify.netkinds`)."""
    return network_of(settings, state)


def network_of(settings, state):
    """Stage 2's network of a run's model ``settings`` (with ``aus``) with ``state`` loaded."""
    spec = get_spec(settings["backbone"])
    net, _ = build_net(spec, StartWeights(spec, "random:0"),
                       tuple(settings["hidden"]) + (len(settings["aus"]),),
                       input_size=settings["input_size"], dropout=settings.get("dropout", 0.0))
    net.load_state_dict(state)
    return net
