"""The one face source: aligned faces as a network reads them, in training, extraction and predict.

Every network of featbench sees faces through here: the learned ones while they train
(:mod:`classify.learn`), every encoder while it extracts codes (:mod:`extract.loop`) and a
trained run applied to new footage (:mod:`featbench.apply.predict`). What is decided once:

**Region and size** (:class:`FaceInput`, saved with every trained network). A network reads the
full aligned face or one region's crop (``upper`` / ``middle`` / ``lower``, cut from the boxes
the landmarks give: :func:`featbench.core.align.region_crops`). A region crop is always cut at
the network's input side. A full face is resized here to that side when the network was trained
on faces resized here (``resize_full``: fine-tuned networks); otherwise it goes in as aligned
and the network's own first layer resizes it (pretrained encoders, the transfer networks:
:func:`extract.encoders.create_preprocess`). The two resizes differ in their last bits (OpenCV's
INTER_AREA here, torch's antialiased bilinear there), so a network is always applied the way it
was trained, which its :class:`FaceInput` records.

**Balancing** (:func:`balanced_rows`): one epoch of training takes, per AU, every positive frame
and as many negatives drawn afresh (the task says what balanced means:
``classify.task.Task.balance``); a network that learns several AUs takes the union.

**Augmentation** (:func:`draw_augmentation`, :func:`augment`), for training only, in ways that
keep every AU visible: a horizontal flip (DISFA's AUs are scored on both sides together), a
shift of at most 4 % of the side, brightness and contrast within 10 %. The draws come from the
epoch's seeded generator, so an epoch's batches are the same for any number of reader threads.

**Read-ahead** (:meth:`FaceSource.batches`): the next batches are read (and augmented) in
background threads while the network works on this one
(:func:`featbench.core._background.read_ahead`).
"""

from dataclasses import asdict, dataclass

import numpy as np

from featbench.core import threads
from featbench.core._background import read_ahead
from featbench.core.align import AlignedFaces, region_crops
from featbench.core.aus import REGIONS
from featbench.core.errors import DataError, UsageError, did_you_mean

#: augmentation bounds: shift as a fraction of the side, brightness and contrast factors
SHIFT, GAIN, BIAS = 0.04, 0.10, 0.10


@dataclass(frozen=True)
class FaceInput:
    """What a network reads: a region of the aligned face, at a side, resized by whom.

    Attributes
    ----------
    region : {"full", "upper", "middle", "lower"}
    size : int or None
        The network's input side (None: the aligned face as it is).
    resize_full : bool
        Resize full faces here to ``size`` (a fine-tuned network trained on them); else the
        network's first layer resizes them.
    """

    region: str = "full"
    size: object = None
    resize_full: bool = False

    def __post_init__(self):
        if self.region != "full" and self.region not in REGIONS:
            raise UsageError(did_you_mean(str(self.region), ("full",) + REGIONS, what="region"))

    def crop_size(self, side):
        """The side crops are cut at from ``side``-pixel aligned faces (None: as they are)."""
        if self.region != "full":
            return None if self.size is None else int(self.size)
        if self.resize_full and self.size is not None and int(self.size) != int(side):
            return int(self.size)
        return None

    def crops(self, images, boxes):
        """Return the (k, H, W, 3) uint8 crops of aligned ``images`` (k, S, S, 3) with ``boxes``."""
        return region_crops(images, boxes, self.region, self.crop_size(images.shape[1]))

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, d):
        return cls(**{k: d[k] for k in ("region", "size", "resize_full") if k in d})


class FaceSource:
    """The aligned-face cache read by rows as one network reads it.

    Parameters
    ----------
    faces : path or AlignedFaces
        ``featbench align``'s cache (:class:`featbench.core.align.AlignedFaces`).
    face_input : FaceInput
    """

    def __init__(self, faces, face_input=FaceInput()):
        self.faces = faces if isinstance(faces, AlignedFaces) else AlignedFaces(faces)
        self.input = face_input

    @property
    def size(self):
        """The side of the faces this source gives (the network's input side)."""
        return self.input.size or self.faces.size

    def read(self, rows, aug=None):
        """Return the (k, H, W, 3) uint8 faces of ``rows``; ``aug``: per-row augmentation draws."""
        imgs = self.faces.read(np.asarray(rows, np.int64), region=self.input.region,
                               size=self.input.crop_size(self.faces.size))
        return augment(imgs, aug) if aug is not None else imgs

    def batches(self, rows, batch_size, *, aug=None, threads=None, depth=None, min_size=1):
        """Yield ``(start, rows, faces)`` of consecutive batches of ``rows``, read ahead.

        Parameters
        ----------
        rows : array of int
        batch_size : int
        aug : dict, optional
            :func:`draw_augmentation`'s draws for every row of ``rows``.
        threads : int, optional
            Reader threads (default :func:`reader_threads`; 0 reads inline).
        depth : int, optional
            Batches read ahead at most (default ``threads + 1``).
        min_size : int
            A last batch smaller than this is left out (batch norm needs two faces).
        """
        rows = np.asarray(rows, np.int64)
        items = [(a, rows[a:a + batch_size]) for a in range(0, len(rows), int(batch_size))
                 if len(rows[a:a + batch_size]) >= min_size]

        def read(item):
            a, idx = item
            sub = None if aug is None else {k: v[a:a + len(idx)] for k, v in aug.items()}
            return a, idx, self.read(idx, sub)

        return read_ahead(read, items, threads=reader_threads() if threads is None else threads,
                          depth=depth)

    def check_crops(self, rows):
        """DataError when the region has no usable crop (empty boxes) for some of ``rows``."""
        region = self.input.region
        if region == "full":
            return
        b = self.faces.boxes[np.asarray(rows, np.int64), REGIONS.index(region)]
        empty = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if empty.any():
            raise DataError(f"{self.faces.path}: {int(empty.sum())} of {len(rows)} faces have no "
                            f"{region} crop (empty region box); rebuild the cache with featbench "
                            "align, or use --region full")

    def close(self):
        self.faces.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def reader_threads():
    """Background reader threads of a training source: a quarter of the CPU cores, 1 to 4.

    On a GPU the faces' reading and augmentation, not the network, bound an epoch (README: on
    an H200 about 200 faces/s against the 3,366 the loop alone trains); on a 2-core machine one
    thread leaves the cores to the network. The rule lives in :mod:`featbench.core.threads`,
    which counts these threads when it chooses torch's.
    """
    return threads.reader_threads()


def balanced_rows(y, rows, rng, balance):
    """Return one epoch's rows: the union over the columns of ``y`` of each one's balanced draw.

    Parameters
    ----------
    y : array (n_table, k)
        Targets by table row; a column's unlabelled rows (< 0) are never drawn for it.
    rows : array of int
        The rows to draw from (the training subjects').
    rng : numpy.random.Generator
    balance : callable
        ``balance(y_col, rng) -> indices`` of a column's labelled rows (the task's rule).
    """
    parts = []
    for j in range(y.shape[1]):
        r = rows[y[rows, j] >= 0]
        parts.append(r[balance(y[r, j], rng)])
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def draw_augmentation(rng, n, size, *, flip_only=False):
    """Return the augmentation draws of ``n`` faces: flip, shift (dx, dy), gain, bias.

    ``flip_only``: horizontal flips alone (no shift, no brightness or contrast change).
    """
    flip = rng.random(n) < 0.5
    if flip_only:
        return {"flip": flip, "shift": np.zeros((n, 2), np.int64)}
    m = max(1, int(round(SHIFT * size)))
    return {"flip": flip, "shift": rng.integers(-m, m + 1, size=(n, 2)),
            "gain": rng.uniform(1 - GAIN, 1 + GAIN, n).astype(np.float32),
            "bias": rng.uniform(-BIAS, BIAS, n).astype(np.float32) * 255}


def augment(imgs, aug):
    """Apply :func:`draw_augmentation`'s draws to (k, S, S, 3) uint8 faces (a new array)."""
    out = np.empty_like(imgs)
    h, w = imgs.shape[1:3]
    for i, im in enumerate(imgs):
        if aug["flip"][i]:
            im = im[:, ::-1]
        dx, dy = (int(v) for v in aug["shift"][i])
        pad = np.pad(im, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
        out[i] = pad[abs(dy) + dy:abs(dy) + dy + h, abs(dx) + dx:abs(dx) + dx + w]
    if "gain" not in aug:  # flips (and shifts) only
        return out
    # brightness / contrast about each face's mean: an affine map of the 256 grey levels, so a
    # per-face lookup table (the same float32 arithmetic per level: bit-identical to computing
    # it per pixel, and a fraction of the memory traffic)
    mean = out.astype(np.float32).mean(axis=(1, 2, 3))[:, None]
    levels = np.arange(256, dtype=np.float32)[None, :]
    lut = (levels - mean) * aug["gain"][:, None] + mean + aug["bias"][:, None]
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    for i in range(len(out)):
        np.take(lut[i], out[i], out=out[i])
    return out
