"""Weights: where a network's parameters come from, and the identity stored with its codes.

``--weights`` takes

``imagenet`` (or ``pretrained``)
    The network's published weights, read from the local cache only — never downloaded:
    torchvision's ``<torch hub dir>/checkpoints/<file>`` (the file name of the Weights enum's
    URL), timm's Hugging Face cache, the MatConvNet ``imagenet-vgg-f/m/s.mat`` or VGG-Face's
    ``vgg_face_dag.pth`` put in that same checkpoints folder, dlib's model shipped by
    ``face_recognition_models``. A missing file is a :class:`WeightsError` naming the file and
    the folder to put it in. Identity: the spec's ``weights_id`` (``imagenet``, ``vggface``,
    ``dlib``).
``random[:SEED]``
    A seeded random initialisation (default seed 0): the control that shows what pretraining
    adds. Identity ``random:<seed>``.
``PATH``
    A state dict (``.pt``/``.pth``, ``.safetensors``, or a MatConvNet ``.mat``), loaded
    strictly; the VGG-Face port's key names and MatConvNet files are converted. Identity
    ``sha256:<hex digest of the file>``.
``none``
    For ``hog``, which has no weights.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from featbench.errors import WeightsError
from featbench.faces import dlib_models_dir

#: indices of VGG-16's conv layers inside torchvision's ``features``
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_FACE_DAG_CONVS = tuple(f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                            for i in range(1, n + 1))


@dataclass(frozen=True)
class WeightsChoice:
    """A parsed ``--weights`` value.

    Attributes
    ----------
    mode : {"pretrained", "random", "file", "none"}
    seed : int
        For ``random``.
    path : Path or None
        For ``file``.
    """

    mode: str
    seed: int = 0
    path: Optional[Path] = None


def parse_weights(text, spec):
    """Parse ``--weights`` for ``spec``; None means the spec's default.

    Raises
    ------
    WeightsError
        A bad seed, a file that does not exist, or a choice the network cannot take.
    """
    from .registry import PRETRAINED

    text = spec.default_weights if text in (None, "") else str(text)
    if spec.kind == "hog":
        if text not in ("none",) + PRETRAINED:
            raise WeightsError(f"hog has no weights; drop --weights (got {text!r})")
        return WeightsChoice("none")
    if text in PRETRAINED or (spec.pretrained == "dlib" and text == "dlib"):
        return WeightsChoice("pretrained")
    if text == "random" or text.startswith("random:"):
        if spec.kind != "torch":
            raise WeightsError(f"{spec.name} cannot be randomly initialised; use --weights "
                               f"{spec.default_weights}")
        seed = text.partition(":")[2] or "0"
        try:
            return WeightsChoice("random", seed=int(seed))
        except ValueError:
            raise WeightsError(f"--weights {text}: the seed must be an integer (random:0)") from None
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file (--weights takes imagenet, "
                           "random[:SEED] or the path of a state dict)")
    return WeightsChoice("file", path=path)


def file_sha256(path):
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(spec, choice):
    """Return the identity string stored with the codes: imagenet | random:<seed> | sha256:<hex>."""
    if choice.mode == "pretrained":
        return spec.weights_id
    if choice.mode == "random":
        return f"random:{choice.seed}"
    if choice.mode == "file":
        return f"sha256:{file_sha256(choice.path)}"
    return "none"


# --- where pretrained files live ------------------------------------------------------------
def checkpoints_dir():
    """``<torch hub dir>/checkpoints`` ($TORCH_HOME/hub/checkpoints): torchvision's weight cache."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_path(spec):
    """Return ``(path, exists)`` of the file ``--weights imagenet`` reads for ``spec``.

    ``path`` is None when the network has no pretrained weights at all.
    """
    if not spec.pretrained or not spec.weights_file:
        return None, False
    if spec.pretrained == "dlib":
        folder = dlib_models_dir()
        path = Path(folder or "face_recognition_models/models") / spec.weights_file
        return path, path.is_file()
    if spec.pretrained.startswith("timm:"):
        return _timm_cached_file(spec.pretrained[5:])
    path = checkpoints_dir() / spec.weights_file
    return path, path.is_file()


def _timm_cached_file(repo_id):
    from huggingface_hub import constants, try_to_load_from_cache

    for fname in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, fname)
        if isinstance(found, str):
            return Path(found), True
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return folder / "snapshots" / "<revision>" / "model.safetensors", False


def weights_status(spec):
    """Return whether ``--weights imagenet`` works here now, for ``featbench models``.

    One of ``cached``, ``not cached (<file>)``, ``built-in`` (shipped with a package),
    ``n/a`` (no weights needed, or none published).
    """
    if spec.kind == "hog" or not spec.pretrained:
        return "n/a"
    path, exists = pretrained_path(spec)
    if spec.pretrained == "dlib":
        return "built-in" if exists else f"not installed ({spec.weights_file})"
    return "cached" if exists else f"not cached ({spec.weights_file})"


def _source_url(spec):
    """Where a pretrained file can be downloaded from, for the not-cached message."""
    if spec.pretrained.startswith("torchvision:"):
        import torchvision.models as tvm

        enum_name, _, member = spec.pretrained[len("torchvision:"):].partition(".")
        return getattr(getattr(tvm, enum_name), member).url
    if spec.pretrained.startswith("timm:"):
        return f"https://huggingface.co/{spec.pretrained[5:]}"
    return {"matconvnet": "https://www.vlfeat.org/matconvnet/pretrained/",
            "vgg_face_dag": "https://www.robots.ox.ac.uk/~albanie/pytorch-models.html"}.get(
                spec.pretrained, "")


def missing_weights_error(spec, path):
    if spec.pretrained == "dlib":
        return WeightsError(f"{path.name} not found: install face_recognition_models "
                            "(pip install face_recognition_models) or pass --weights PATH")
    url = _source_url(spec)
    return WeightsError(f"{path.name} not in {path.parent}: download it"
                        f"{f' ({url})' if url else ''} on a connected machine and put it there, "
                        "or use --weights random:0")


# --- state-dict files and converters ----------------------------------------------------------
def read_state_dict(path):
    """Read a state dict from ``.pt``/``.pth``/``.bin``, ``.safetensors`` or MatConvNet ``.mat``.

    Checkpoints that wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped and a ``module.`` prefix (DataParallel) is dropped.

    Returns
    -------
    dict of str -> torch.Tensor, or the raw ``scipy.io.loadmat`` dict for a ``.mat`` file
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".mat":
            import scipy.io

            return scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=False)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        import pickle

        if isinstance(exc, pickle.UnpicklingError):  # torch's text on it runs to five lines
            raise WeightsError(f"{path}: a pickled whole model, not a state dict (featbench "
                               "does not run pickled code: save model.state_dict() with "
                               "torch.save and pass that file)") from None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {first})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def convert_vgg_face_dag(sd):
    """Map the VGG-Face PyTorch port's names (``conv1_1.weight`` ... ``fc8``) to torchvision VGG-16's.

    The port (``vgg_face_dag.pth``) names layers after MatConvNet's DAG; its fc6 is a linear
    layer over the flattened (512, 7, 7) pool5, in the same C, H, W order as torchvision's,
    so the weights copy over unchanged (a conv-shaped fc6 is flattened).
    """
    out = {}
    names = {c: f"features.{i}" for c, i in zip(_VGG_FACE_DAG_CONVS, _VGG16_CONVS)}
    names.update(fc6="classifier.0", fc7="classifier.3", fc8="classifier.6")
    for key, value in sd.items():
        layer, _, param = key.rpartition(".")
        if layer not in names:
            out[key] = value  # left for the strict load to report
            continue
        if layer.startswith("fc") and param == "weight" and value.dim() == 4:
            value = value.reshape(value.shape[0], -1)
        out[f"{names[layer]}.{param}"] = value
    return out


def _item(x):
    """Unwrap scipy.io's 1x1 object arrays down to the value (struct, string or array)."""
    import numpy as np

    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.reshape(-1)[0]
    if isinstance(x, np.ndarray) and x.dtype.kind == "U":
        return "".join(x.reshape(-1).tolist())
    return x


def _mat_field(struct, name, default=None):
    return _item(getattr(struct, name)) if hasattr(struct, name) else default


def convert_matconvnet(mat, model):
    """Convert a MatConvNet SimpleNN file (``imagenet-vgg-f/m/s.mat``) for ``model``.

    Conv filters are stored H x W x Cin x Cout and become torch's Cout x Cin x H x W; fc6 is a
    6x6 convolution over pool5 in MatConvNet and becomes a linear layer over the flattened
    (C, H, W) tensor, so its filters are permuted the same way and then flattened. fc7 / fc8 are
    1x1 convolutions. LRN parameters ``[N kappa alpha beta]`` are copied onto ``model``'s
    ``LocalResponseNorm`` modules (torch's alpha is divided by N, MatConvNet's is not).

    Parameters
    ----------
    mat : dict
        ``scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False)``.
    model : torch.nn.Module
        A :func:`extract.nets.build_convnet` network (modified in place: LRN parameters).

    Returns
    -------
    state_dict : dict of str -> torch.Tensor
    mean : numpy.ndarray or None
        ``averageImage``: (3,) mean RGB or (H, W, 3) mean image, on [0, 255] pixels.
    """
    import numpy as np
    import torch
    from torch import nn

    if "layers" not in mat:
        raise WeightsError("not a MatConvNet SimpleNN file: no 'layers' variable")
    layers = [_item(x) for x in np.asarray(mat["layers"], dtype=object).reshape(-1)]
    convs, norms = [], []
    for layer in layers:
        kind = _mat_field(layer, "type", "")
        if kind == "conv":
            weights = getattr(layer, "weights", None)
            if weights is not None:
                w, b = np.asarray(weights, dtype=object).reshape(-1)[:2]
            else:  # files older than MatConvNet beta17: filters / biases fields
                w, b = layer.filters, layer.biases
            convs.append((_mat_field(layer, "name", f"conv{len(convs) + 1}"),
                          np.asarray(w, np.float32), np.asarray(b, np.float32).reshape(-1)))
        elif kind in ("lrn", "normalize"):
            norms.append(np.asarray(_mat_field(layer, "param"), np.float64).reshape(-1))
    targets = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(convs) != len(targets):
        raise WeightsError(f"MatConvNet file has {len(convs)} conv/fc layers, the network "
                           f"{len(targets)}: it is not this CNN-F/M/S variant")
    names = {id(m): n for n, m in model.named_modules()}
    sd = {}
    for (lname, w, b), target in zip(convs, targets):
        if w.ndim < 4:  # MATLAB drops trailing singleton dimensions
            w = w.reshape(w.shape + (1,) * (4 - w.ndim))
        weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        if isinstance(target, nn.Linear):
            weight = weight.reshape(weight.shape[0], -1)
        prefix = names[id(target)]
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = weight, torch.from_numpy(b.copy())
    lrns = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    for param, lrn in zip(norms, lrns):
        n, kappa, alpha, beta = param[:4]
        lrn.size, lrn.k, lrn.alpha, lrn.beta = int(n), float(kappa), float(alpha * n), float(beta)
    mean = None
    meta = mat.get("meta")
    norm = _mat_field(_item(meta), "normalization") if meta is not None else _item(mat.get("normalization"))
    if norm is not None and hasattr(norm, "averageImage"):
        mean = np.asarray(_item(norm.averageImage), np.float32)
        mean = mean.reshape(-1) if mean.size == 3 else mean
    return sd, mean


# --- building the network with its weights --------------------------------------------------
@dataclass
class LoadedNetwork:
    """A network truncated at its code layer, with its weights' identity.

    Attributes
    ----------
    module : torch.nn.Module
        Normalised (N, 3, S, S) float images -> (N, dims) codes, in eval mode.
    weights_id : str
        ``imagenet`` | ``random:<seed>`` | ``sha256:<hex>`` ...
    mean : numpy.ndarray or None
        A mean (3,) or mean image (H, W, 3) that replaces the spec's mean (MatConvNet files).
    """

    module: object
    weights_id: str
    mean: object = None


def load_network(spec, weights=None):
    """Build ``spec``'s network with ``weights`` and truncate it at the code layer.

    Parameters
    ----------
    spec : BackboneSpec
        A ``torch`` kind spec.
    weights : str or WeightsChoice, optional
        ``--weights`` as given (None: the spec's default).

    Raises
    ------
    WeightsError
        Pretrained file not cached (names file and folder), or a file that does not fit (names
        the first offending keys).
    """
    import torch

    choice = weights if isinstance(weights, WeightsChoice) else parse_weights(weights, spec)
    mean = None
    if choice.mode == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(choice.seed)
            model = spec.constructor()
    elif choice.mode == "pretrained":
        model, mean = _load_pretrained(spec)
    elif choice.mode == "file":
        model = spec.constructor()
        mean = _load_file(spec, model, choice.path)
    else:
        raise WeightsError(f"{spec.name} takes no weights")
    module = spec.truncate(model).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedNetwork(module, weights_identity(spec, choice), mean)


def _load_pretrained(spec):
    if not spec.pretrained:
        raise WeightsError(f"{spec.name} has no published pretrained weights featbench can load: "
                           "use --weights PATH (a state dict) or --weights random:0")
    path, exists = pretrained_path(spec)
    if not exists:
        raise missing_weights_error(spec, path)
    if spec.pretrained.startswith("timm:"):
        import timm

        arch = spec.name.partition(":")[2]
        model = timm.create_model(arch, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)})
        return model, None
    model = spec.constructor()
    return model, _load_file(spec, model, path)


def _load_file(spec, model, path):
    """Load the weights file ``path`` into ``model`` strictly; return a mean override or None."""
    mean = None
    if Path(path).suffix == ".dat":  # dlib's serialisation (dlib_face): converted once, cached
        from .dlib_net import converted_state_dict

        sd = converted_state_dict(path)
        load_strict(model, sd, source=path, spec=spec)
        return sd["mean"].numpy()
    sd = read_state_dict(path)
    if Path(path).suffix == ".mat":
        try:
            sd, mean = convert_matconvnet(sd, model)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    elif "conv1_1.weight" in sd:
        sd = convert_vgg_face_dag(sd)
    load_strict(model, sd, source=path, spec=spec)
    return mean


def load_strict(model, sd, *, source, spec):
    """``model.load_state_dict(sd, strict=True)``, with mismatches as one clear WeightsError.

    Two allowances, both for files of the same network: optional heads (GoogLeNet's auxiliary
    classifiers) missing from the file are dropped from the network first; and layers after
    the code layer (a fine-tuned net's 2-way fc8) may differ, since they are never run.
    """
    for head in spec.optional_heads:
        if getattr(model, head, None) is not None and not any(k.startswith(head + ".") for k in sd):
            setattr(model, head, None)
            if hasattr(model, "aux_logits"):
                model.aux_logits = False
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        used = _code_keys(spec, model)
        if any(k in used for k in missing + shapes):
            raise WeightsError(_mismatch(source, spec, sd, own, missing, unexpected, shapes))
        sd = {k: v for k, v in sd.items() if k in own and k not in shapes}
        sd.update({k: own[k] for k in missing + shapes})
    model.load_state_dict(sd, strict=True)


def _code_keys(spec, model):
    """State-dict keys of ``model`` that the truncated code network uses."""
    import copy

    probe = copy.deepcopy(model)
    code = spec.truncate(probe)
    ids = {id(t) for t in list(code.parameters()) + list(code.buffers())}
    full = dict(probe.named_parameters())
    full.update(dict(probe.named_buffers()))
    return {k for k, t in full.items() if id(t) in ids}


def _mismatch(source, spec, sd, own, missing, unexpected, shapes):
    def first(keys):
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        return ", ".join(keys[:3]) + more

    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"shape mismatch at {first(shapes)}: file {tuple(sd[k].shape)}, "
                     f"network {tuple(own[k].shape)}")
    if missing:
        parts.append(f"missing keys {first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {first(unexpected)}")
    return f"{source} does not fit {spec.name}: " + "; ".join(parts)
