"""The frame table: the one representation of a data set that every stage consumes.

A :class:`FrameTable` has one row per frame. Its ``frames`` DataFrame holds the columns

=============== ======= ===============================================================
column          dtype   meaning
=============== ======= ===============================================================
subject         str     subject id (``SN001``; for Aff-Wild2 the video name)
video           str     video (or sequence) id; one subject can have several (cameras)
frame           int     0-based frame number within the video
source          str     absolute path of the video file or image holding the pixels
source_index    int     frame index inside ``source`` when it is a video, -1 for an image
landmark_file   str     absolute path of the frame's landmark file, "" when none
split           str     the data set's own split ("train", "validation"), "" when none
AU01 ...        int8    occurrence: 1 present, 0 absent, -1 unlabelled
AU01_int ...    int8    intensity 0-5 where the data set has it, -1 unknown
=============== ======= ===============================================================

Conventions, stated once: AUs are named ``AU01`` ... ``AU26``; a DISFA AU is present when its
intensity is >= 2 (the reader's ``threshold``); frames without any usable label stay in the
table (they may still be extracted) but are left out of every split's labelled frames.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench.core.errors import UsageError

#: dtype of the frame keys stored in HDF5 ``/frames`` (DESIGN.md: subject, frame index)
KEY_DTYPE = np.dtype([("subject", "S32"), ("video", "S64"), ("frame", "<i4")])

#: the largest frame number a reader accepts from a file (10 million: four days at 30 fps; DISFA's
#: videos have 4,845 frames): a damaged line must not overflow the keys' 32-bit frame numbers,
#: nor make a reader loop up to its number
MAX_FRAME = 10_000_000

BASE_COLUMNS = ("subject", "video", "frame", "source", "source_index", "landmark_file", "split")


@dataclass
class FrameTable:
    """A data set as one table of frames, with its labels and what was skipped.

    Parameters
    ----------
    dataset : str
        The data set's name (``disfa``, ``synth``, ``affwild2``, ``folder``).
    root : Path
        The folder it was read from.
    aus : tuple of str
        The AUs this data set labels, e.g. ``("AU01", "AU02", ...)``.
    frames : pandas.DataFrame
        One row per frame; columns as in the module docstring.
    skipped : dict of str -> int
        Why frames or files were left out, and how many: ``{"unannotated (-1)": 12}``.
    has_intensity : bool
        Whether ``AUnn_int`` columns hold intensities.
    pre_aligned : bool
        Whether the pixels are already aligned face crops (ABAW's ``cropped_aligned``).
    landmark_points : int
        Points per landmark file (66 for DISFA, 0 when the data set has none).
    notes : dict
        Facts about the data set worth reporting that are not skips, e.g.
        ``{"short_subjects": {"SN010": 4844}}``.
    label_threshold : int or None
        The intensity at which an AU counts as present (DISFA's ``--threshold``); None when
        the data set labels occurrence directly. Runs on other thresholds are named apart.
    """

    dataset: str
    root: Path
    aus: tuple
    frames: "object"
    skipped: dict = field(default_factory=dict)
    has_intensity: bool = False
    pre_aligned: bool = False
    landmark_points: int = 0
    notes: dict = field(default_factory=dict)
    label_threshold: "int | None" = None

    def __len__(self):
        return len(self.frames)

    @property
    def subjects(self):
        """Sorted list of subject ids."""
        return sorted(self.frames["subject"].unique().tolist())

    def labels(self, aus=None):
        """Return occurrence labels, shape (frames, len(aus)), int8: 1, 0 or -1 (unlabelled)."""
        aus = list(self.aus if aus is None else aus)
        return self.frames[aus].to_numpy(dtype=np.int8)

    def intensities(self, aus=None):
        """Return intensity labels, shape (frames, len(aus)), int8: 0-5, or -1 (unknown).

        Raises
        ------
        UsageError
            The data set labels occurrence only (:meth:`require_intensity`).
        """
        self.require_intensity()
        aus = list(self.aus if aus is None else aus)
        return self.frames[[f"{au}_int" for au in aus]].to_numpy(dtype=np.int8)

    def require_intensity(self, what="--task intensity"):
        """Raise :class:`~featbench.core.errors.UsageError` unless the table holds intensities.

        The message names the data set and which ones carry intensities.
        """
        if self.has_intensity:
            return
        raise UsageError(
            f"{what}: {self.dataset} ({self.root}) labels AU occurrence only (0/1), no "
            "intensities; intensities 0-5 come with disfa, the embedded synth set, or a folder "
            "manifest with AUnn_int columns")

    def labelled_mask(self, aus=None):
        """Return a bool mask of the frames with at least one usable label among ``aus``."""
        return (self.labels(aus) >= 0).any(axis=1)

    def positives(self, aus=None):
        """Return ``{"AU01": n, ...}``: frames where each AU is present."""
        aus = list(self.aus if aus is None else aus)
        return {au: int((self.frames[au].to_numpy() == 1).sum()) for au in aus}

    def subset(self, mask):
        """Return a new table with only the rows where ``mask`` is true (index reset)."""
        sub = self.frames[np.asarray(mask, dtype=bool)].reset_index(drop=True)
        return FrameTable(self.dataset, self.root, self.aus, sub, dict(self.skipped),
                          self.has_intensity, self.pre_aligned, self.landmark_points,
                          dict(self.notes), self.label_threshold)

    def keys(self):
        """Return the frame keys as a structured array of :data:`KEY_DTYPE`, in row order."""
        out = np.empty(len(self.frames), dtype=KEY_DTYPE)
        out["subject"] = self.frames["subject"].astype(str).str.encode("utf-8").to_numpy()
        out["video"] = self.frames["video"].astype(str).str.encode("utf-8").to_numpy()
        out["frame"] = self.frames["frame"].to_numpy(dtype=np.int32)
        return out

    def fingerprint(self):
        """Return a sha256 of the frame keys and of every input file's identity.

        Caches store it so that a changed data set is detected, never mixed with an old one;
        :meth:`input_digests` says which subject's pixels or landmarks changed.
        """
        import json

        h = hashlib.sha256()
        h.update(self.keys().tobytes())
        h.update(json.dumps(self.input_digests(), sort_keys=True).encode())
        return h.hexdigest()

    def input_digests(self):
        """Return ``{subject: {"pixels": sha256, "landmarks": sha256}}`` of the input files.

        A file's identity is its name, size and modification time in nanoseconds; a video's
        also holds the sha256 of its first, middle and last MiB, so a video replaced by another
        of the same size within one clock tick is still told apart (hashing whole videos would
        read DISFA's gigabytes on every cache check). Landmark files are stat-ed one by one.
        """
        df = self.frames
        out = {}
        for subject, rows in df.groupby("subject", sort=True):
            pixels, landmarks = hashlib.sha256(), hashlib.sha256()
            for src, index in sorted(set(zip(rows["source"], rows["source_index"] >= 0))):
                pixels.update(_file_identity(src, sample=bool(index)).encode())
            for lm in sorted(set(rows["landmark_file"])):
                if lm:
                    landmarks.update(_file_identity(lm).encode())
            out[str(subject)] = {"pixels": pixels.hexdigest()[:16],
                                 "landmarks": landmarks.hexdigest()[:16]}
        return out

    def summary(self):
        """Return a JSON-ready dict: subjects, frames, positives per AU, skipped (data info)."""
        labelled = self.labelled_mask()
        out = {
            "dataset": self.dataset,
            "root": str(self.root),
            "subjects": self.subjects,
            "videos": int(self.frames["video"].nunique()),
            "frames": int(labelled.sum()),
            "frames_total": int(len(self.frames)),
            "aus": list(self.aus),
            "positives": self.positives(),
            "skipped": {k: int(v) for k, v in sorted(self.skipped.items())},
        }
        out.update(self.notes)
        splits = sorted(s for s in self.frames["split"].unique() if s)
        if splits:
            out["splits"] = {s: int((self.frames["split"] == s).sum()) for s in splits}
        return out


def _file_identity(path, *, sample=False):
    """``name:size:mtime_ns[:sha256 of head, middle, tail]`` of a file, ``name:-1`` if absent."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return f"{p.name}:-1"
    ident = f"{p.name}:{st.st_size}:{st.st_mtime_ns}"
    if sample:
        h, block = hashlib.sha256(), 1 << 20
        try:
            with open(p, "rb") as fh:
                for at in sorted({0, max(0, st.st_size // 2 - block // 2), max(0, st.st_size - block)}):
                    fh.seek(at)
                    h.update(fh.read(block))
        except OSError:
            return f"{ident}:unreadable"
        ident += ":" + h.hexdigest()
    return ident


def differences(old, new):
    """Return what changed between two :meth:`FrameTable.input_digests`, as short phrases."""
    if not isinstance(old, dict):
        return []
    out = []
    for subject in sorted(set(old) | set(new)):
        if subject not in old:
            out.append(f"{subject} added")
        elif subject not in new:
            out.append(f"{subject} removed")
        else:
            out += [f"{subject} {what}" for what in ("pixels", "landmarks")
                    if old[subject].get(what) != new[subject].get(what)]
    return out


def build_frames(rows, aus, *, intensity=False, extra=()):
    """Build the ``frames`` DataFrame from a list of row dicts, with the table's dtypes.

    Parameters
    ----------
    rows : list of dict
        Each with the base columns and, per AU, its occurrence (and ``AUnn_int``).
    aus : sequence of str
        The AU columns to create (missing values become -1, unlabelled).
    intensity : bool
        Whether to create ``AUnn_int`` columns.
    extra : sequence of str
        Further string columns kept as they are (e.g. a manifest's ``expression``).
    """
    import pandas as pd

    label_cols = list(aus) + ([f"{au}_int" for au in aus] if intensity else [])
    cols = list(BASE_COLUMNS) + label_cols + list(extra)
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    for c in ("subject", "video", "source", "landmark_file", "split", *extra):
        df[c] = df[c].fillna("").astype(str)
    df["frame"] = df["frame"].astype(np.int64)
    df["source_index"] = df["source_index"].fillna(-1).astype(np.int64)
    for c in label_cols:
        df[c] = df[c].fillna(-1).astype(np.int8)
    return df
