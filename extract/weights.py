"""Weights: where a network's parameters come from, and the identity stored with its codes.

``--weights`` takes

``imagenet`` (or ``pretrained``), and torchvision's enum names ``IMAGENET1K_V1``, ``DEFAULT`` ...
    The network's published weights (:mod:`extract.catalog`), read from the cache torchvision
    and timm use — torchvision's ``<torch hub dir>/checkpoints/<file>`` (also where the
    MatConvNet ``imagenet-vgg-f/m/s.mat`` and VGG-Face's ``vgg_face_dag.pth`` go), timm's
    Hugging Face cache — and downloaded there on first use, verified (:class:`PublishedWeights`,
    :mod:`extract.download`; never with ``--offline``). dlib's model is shipped by
    ``face_recognition_models``. Identity: ``imagenet:IMAGENET1K_V1 sha256:<hex>``,
    ``vggface sha256:<hex>``, ``dlib``.
``random[:SEED]``
    A seeded random initialisation (default seed 0): the control that shows what pretraining
    adds. Identity ``random:<seed>``.
``PATH``
    A state dict (``.pt``/``.pth``, ``.safetensors``, or a MatConvNet ``.mat``), loaded
    strictly; the VGG-Face port's key names and MatConvNet files are converted. Identity
    ``file sha256:<hex digest of the file>``.
``none``
    For ``hog``, which has no weights.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from featbench.core.errors import WeightsError, did_you_mean
from featbench.core.faces import dlib_models_dir

from extract.download import (checkpoints_dir, fetch, file_digest, file_sha256, is_offline,
                              mirror_base, mirrored, missing_message, where)
from extract.catalog import entry_for, is_tag, tags_of
from extract.registry import PRETRAINED
from featbench.core.identity import WeightsId
from extract.dlib_net import converted_state_dict

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
    tag : str
        For ``pretrained``: ``imagenet`` or a torchvision enum name (``IMAGENET1K_V2``, ``DEFAULT``).
    seed : int
        For ``random``.
    path : Path or None
        For ``file``.
    """

    mode: str
    tag: str = "imagenet"
    seed: int = 0
    path: Optional[Path] = None


def parse_weights(text, spec):
    """Parse ``--weights`` for ``spec``; None means the spec's default; a WeightsChoice passes.

    Raises
    ------
    WeightsError
        A bad seed, a file that does not exist, or a choice the network cannot take.
    """
    if isinstance(text, WeightsChoice):  # resolved already (predict, from a run's identity)
        return text
    text = spec.default_weights if text in (None, "") else str(text)
    if spec.kind == "hog":
        if text not in ("none",) + PRETRAINED:
            raise WeightsError(f"hog has no weights; drop --weights (got {text!r})")
        return WeightsChoice("none")
    if spec.pretrained == "dlib" and text in PRETRAINED + ("dlib",):
        return WeightsChoice("pretrained")
    if is_tag(spec, text):
        return WeightsChoice("pretrained", tag=text)
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
        if tags_of(spec) and text.isupper() and not path.suffix:  # a mistyped enum name
            raise WeightsError(did_you_mean(text, tags_of(spec) + list(PRETRAINED),
                                            what=f"weights tag of {spec.name}"))
        tags = "".join(f", {t}" for t in tags_of(spec))
        raise WeightsError(f"{path}: no such weights file (--weights takes imagenet{tags}, "
                           "random[:SEED] or the path of a state dict)")
    return WeightsChoice("file", path=path)




def weights_identity(spec, choice):
    """Return the identity string stored with the codes: ``imagenet:IMAGENET1K_V1 sha256:<hex>``,
    ``random:<seed>``, ``file sha256:<hex>``, ``finetuned:<run> sha256:<hex>``, ``dlib``, ``none``."""
    if choice.mode == "pretrained":
        return weights_source(spec, choice.tag).identity()
    if choice.mode == "random":
        return str(WeightsId.random(choice.seed))
    if choice.mode == "file":
        digest = file_sha256(choice.path)
        run = finetuned_run(choice.path)
        if run:
            return str(WeightsId.finetuned(run, sha256=digest))
        return str(WeightsId.file(digest, source=choice.path))
    return "none"


def finetuned_run(path):
    """Return the run that trained the weights file ``path`` when featbench fine-tuned it, else None.

    ``featbench finetune`` writes ``results/<ds>/models/<run>/model.safetensors`` (or ``<AU>.safetensors``) beside
    a ``settings.json`` whose ``clf`` is ``ft``; codes extracted with such a file are stored as
    ``finetuned:<run> sha256:<hex>``.
    """
    info = finetuned_settings(path)
    return str(info.get("run")) if info else None


def finetuned_settings(path):
    """Return the ``settings.json`` of the finetune / transfer run that wrote ``path``, else None."""
    import json

    if path is None:
        return None
    settings = Path(path).parent / "settings.json"
    try:
        info = json.loads(settings.read_text())
    except (OSError, ValueError):
        return None
    # ft: featbench finetune; expr / transfer: featbench transfer's stage-1 / stage-2 backbone
    return info if isinstance(info, dict) and info.get("clf") in ("ft", "expr", "transfer") else None


# --- weights sources: where a network's published weights live, and how they load -----------


class WeightsSource:
    """Where one network's published weights come from (timm's pretrained cfg is the model).

    One subclass per source, chosen from ``spec.pretrained`` in one place
    (:func:`weights_source`); a new source (a download, a fine-tuned checkpoint) is one class:

    ``locate()``        ``(path, exists)`` of the file ``--weights imagenet`` reads
    ``status()``        what ``featbench models`` shows: ``cached``, ``not cached (<file>)`` ...
    ``build()``         ``(model, mean)``: the network with these weights loaded
    ``load(model, p)``  load the file ``p`` into ``model`` strictly (the source's converter
                        attached here); returns the mean it brings, or None
    ``identity()``      the weights identity stored with the codes (``imagenet``, ``vggface``)
    ``preprocessing(mean)``  the normalisation the forward pass applies, as recorded in files
    """

    #: the ``spec.pretrained`` prefix this source serves
    prefix = ""

    def __init__(self, spec, tag=None):
        self.spec = spec
        self.tag = tag

    def locate(self):
        path = checkpoints_dir() / self.spec.weights_file
        return path, path.is_file()

    def status(self):
        return "cached" if self.locate()[1] else f"not cached ({self.spec.weights_file})"

    def url(self):
        """Where the file can be downloaded from (for the not-cached message)."""
        return ""

    def missing_error(self, path):
        url = self.url()
        return WeightsError(f"{path.name} not in {path.parent}: download it"
                            f"{f' ({url})' if url else ''} on a connected machine and put it there, "
                            "or use --weights random:0")

    def identity(self):
        return self.spec.weights_id

    def build(self):
        path, exists = self.locate()
        if not exists:
            raise self.missing_error(path)
        model = self.spec.constructor()
        return model, self.load(model, path)

    def convert(self, sd):
        """Map the file's parameter names onto the network's (none by default)."""
        return sd

    def load(self, model, path):
        """Load this source's file ``path`` into ``model``; return the mean it brings or None."""
        return self.load_state_dict_file(model, path)

    def load_state_dict_file(self, model, path):
        """Load a state-dict file (``.pt``, ``.safetensors``...) strictly, names converted.

        Returns the mean a ``featbench finetune`` file carries (:data:`MEAN_KEY`: the one the
        network was trained with, e.g. a MatConvNet file's mean image), else None.
        """
        sd = dict(read_state_dict(path))
        mean = sd.pop(MEAN_KEY, None)
        if finetuned_settings(path) is not None:
            fit_linear_layers(model, sd)
        load_strict(model, self.convert(sd), source=path, spec=self.spec)
        return None if mean is None else mean.float().numpy()

    def preprocessing(self, mean=None):
        """Return the normalisation ``(pixel * pixel_scale - mean) / std`` the forward applies.

        ``mean``: the one the weights file brought (:func:`effective_mean` of it is used).
        """
        spec = self.spec
        out = {"mean": list(spec.mean), "std": list(spec.std), "pixel_scale": spec.pixel_scale}
        if mean is not None:
            m = effective_mean(spec, mean)
            out["mean"] = [float(v) for v in m.reshape(-1, 3).mean(axis=0)]
            out["mean_source"] = ("the weights file's mean image (per-channel mean shown)"
                                  if m.ndim == 3 else "the weights file's mean RGB")
        return out


class PublishedWeights(WeightsSource):
    """A file published at a URL (:mod:`extract.catalog`): read from torchvision's cache and
    downloaded there on first use, hash-checked (:func:`extract.download.fetch`; never offline).

    Its identity names the tag and the file's sha256: ``imagenet:IMAGENET1K_V1 sha256:<hex>``.
    """

    prefix = "catalog"  # networks whose file is published with extract.catalog.register_file
    _digest = None

    def entry(self):
        return entry_for(self.spec, self.tag)

    def locate(self):
        path = where(self.entry())
        return path, path.is_file()

    def status(self):
        return "cached" if self.locate()[1] else f"not cached ({self.entry().filename})"

    def url(self):
        entry = self.entry()
        return mirrored(entry.urls[0]) if entry.urls else ""

    def build(self):
        path, self._digest, _ = fetch(self.entry())
        model = self.spec.constructor()
        return model, self.load(model, path)

    def identity(self):
        entry = self.entry()
        if self._digest is None:
            path, exists = self.locate()
            if not exists:
                return entry.identity_name
            self._digest = file_digest(path)
        return str(entry.identity(self._digest))


class NoWeights(WeightsSource):
    """HOG, and networks with no published weights featbench can load (ZFNet)."""

    def locate(self):
        return None, False

    def status(self):
        return "n/a"

    def build(self):
        raise WeightsError(f"{self.spec.name} has no published pretrained weights featbench can "
                           "load: use --weights PATH (a state dict) or --weights random:0")


class TorchvisionWeights(PublishedWeights):
    """A torchvision Weights enum (``torchvision:AlexNet_Weights.IMAGENET1K_V1``), hub cache file."""

    prefix = "torchvision"


class TimmWeights(WeightsSource):
    """A timm model's Hugging Face weights (``timm:<hub id>``): the HF cache, filled on first use
    by Hugging Face's own client (``FEATBENCH_WEIGHTS_MIRROR`` as its endpoint; never offline)."""

    prefix = "timm"
    _digest = None

    def locate(self):
        from huggingface_hub import constants, try_to_load_from_cache

        repo_id = self.spec.pretrained[len("timm:"):]
        for fname in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo_id, fname)
            if isinstance(found, str):
                return Path(found), True
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        return folder / "snapshots" / "<revision>" / "model.safetensors", False

    def url(self):
        return f"https://huggingface.co/{self.spec.pretrained[len('timm:'):]}"

    def build(self):
        import timm

        path, exists = self.locate()
        if not exists:
            path = self._download(path)
        self._digest = file_digest(path)
        arch = self.spec.name.partition(":")[2]
        model = timm.create_model(arch, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)})
        return model, None

    def _download(self, path):
        entry = entry_for(self.spec)
        if is_offline():
            raise WeightsError(missing_message(entry, path, "featbench is offline (--offline, "
                                               "FEATBENCH_OFFLINE or HF_HUB_OFFLINE)"))
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.spec.pretrained[len("timm:"):], entry.filename,
                                        endpoint=mirror_base() or None))
        except Exception as exc:  # noqa: BLE001 - HF's errors (HTTP, connection) vary by version
            raise WeightsError(missing_message(entry, path, f"the download failed "
                                               f"({type(exc).__name__})")) from None

    def identity(self):
        entry = entry_for(self.spec)
        return str(entry.identity(self._digest)) if self._digest else entry.identity_name


class MatConvNetWeights(PublishedWeights):
    """MatConvNet's ``imagenet-vgg-f/m/s.mat`` (CNN-F/M/S): converted, mean image included."""

    prefix = "matconvnet"

    def load(self, model, path):
        try:
            sd, mean = convert_matconvnet(read_state_dict(path), model)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from None
        load_strict(model, sd, source=path, spec=self.spec)
        return mean


class VggFaceDagWeights(PublishedWeights):
    """The VGG-Face PyTorch port (``vgg_face_dag.pth``): its layer names mapped to VGG-16's."""

    prefix = "vgg_face_dag"

    def convert(self, sd):
        return convert_vgg_face_dag(sd) if "conv1_1.weight" in sd else sd


class DlibWeights(WeightsSource):
    """dlib's face-recognition ResNet, shipped by ``face_recognition_models`` (``.dat``)."""

    prefix = "dlib"

    def locate(self):
        folder = dlib_models_dir()
        path = Path(folder or "face_recognition_models/models") / self.spec.weights_file
        return path, path.is_file()

    def status(self):
        return "built-in" if self.locate()[1] else f"not installed ({self.spec.weights_file})"

    def missing_error(self, path):
        return WeightsError(f"{path.name} not found: install face_recognition_models "
                            "(pip install face_recognition_models) or pass --weights PATH")

    def load(self, model, path):
        sd = converted_state_dict(path)
        load_strict(model, sd, source=path, spec=self.spec)
        return sd["mean"].numpy()


_SOURCES = {cls.prefix: cls for cls in (TorchvisionWeights, TimmWeights, MatConvNetWeights,
                                         VggFaceDagWeights, DlibWeights, PublishedWeights)}
#: a file given with --weights PATH is read by its format's source, whatever the network
_FILE_FORMATS = {".mat": MatConvNetWeights, ".dat": DlibWeights}


def weights_source(spec, tag=None):
    """Return the :class:`WeightsSource` of ``spec``'s published weights (parsed here only).

    ``tag``: ``--weights`` naming one of several published files (``IMAGENET1K_V2``).
    """
    if spec.kind == "hog" or not spec.pretrained or not spec.weights_file:
        return NoWeights(spec)
    prefix = spec.pretrained.partition(":")[0]
    if prefix not in _SOURCES:
        raise WeightsError(f"{spec.name}: unknown weights source {spec.pretrained!r} "
                           f"(known: {', '.join(_SOURCES)})")
    return _SOURCES[prefix](spec, tag)


def effective_mean(spec, mean):
    """Return the mean the forward subtracts: (3,) RGB, or an (S, S, 3) image at the input size.

    A mean image of another size than the network's input is reduced to its mean RGB.
    """
    import numpy as np

    mean = np.asarray(mean, np.float32)
    if mean.ndim == 3 and mean.shape[:2] != (spec.input_size, spec.input_size):
        mean = mean.reshape(-1, 3).mean(axis=0)
    return mean


def pretrained_path(spec, tag=None):
    """Return ``(path, exists)`` of the file ``--weights imagenet`` (or ``tag``) reads for ``spec``.

    ``path`` is None when the network has no pretrained weights at all.
    """
    return weights_source(spec, tag).locate()


def weights_status(spec):
    """Return whether ``--weights imagenet`` works here now, for ``featbench models``.

    One of ``cached``, ``not cached (<file>)``, ``built-in`` (shipped with a package),
    ``n/a`` (no weights needed, or none published).
    """
    return weights_source(spec).status()


def missing_weights_error(spec, path):
    return weights_source(spec).missing_error(path)


# --- state-dict files and converters ----------------------------------------------------------
def fit_linear_layers(model, sd):
    """Rebuild ``model``'s linear layers whose weights in ``sd`` have another shape.

    Only for the files of featbench's own runs: a network fine-tuned at another input size has
    an fc6 of another input width (CNN-F at 64 px: 256 instead of 9216), and a new output layer.
    """
    from torch import nn

    for name, mod in list(model.named_modules()):
        w = sd.get(f"{name}.weight")
        if isinstance(mod, nn.Linear) and w is not None and tuple(w.shape) != tuple(mod.weight.shape):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=mod.bias is not None))


#: the state-dict key under which a fine-tuned network's file keeps the mean it was trained with
#: (the weights it started from brought it: a MatConvNet ``.mat`` mean image or RGB)
MEAN_KEY = "ft_preprocess.mean"


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
    preprocessing : dict
        The normalisation the forward applies with these weights, as feature files record it
        (:meth:`WeightsSource.preprocessing`).
    """

    module: object
    weights_id: str
    mean: object = None
    preprocessing: dict = None


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
        Pretrained file neither cached nor downloadable (names file, folder and URL), or a file
        that does not fit (names the first offending keys).
    """
    choice = weights if isinstance(weights, WeightsChoice) else parse_weights(weights, spec)
    source = weights_source(spec, choice.tag if choice.mode == "pretrained" else None)
    model, mean = build_network(spec, choice, source=source)
    module = spec.truncate(model).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    identity = source.identity() if choice.mode == "pretrained" else weights_identity(spec, choice)
    return LoadedNetwork(module, identity, mean, preprocessing=source.preprocessing(mean))


def build_network(spec, choice, *, source=None):
    """Return ``(model, mean)``: ``spec``'s whole network (not truncated) with ``choice``'s weights.

    What :func:`load_network` truncates, and what ``featbench finetune`` trains further.
    ``mean`` replaces the spec's mean when not None (MatConvNet files).
    """
    import torch

    mean = None
    if choice.mode == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(choice.seed)
            model = spec.constructor()
    elif choice.mode == "pretrained":  # published weights: downloaded on first use
        model, mean = (source or weights_source(spec, choice.tag)).build()
    elif choice.mode == "file":
        model = spec.constructor()
        mean = _load_file(spec, model, choice.path)
    else:
        raise WeightsError(f"{spec.name} takes no weights")
    return model, mean


def _load_file(spec, model, path):
    """Load the weights file ``path`` into ``model`` strictly; return the mean it brings or None.

    MatConvNet ``.mat`` and dlib ``.dat`` files are read by their format's source; any other
    state dict by the network's own source, so only VGG-Face's file names are converted as
    VGG-Face's (a VGG-16 file with ``conv1_1`` keys is not).
    """
    if Path(path).suffix in _FILE_FORMATS:
        return _FILE_FORMATS[Path(path).suffix](spec).load(model, path)
    return weights_source(spec).load_state_dict_file(model, path)


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
