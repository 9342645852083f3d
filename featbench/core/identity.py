"""Identities that travel through featbench: which run, and which weights.

Both are small frozen types with **one** string form each, built and parsed here only, so no
other module splits a run name on ``__`` or tests ``"random" in weights`` (torchvision's
``Weights`` enum is the model: identity and metadata travel together).

Run names
---------
``RunKey(model, region, clf, tags)`` prints as ``<model>__<region>__<clf>[__<tag>-<tag>...]``::

    alexnet__full__svm              frozen AlexNet codes, whole face, linear SVM
    hog__auto__lda__literature-thr  HOG on each AU's region, LDA, literature folds, tuned thresholds
    cnn_f__full__ft                 fine-tuned CNN-F          (clf ``ft``)
    resnet152__full__lstm           LSTM on ResNet-152 codes  (clf ``lstm``)
    ensemble-fe__full__vote         a majority-vote ensemble  (clf ``vote``)

``model`` is the file-safe spelling (``timm:convnext_tiny`` -> ``timm-convnext_tiny``); the
registry name itself is stored beside the run (settings, predictions attributes).

Weights identities
------------------
``WeightsId`` prints as one of::

    none                                hand-crafted features (HOG)
    random:<seed>                       a seeded random initialisation: the control
    <name>[:<tag>][ sha256:<hex>]       published pretrained weights: imagenet, imagenet:IMAGENET1K_V1,
                                        vggface, dlib, timm:resnet50.a1_in1k ...
    file sha256:<hex>                   a state dict the user supplied (older files: sha256:<hex>)
    finetuned:<run>[ sha256:<hex>]      a checkpoint featbench trained (finetune, transfer)

An ensemble's weights column lists its members' identities, ``model=identity; model=identity``,
built by :func:`format_members` and read back by :func:`parse_members` (pairs, in member order).
"""

from dataclasses import dataclass, field

from featbench.core.errors import UsageError
from featbench.core.workspace import safe_name

_SEP = "__"
KINDS = ("none", "random", "pretrained", "file", "finetuned")


def _safe(name):
    return safe_name(name)


@dataclass(frozen=True)
class RunKey:
    """The identity of one run: ``model``, ``region``, ``clf`` and the tags of its non-default settings."""

    model: str
    region: str
    clf: str
    tags: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "model", _safe(self.model))
        tags = tuple(t for t in (self.tags if not isinstance(self.tags, str) else self.tags.split("-")) if t)
        object.__setattr__(self, "tags", tags)
        for part, value in (("model", self.model), ("region", self.region), ("clf", self.clf)):
            if not value or _SEP in value:
                raise UsageError(f"a run's {part} must be non-empty and free of '{_SEP}', got {value!r}")

    @property
    def tag(self):
        """The tags joined with ``-`` (None when there are none)."""
        return "-".join(self.tags) or None

    def __str__(self):
        name = _SEP.join((self.model, self.region, self.clf))
        return f"{name}{_SEP}{self.tag}" if self.tags else name

    @classmethod
    def parse(cls, text):
        """Return the RunKey of a run name; UsageError when it is not one."""
        parts = str(text).split(_SEP)
        if len(parts) not in (3, 4) or not all(parts):
            raise UsageError(f"{text!r} is not a run name (<model>__<region>__<clf>[__<tags>], "
                             "e.g. alexnet__full__svm; featbench report lists the runs)")
        return cls(*parts[:3], tags=tuple(parts[3].split("-")) if len(parts) == 4 else ())

    def with_tags(self, *tags):
        """Return this key with ``tags`` added (kept in order, no repeats)."""
        return RunKey(self.model, self.region, self.clf, tuple(dict.fromkeys(self.tags + tags)))


@dataclass(frozen=True)
class WeightsId:
    """Where a network's parameters came from.

    Attributes
    ----------
    kind : {"none", "random", "pretrained", "file", "finetuned"}
    name : str
        ``pretrained``: ``imagenet``, ``vggface``, ``dlib``... (``imagenet:IMAGENET1K_V1`` keeps
        the tag after the colon); ``finetuned``: the run that trained it; else empty.
    seed : int or None
        ``random`` only.
    sha256 : str
        The file's hex digest, when there is a file.
    source : str
        Where the file came from (URL or path): metadata, not part of the identity.
    """

    kind: str
    name: str = ""
    seed: object = None
    sha256: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"weights kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    # constructors ---------------------------------------------------------------------
    @classmethod
    def random(cls, seed=0):
        return cls("random", seed=int(seed))

    @classmethod
    def pretrained(cls, name, *, sha256="", source=""):
        return cls("pretrained", name=str(name), sha256=sha256, source=str(source))

    @classmethod
    def file(cls, sha256, *, source=""):
        return cls("file", sha256=sha256, source=str(source))

    @classmethod
    def finetuned(cls, run, *, sha256="", source=""):
        return cls("finetuned", name=str(run), sha256=sha256, source=str(source))

    # the one string form ---------------------------------------------------------------
    def __str__(self):
        digest = f" sha256:{self.sha256}" if self.sha256 else ""
        if self.kind == "none":
            return "none"
        if self.kind == "random":
            return f"random:{self.seed}"
        if self.kind == "file":
            return f"file{digest}"
        if self.kind == "finetuned":
            return f"finetuned:{self.name}{digest}"
        return f"{self.name}{digest}"

    @classmethod
    def parse(cls, text):
        """Return the WeightsId of a stored identity string (every form above, old ones too)."""
        text = str(text or "").strip()
        head, _, rest = text.partition(" ")
        digest = rest[len("sha256:"):] if rest.startswith("sha256:") else ""
        if text in ("", "none"):
            return cls("none")
        if head.startswith("random"):
            seed = head.partition(":")[2] or "0"
            return cls("random", seed=int(seed) if seed.lstrip("-").isdigit() else seed)
        if head.startswith("sha256:"):  # files written before the "file " prefix
            return cls("file", sha256=head[len("sha256:"):])
        if head == "file":
            return cls("file", sha256=digest)
        if head.startswith("finetuned:"):
            return cls("finetuned", name=head[len("finetuned:"):], sha256=digest)
        return cls("pretrained", name=head, sha256=digest)

    # what readers ask ------------------------------------------------------------------
    @property
    def tag(self):
        """The published weights' tag: ``imagenet:IMAGENET1K_V2`` -> ``IMAGENET1K_V2`` ("" when
        the identity names none: ``imagenet``, or weights that are not published ones)."""
        return self.name.partition(":")[2] if self.kind == "pretrained" else ""

    @property
    def base(self):
        """The name without its tag: ``imagenet:IMAGENET1K_V2`` -> ``imagenet``."""
        return self.name.partition(":")[0]

    def untagged(self):
        """This identity without its tag (what an identity stored before tags were recorded,
        ``imagenet``, matches)."""
        return WeightsId(self.kind, self.base, self.seed, self.sha256, self.source)

    @property
    def is_random(self):
        return self.kind == "random"

    @property
    def is_pretrained(self):
        return self.kind in ("pretrained", "finetuned", "file")

    def describe(self):
        """A reader-proof description for reports: random weights are flagged as such."""
        if self.kind == "random":
            return f"random:{self.seed} — **random init, not pretrained**"
        if self.kind == "none":
            return "none (hand-crafted)"
        if self.kind == "file":
            return f"file sha256:{self.sha256[:12]}…" if self.sha256 else "file"
        if self.kind == "finetuned":
            return f"fine-tuned by featbench ({self.name})"
        label = {"vggface": "pretrained on faces", "dlib": "pretrained on faces, shipped"}.get(
            self.base, "pretrained")
        return f"{self.name} ({label})"


def format_members(members):
    """Return an ensemble's weights column from ``[(model, WeightsId or str), ...]`` (or a dict).

    Pairs, not only a dict: an ensemble may hold two runs of one model (full face and regions).
    """
    pairs = members.items() if hasattr(members, "items") else members
    return "; ".join(f"{m}={WeightsId.parse(w) if not isinstance(w, WeightsId) else w}"
                     for m, w in pairs)


def parse_members(text):
    """Return ``[(model, WeightsId), ...]`` of an ensemble's weights column (empty for a single run)."""
    out = []
    for part in str(text or "").split(";"):
        model, eq, ident = part.strip().partition("=")
        if eq:
            out.append((model.strip(), WeightsId.parse(ident)))
    return out


def weights_of(text):
    """Return the WeightsIds in a ``weights`` column: the members' for an ensemble, else one."""
    members = parse_members(text)
    return [w for _, w in members] if members else [WeightsId.parse(text)]
