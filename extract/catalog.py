"""The weights catalogue: for each network's published weights, the file, where it is
published, the hash that vouches for it, and the licence it comes under.

One :class:`WeightsFile` per (network, tag). The entries are derived from the sources
themselves where the source carries the facts (torchvision's ``Weights`` enums: URL, file
name whose ``-<hex>.`` part is the sha256 prefix torchvision checks, file size; timm's
pretrained cfg: Hugging Face repo, licence), and written here for the files no library
describes (MatConvNet's CNN-F/M/S ``.mat`` files, the VGG-Face PyTorch port).

Hashes
------
``sha256_prefix``
    torchvision's convention: the hex after the last ``-`` of the file name is the start of the
    file's sha256 (``mobilenet_v2-b0353104.pth``). Every torchvision file is checked this way,
    as ``torch.hub.download_url_to_file(..., hash_prefix=...)`` does.
``sha256``
    The full digest, for files whose names carry none (``.mat``, ``vgg_face_dag.pth``). Such a
    file is *pinned* once its digest is written in :data:`PINNED_SHA256`; until then it is
    downloaded trust-on-first-use and its digest is printed (and stored with every code made
    from it), so a maintainer with network access can pin it with ``featbench weights fetch``.

Tags
----
``--weights imagenet`` (or ``pretrained``) means the spec's own published weights (the ones the
paper's protocol used, e.g. ResNet-50's ``IMAGENET1K_V1``). For networks published through
torchvision, the enum members work too: ``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``
(torchvision's recommended member). timm tags are part of the model name
(``timm:resnet50.a1_in1k``).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from featbench.core.errors import UsageError, WeightsError, did_you_mean
from featbench.core.identity import WeightsId

from extract.registry import PRETRAINED, list_specs

#: torchvision's rule (torch.hub.HASH_REGEX): the sha256 prefix is the hex between the last "-" and "."
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")

#: full sha256 of files whose names carry no hash. Empty until someone with network access runs
#: ``featbench weights fetch NAME`` and copies the printed digest here: no digest is ever
#: written that was not computed from the published file.
PINNED_SHA256 = {
    "imagenet-vgg-f.mat": "",
    "imagenet-vgg-m.mat": "",
    "imagenet-vgg-s.mat": "",
    "vgg_face_dag.pth": "",
}

_LICENCE_TV = ("torchvision (BSD-3-Clause); weights trained on ImageNet-1k, whose terms allow "
               "non-commercial research use")
_LICENCE_MCN = ("MatConvNet pretrained model (Chatfield et al. 2014, BSD-style VLFeat licence); "
                "trained on ImageNet-1k, non-commercial research use")
_LICENCE_VGGFACE = ("VGG-Face (Parkhi et al. 2015), PyTorch port by S. Albanie: non-commercial "
                    "research use only (CC BY-NC 4.0)")
_LICENCE_DLIB = "dlib face recognition model, shipped by face_recognition_models (CC0, public domain)"

_MCN_URL = "https://www.vlfeat.org/matconvnet/models/{file}"
_VGGFACE_URL = "https://www.robots.ox.ac.uk/~albanie/models/pytorch-mcn/vgg_face_dag.pth"


@dataclass(frozen=True)
class WeightsFile:
    """One published weights file of one network.

    Attributes
    ----------
    model : str
        Registry name (``alexnet``, ``tv:mobilenet_v2``, ``cnn_f``, ``timm:resnet50.a1_in1k``).
    tag : str
        ``IMAGENET1K_V1`` (torchvision enum member), timm's pretrained tag, or ``""``.
    filename : str
        The file's name in the cache.
    urls : tuple of str
        Where it is published, tried in order (a mirror replaces each URL's host).
    sha256 : str
        Full hex digest when pinned, else ``""``.
    sha256_prefix : str
        torchvision's file-name prefix of the digest, else ``""``.
    licence : str
        One line: code licence and the terms of the weights.
    size_mb : float or None
        Published size (torchvision's ``_file_size``), for ``featbench weights list``.
    source : {"torchvision", "matconvnet", "vgg_face_dag", "timm", "dlib"}
    identity_name : str
        The pretrained name stored in :class:`WeightsId` (``imagenet:IMAGENET1K_V1``, ``vggface``).
    """

    model: str
    tag: str
    filename: str
    urls: tuple
    sha256: str = ""
    sha256_prefix: str = ""
    licence: str = ""
    size_mb: object = None
    source: str = "torchvision"
    identity_name: str = "imagenet"

    @property
    def pinned(self):
        """Whether a published or pinned hash vouches for the file."""
        return bool(self.sha256 or self.sha256_prefix)

    @property
    def label(self):
        """``model`` or ``model TAG``, as ``featbench weights`` prints it."""
        return f"{self.model} {self.tag}" if self.tag else self.model

    def check(self, digest):
        """Return why a file of sha256 ``digest`` is not this file, or None when it is.

        An unpinned file (no hash known) passes: trust on first use, said by the caller.
        """
        if self.sha256 and digest != self.sha256:
            return f"sha256 {digest[:16]}… differs from the registry's {self.sha256[:16]}…"
        if self.sha256_prefix and not digest.startswith(self.sha256_prefix):
            return (f"sha256 {digest[:16]}… does not start with {self.sha256_prefix}, the hash "
                    "its file name publishes")
        return None

    def identity(self, digest):
        """Return the :class:`WeightsId` of codes made with this file of sha256 ``digest``."""
        return WeightsId.pretrained(self.identity_name, sha256=digest, source=self.urls[0] if self.urls else "")


#: entries published with :func:`register_file`, by (model, tag); tag None = the network's own
_PUBLISHED = {}


def register_file(entry, *, default=True):
    """Publish a weights file the catalogue cannot derive (a lab's own network and its file).

    The network's spec names ``pretrained="catalog"``; ``entry`` gives the URL(s) and the full
    sha256. ``default``: ``--weights imagenet`` of that network reads this file.

    Raises
    ------
    UsageError
        That (model, tag) already has a file (entries are never silently replaced).
    """
    keys = [(entry.model, entry.tag)] + ([(entry.model, None)] if default else [])
    if any(k in _PUBLISHED for k in keys):
        raise UsageError(f"weights {entry.label} are already registered")
    for key in keys:
        _PUBLISHED[key] = entry
    return entry


# --- entries from their sources --------------------------------------------------------------
def _tv_entry(model, weights):
    """The entry of one torchvision ``Weights`` enum member."""
    filename = weights.url.rsplit("/", 1)[-1]
    found = _HASH_IN_NAME.search(filename)
    return WeightsFile(model=model, tag=weights.name, filename=filename, urls=(weights.url,),
                       sha256_prefix=found.group(1) if found else "", licence=_LICENCE_TV,
                       size_mb=weights.meta.get("_file_size"), source="torchvision",
                       identity_name=f"imagenet:{weights.name}")


def _tv_enum(spec):
    """Return ``(enum class, spec's member)`` of a ``torchvision:<Enum>.<MEMBER>`` spec."""
    import torchvision.models as tvm

    enum_name, _, member = spec.pretrained[len("torchvision:"):].partition(".")
    enum = getattr(tvm, enum_name)
    return enum, enum[member]


def _pinned_entry(spec, urls, licence, source, identity_name):
    return WeightsFile(model=spec.name, tag="", filename=spec.weights_file, urls=tuple(urls),
                       sha256=PINNED_SHA256.get(spec.weights_file, ""), licence=licence,
                       source=source, identity_name=identity_name)


def _timm_entry(spec):
    import timm
    import torch

    with torch.device("meta"):
        cfg = timm.create_model(spec.name.partition(":")[2], pretrained=False).pretrained_cfg or {}
    hub = spec.pretrained[len("timm:"):]
    tag = cfg.get("tag") or hub.partition(".")[2]
    return WeightsFile(model=spec.name, tag=tag, filename=spec.weights_file,
                       urls=(f"https://huggingface.co/{hub}/resolve/main/{spec.weights_file}",),
                       licence=f"timm ({cfg.get('license') or 'licence not stated'}); see "
                               f"https://huggingface.co/{hub}",
                       source="timm", identity_name=f"imagenet:{tag}" if tag else "imagenet")


def tags_of(spec):
    """Return the ``--weights`` tags ``spec`` accepts besides imagenet / pretrained."""
    if spec.pretrained and spec.pretrained.startswith("torchvision:"):
        enum, _ = _tv_enum(spec)
        return [m.name for m in enum] + ["DEFAULT"]
    return _published_tags(spec)


def is_tag(spec, text):
    """Whether ``text`` names published weights of ``spec``: imagenet, pretrained, a tag, or the
    tag its identity carries (``a1_in1k`` of ``timm:resnet50.a1_in1k``)."""
    if text in PRETRAINED or text in tags_of(spec):
        return True
    if not spec.pretrained or spec.pretrained == "dlib":
        return False
    try:
        return text == entry_for(spec).identity_name.partition(":")[2]
    except WeightsError:
        return False


def entry_for(spec, tag=None):
    """Return the :class:`WeightsFile` that ``--weights TAG`` of ``spec`` reads.

    Parameters
    ----------
    spec : BackboneSpec
    tag : str, optional
        None / ``imagenet`` / ``pretrained``: the spec's own; ``IMAGENET1K_V2``, ``DEFAULT``...
        for torchvision networks.

    Raises
    ------
    WeightsError
        The network has no published weights, or no such tag (the valid tags are named).
    """
    tag = None if tag in (None, "") + PRETRAINED else tag
    if tag is not None and spec.pretrained and not spec.pretrained.startswith("torchvision:") \
            and (spec.name, tag) not in _PUBLISHED and is_tag(spec, tag):
        tag = None  # the tag in the network's own identity: its one published file
    if (spec.name, tag) in _PUBLISHED:
        return _PUBLISHED[spec.name, tag]
    if not spec.pretrained:
        raise WeightsError(f"{spec.name} has no published pretrained weights featbench can load: "
                           "use --weights PATH (a state dict) or --weights random:0")
    if spec.pretrained.startswith("torchvision:"):
        enum, own = _tv_enum(spec)
        if tag is None:
            member = own
        elif tag == "DEFAULT":
            member = enum.DEFAULT
        elif tag in enum.__members__:
            member = enum[tag]
        else:
            raise WeightsError(did_you_mean(tag, tags_of(spec) + list(PRETRAINED),
                                            what=f"weights tag of {spec.name}"))
        return _tv_entry(spec.name, member)
    if tag is not None:
        raise WeightsError(f"{spec.name} takes --weights imagenet (its one published file), "
                           f"not {tag!r}" + ("; timm tags are part of the model name "
                                              "(timm:resnet50.a1_in1k)" if spec.name.startswith("timm:") else ""))
    if spec.pretrained == "matconvnet":
        return _pinned_entry(spec, [_MCN_URL.format(file=spec.weights_file)], _LICENCE_MCN,
                             "matconvnet", "imagenet")
    if spec.pretrained == "vgg_face_dag":
        return _pinned_entry(spec, [_VGGFACE_URL], _LICENCE_VGGFACE, "vgg_face_dag", "vggface")
    if spec.pretrained == "dlib":
        return WeightsFile(model=spec.name, tag="", filename=spec.weights_file, urls=(),
                           licence=_LICENCE_DLIB, source="dlib", identity_name="dlib")
    if spec.pretrained.startswith("timm:"):
        return _timm_entry(spec)
    raise WeightsError(f"{spec.name}: unknown weights source {spec.pretrained!r}")


def registered_entries():
    """Return the entry of every registered network with published weights (its own tag)."""
    return [entry_for(spec) for spec in list_specs() if spec.pretrained]


def _published_tags(spec):
    return [tag for model, tag in _PUBLISHED if model == spec.name and tag]


def recognised_files():
    """Return ``{file name: WeightsFile}`` of every file ``featbench weights import`` knows.

    The registered networks' files, and every weights file of every torchvision classification
    model (as ``tv:<name>``; a registered network keeps its registered name).
    """
    import torchvision.models as tvm

    known = {}
    for name in tvm.list_models(module=tvm):
        for member in tvm.get_model_weights(name):
            entry = _tv_entry(f"tv:{name}", member)
            known.setdefault(entry.filename, entry)
    for entry in registered_entries() + list(_PUBLISHED.values()):
        if entry.source != "timm":
            known[entry.filename] = entry
    return known


def recognise(path):
    """Return the :class:`WeightsFile` a file's name matches, or None."""
    return recognised_files().get(Path(path).name)
