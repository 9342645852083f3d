"""The aligned-face cache: every frame aligned once per data set, read fast by every network.

``data/<dataset>/aligned/faces.h5`` (``Workspace.aligned_path``) holds, in the frame table's
row order:

============== ====================== ======================================================
dataset        shape, dtype           meaning
============== ====================== ======================================================
/frames        (n,) KEY_DTYPE         subject, video, frame of each row
/valid         (n,) bool              False: no face (no landmarks, none detected, unreadable)
/faces         (n, S, S, 3) uint8     aligned RGB faces, S = ``faces.CANONICAL_SIZE``; black
                                      where not valid; chunked by rows, uncompressed (or lzf)
/landmarks     (n, 68, 2) float32     landmarks in aligned coordinates, NaN where unknown
/boxes         (n, 3, 4) int16        upper / middle / lower region boxes x0, y0, x1, y1
/transforms    (n, 2, 3) float32      the similarity frame -> aligned face (NaN: not valid)
/skip_reason   (n,) int8              0 aligned, else an index into attrs ``skip_reasons``
============== ====================== ======================================================

Attributes: ``format_version``, ``fingerprint`` (the frame keys, the input files' digests and
the alignment settings, hashed), ``inputs`` (json: per subject, the digest of its pixel files
and of its landmark files, ``FrameTable.input_digests``), ``rebuilt_because`` (json list: what
changed since the previous cache, e.g. ``["SN002 pixels"]``), ``settings`` (json), ``size``,
``skipped`` (json: reason -> frames), ``skip_reasons`` (json list), ``aligned`` (frames with a
face), ``seconds``, ``created``. Feature files store the cache's fingerprint: codes of
changed inputs are refused, never reused.

A cache whose fingerprint matches is used as it is; a stale one is deleted and rebuilt,
never mixed. Building writes ``faces.h5.partial`` and renames it when complete, so a crash
never leaves a file that looks valid; rerunning resumes a partial file with the same
fingerprint.

Frames come from the data set's own landmarks (``featbench.core.datasets.load_landmarks``) when
it has them, from dlib's detector otherwise; already-aligned crops (ABAW's
``cropped_aligned``) pass through, resized to S, with the template's region boxes.
"""

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench.core import faces, interrupt
from featbench.core._background import in_background, ordered_map
from featbench.core.aus import REGIONS
from featbench.core.errors import (StoreError, UsageError, describe_os_error, did_you_mean,
                                   h5_errno)
from featbench.core.frames import differences
from featbench.core.workspace import check_free_space, file_lock, reserve_space, trim_h5

FORMAT_VERSION = 1
_OPEN_LOCK = threading.Lock()  # one AlignedFaces handle opened at a time
#: rows per HDF5 chunk of /faces (600 kB): shuffled batches read few rows they do not need
#: (4 rows: ~10000 shuffled frames/s uncompressed, 16 rows: ~3000)
CHUNK_ROWS = 4
#: rows aligned between two writes (and the resume granularity)
BLOCK_ROWS = 128
#: HDF5 filters that ``compression`` may name. Measured on the synthetic set (4 x 300 frames,
#: two cores): uncompressed builds at ~2500 frames/s and reads ~30000 frames/s in order,
#: ~10000 shuffled; lzf saves 40 % of the disk but builds at ~1000 and reads ~3000 in order,
#: ~800 shuffled. Speed is the default; ``featbench align --compress`` picks lzf.
COMPRESSIONS = (None, "lzf", "gzip")
#: most frames ``featbench align --show`` draws (one row each)
MAX_SHEET_ROWS = 64
#: why a frame has no face; index = /skip_reason value
SKIP_REASONS = ("", "no landmarks", "no face detected", "frame unreadable")
_NO_LANDMARKS, _NO_FACE, _UNREADABLE = 1, 2, 3


@dataclass
class AlignReport:
    """What :func:`align_dataset` did.

    Attributes
    ----------
    path : Path
        The cache file.
    built : bool
        False when the cache was already up to date (nothing was computed).
    frames : int
        Rows in the cache.
    aligned : int
        Rows with a face.
    processed : int
        Frames computed by this call (0 when up to date; fewer than ``frames`` on resume).
    skipped : dict of str -> int
        Rows without a face, by reason.
    seconds : float
        Time this call spent.
    changed : list of str
        Why a previous cache was rebuilt: ``["SN001 pixels", "SN002 landmarks"]``.
    damaged : list of str
        Landmark files that could not be read (empty, garbage, cut short): their frames are
        counted as without landmarks, and the files named.
    """

    path: Path
    built: bool
    frames: int
    aligned: int
    processed: int = 0
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0
    changed: list = field(default_factory=list)
    damaged: list = field(default_factory=list)

    def summary(self):
        """Return the one-line summary the CLI prints."""
        if not self.built:
            return (f"cache up to date: {self.path} ({self.aligned} of {self.frames} frames "
                    f"with a face{self._damaged()})")
        skipped = ", ".join(f"{v} {k}" for k, v in self.skipped.items() if v) or "none"
        rate = self.processed / self.seconds if self.seconds > 0 else float("nan")
        why = f"; rebuilt, changed: {', '.join(self.changed)}" if self.changed else ""
        return (f"aligned {self.aligned} of {self.frames} frames (skipped: {skipped}{why}"
                f"{self._damaged()}) -> {self.path} in {self.seconds:.1f} s ({rate:.0f} frames/s)")

    def _damaged(self):
        if not self.damaged:
            return ""
        names = ", ".join(self.damaged[:3]) + (", ..." if len(self.damaged) > 3 else "")
        return (f"; {len(self.damaged)} landmark files unreadable, counted as no landmarks: "
                f"{names}")


def alignment_settings(table, *, size=None, compression=None):
    """Return the settings that decide the cache's content (saved with it, in its hash).

    ``compression`` is recorded but not hashed: it changes the file, not the faces, so a cache
    built either way satisfies every reader.
    """
    size = int(size or faces.CANONICAL_SIZE)
    if table.pre_aligned:
        source = "pre_aligned"
    elif table.landmark_points > 0:
        source = f"landmarks{table.landmark_points}"
        if _unlandmarked(table).any():  # (a cache that skipped those frames is rebuilt)
            source += "+dlib68"
    else:
        source = "dlib68"
    return {
        "format_version": FORMAT_VERSION,
        "size": size,
        "template_version": faces.TEMPLATE_VERSION,
        "stable_points": faces.STABLE_POINTS.tolist(),
        "landmarks": source,
        "interpolation": "linear",
        "compression": compression,
    }


def cache_fingerprint(table, settings, *, digests=None):
    """Return the sha256 of the frame keys, the input files' digests and the alignment settings.

    ``digests`` (``table.input_digests()``) may be passed when the caller holds them already.
    """
    h = hashlib.sha256(table.keys().tobytes())
    digests = table.input_digests() if digests is None else digests
    h.update(json.dumps(digests, sort_keys=True).encode())
    hashed = {k: v for k, v in settings.items() if k != "compression"}
    h.update(json.dumps(hashed, sort_keys=True).encode())
    return h.hexdigest()


def read_cache_info(path, *, keys=None):
    """Return the attrs of a complete cache file as a dict, or None if absent or unreadable.

    With ``keys`` (the frame table's), a cache whose ``/frames`` differ from them is also
    None: the fingerprint says what the cache was built from, ``/frames`` what it holds.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if keys is not None and not np.array_equal(f["frames"][:], keys):
                return None
        for name in ("settings", "skipped"):  # damaged text is a damaged cache: rebuilt
            json.loads(attrs.get(name, "{}"))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError):  # h5py: damage, any way
        return None
    return attrs if attrs.get("complete") else None


def cached_faces(path):
    """Return the keys of the frames with a face in the complete cache ``path`` (what
    ``extract`` encodes from it, in row order), or None when it is absent, incomplete or
    unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete"):
                return None
            return f["frames"][:][f["valid"][:].astype(bool)]
    except (OSError, KeyError, TypeError, ValueError, RuntimeError):  # h5py: damage, any way
        return None


def ensure_aligned(table, workspace, *, progress=True):
    """Build the data set's aligned-face cache unless an up-to-date one exists.

    Parameters
    ----------
    table : FrameTable
    workspace : Workspace
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    Path
        ``workspace.aligned_path(table.dataset)``.
    """
    return align_dataset(table, workspace.aligned_path(table.dataset), progress=progress).path


def align_dataset(table, path, *, progress=True, force=False, size=None, compression=None):
    """Align every frame of ``table`` into the cache file ``path`` (see the module docstring).

    Parameters
    ----------
    table : FrameTable
    path : str or Path
        The cache file, e.g. ``Workspace.aligned_path(dataset)``.
    progress : bool
        Show a tqdm progress bar (frames/s) on stderr.
    force : bool
        Rebuild even when the cache is up to date.
    size : int, optional
        Side of the aligned faces (default ``faces.CANONICAL_SIZE``).
    compression : {None, "lzf", "gzip"}
        HDF5 filter of /faces: None reads fastest (see :data:`COMPRESSIONS`).

    Returns
    -------
    AlignReport
    """
    t0 = time.perf_counter()
    path = Path(path)
    if compression not in COMPRESSIONS:
        raise UsageError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    settings = alignment_settings(table, size=size, compression=compression)
    digests = table.input_digests()
    fingerprint = cache_fingerprint(table, settings, digests=digests)
    # checked without the lock first: an up-to-date cache is read, never written (a read-only
    # workspace works), and the final file only ever appears complete, by a rename
    report = None if force else _up_to_date(table, path, fingerprint, t0)
    if report is not None:
        return report
    with file_lock(path, what="aligning faces into"):
        # another process may have built it while this one waited for the lock
        report = None if force else _up_to_date(table, path, fingerprint, t0)
        if report is not None:
            return report
        try:
            return _rebuild(table, path, settings, fingerprint, digests, t0, progress=progress)
        except (OSError, ValueError, RuntimeError) as exc:  # h5py's text runs to lines
            if not isinstance(exc, OSError) and h5_errno(exc) is None:
                raise
            raise StoreError(f"{path}: {describe_os_error(exc)} while aligning faces into it; "
                             "the frames written so far are kept and a rerun resumes") from None


def _up_to_date(table, path, fingerprint, t0):
    """Return the report of a complete cache built from exactly ``table``, else None."""
    info = read_cache_info(path, keys=table.keys()) if path.exists() else None
    if info is None or info.get("fingerprint") != fingerprint:
        return None
    skipped = json.loads(info.get("skipped", "{}"))
    return AlignReport(path, False, len(table), int(info.get("aligned", 0)), 0, skipped,
                       time.perf_counter() - t0, damaged=_json(info.get("damaged_landmarks")) or [])


def _rebuild(table, path, settings, fingerprint, digests, t0, *, progress):
    """Build the cache into ``<path>.partial`` (resuming it) and rename it onto ``path``."""
    changed = []
    if path.exists():
        old = read_cache_info(path) or {}
        changed = differences(_json(old.get("inputs")), digests)
        if not changed and old.get("fingerprint") not in (None, fingerprint):
            changed = ["frame list or alignment settings"]
        path.unlink()  # stale: never mixed with the new frames
    partial = path.with_name(path.name + ".partial")
    inputs = {"inputs": json.dumps(digests), "rebuilt_because": json.dumps(changed)}
    processed = _build(table, partial, settings, fingerprint, inputs, progress=progress)
    with _h5(partial, "r+") as f:
        reasons = f["skip_reason"][:]
        aligned = int((reasons == 0).sum())
        skipped = {r: int((reasons == k).sum()) for k, r in enumerate(SKIP_REASONS) if k}
        seconds = time.perf_counter() - t0
        f.attrs.update({"skipped": json.dumps(skipped), "aligned": aligned, "seconds": seconds,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": True})
        damaged = _json(f.attrs.get("damaged_landmarks")) or []
        del f["done"]
    trim_h5(partial)  # the space reserved for blocks and not used
    os.replace(partial, path)
    return AlignReport(path, True, len(table), aligned, processed, skipped, seconds, changed,
                       damaged)


def _json(text):
    try:
        return json.loads(text) if text else None
    except (TypeError, ValueError):
        return None


def _h5(path, mode):
    import h5py

    return h5py.File(path, mode)


def _open_partial(table, partial, settings, fingerprint, inputs):
    """Return an open partial file to resume, or a fresh one with every dataset created."""
    n, s = len(table), settings["size"]
    if partial.exists():
        try:
            f = _h5(partial, "r+")
            if f.attrs.get("fingerprint") == fingerprint and "done" in f:
                return f
            f.close()
        except OSError:
            pass  # a partial file damaged by a crash: start over
        partial.unlink()
    f = _h5(partial, "w")
    f.attrs.update({"format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                    "settings": json.dumps(settings), "size": s,
                    "skip_reasons": json.dumps(list(SKIP_REASONS)), "complete": False, **inputs})
    f.create_dataset("frames", data=table.keys())
    f.create_dataset("valid", shape=(n,), dtype=bool, fillvalue=False)
    f.create_dataset("faces", shape=(n, s, s, 3), dtype=np.uint8, fillvalue=0,
                     chunks=(max(1, min(CHUNK_ROWS, n)), s, s, 3), compression=settings["compression"])
    f.create_dataset("landmarks", shape=(n, 68, 2), dtype=np.float32, fillvalue=np.nan)
    f.create_dataset("boxes", shape=(n, 3, 4), dtype=np.int16)
    f.create_dataset("transforms", shape=(n, 2, 3), dtype=np.float32, fillvalue=np.nan)
    f.create_dataset("skip_reason", shape=(n,), dtype=np.int8, fillvalue=0)
    f.create_dataset("done", shape=(n,), dtype=bool, fillvalue=False)
    return f


def _build(table, partial, settings, fingerprint, inputs, *, progress):
    """Fill ``partial`` with every row not done yet; return how many rows were computed."""
    from tqdm import tqdm

    size = settings["size"]
    template_boxes = faces.region_boxes(faces.template(size), image_size=size).astype(np.int16)
    with _open_partial(table, partial, settings, fingerprint, inputs) as f:
        todo = np.flatnonzero(~f["done"][:])
        if settings["compression"] is None:  # the whole cache's pixels, before hours of work
            check_free_space(partial.with_suffix(""), len(todo) * size * size * 3,
                             f"aligning {len(todo)} frames")
        landmarks = None
        if not table.pre_aligned and table.landmark_points > 0:
            from featbench.core import datasets

            damaged = []
            landmarks = datasets.load_landmarks(table, damaged=damaged)
            f.attrs["damaged_landmarks"] = json.dumps(damaged)  # named in the report
        bar = tqdm(total=len(todo), desc=f"align {table.dataset}", unit="frame",
                   disable=not progress or None, dynamic_ncols=True)
        block = _Block(f, size, template_boxes)
        unlandmarked = _unlandmarked(table)  # once: the frames that faces are detected in
        frames = _frames_to_align(table, todo, landmarks, unlandmarked)
        detect = not table.pre_aligned and (landmarks is None or unlandmarked.any())
        aligned = _map_frames(frames, table.pre_aligned, size, threads=2 if detect else 1)
        try:
            for row, result in aligned:
                block.add(row, result)
                if len(block) >= BLOCK_ROWS:
                    bar.update(block.write())
                    interrupt.check()  # Ctrl-C: stop here, the blocks written are kept
            bar.update(block.write())
        finally:  # on any error the decode and detection threads stop before the file closes
            aligned.close()
            frames.close()
            bar.close()
    return len(todo)


def _frames_to_align(table, rows, landmarks, unlandmarked):
    """Yield ``(row, image or None, skip reason, landmarks or None)`` in reading order
    (``unlandmarked``: :func:`_unlandmarked` of ``table``).

    Decoding runs in a second thread (OpenCV releases the GIL), so that it overlaps the
    warping and the HDF5 writes of the main thread: the two CPU cores each do half.
    """
    if landmarks is not None:
        stable = np.isfinite(landmarks[:, faces.STABLE_POINTS]).all(axis=(1, 2))
        detect = ~stable & unlandmarked
        skip = ~stable & ~detect
        for row in rows[skip[rows]]:
            yield int(row), None, _NO_LANDMARKS, None  # no need to decode these
        rows = rows[~skip[rows]]
    for row, image in in_background(faces.iter_frames(table, rows, missing="none"),
                                    name="featbench-decode"):
        if image is None:
            yield row, None, _UNREADABLE, None
        else:
            yield row, image, 0, None if landmarks is None or detect[row] else landmarks[row]


def _unlandmarked(table):
    """Rows of videos that come without any landmark file, whose faces are detected: DISFA's
    right camera, or one data set's frames in a table joined with a landmarked one. A frame
    lacking its file in a landmarked video stays "no landmarks" (a tracking gap)."""
    df = table.frames
    has_file = df["landmark_file"].to_numpy() != ""
    video = (df["subject"].astype(str) + "\0" + df["video"].astype(str)).to_numpy()
    landmarked = set(video[has_file])
    return ~has_file & ~np.isin(video, list(landmarked))


def _map_frames(frames, pre_aligned, size, *, threads):
    """Yield ``(row, _align_one(...))`` for each frame, in order.

    dlib's detector releases the GIL: with ``threads=2`` two frames are detected at once
    (measured: 17 -> 33 frames/s on 1024 x 1024 photos, two cores).
    """
    def align(frame):
        row, image, reason, lm = frame
        return row, _align_one(image, reason, lm, pre_aligned, size, faces)

    yield from ordered_map(align, frames, threads=threads)


def _align_one(image, reason, lm, pre_aligned, size, faces):
    """Return ``(face, aligned landmarks, M, reason)`` for one frame (face None if skipped)."""
    if reason:
        return None, None, None, reason
    if pre_aligned:
        import cv2

        h, w = image.shape[:2]
        interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
        face = cv2.resize(image, (size, size), interpolation=interp)
        M = np.array([[size / w, 0, 0], [0, size / h, 0]])
        return face, None, M, 0
    if lm is None:
        lm = faces.detect_landmarks(image)
        if lm is None:
            return None, None, None, _NO_FACE
    try:
        face, M = faces.align_face(image, lm, size=size)
    except ValueError:  # degenerate points (coinciding): no similarity to fit, no face
        return None, None, None, _NO_LANDMARKS
    return face, faces.transform_points(lm, M), M, 0


class _Block:
    """Rows aligned since the last write, written together (a slice when contiguous)."""

    def __init__(self, f, size, template_boxes):
        self.f, self.size, self.template_boxes = f, size, template_boxes
        self.rows, self.results = [], []

    def __len__(self):
        return len(self.rows)

    def add(self, row, result):
        self.rows.append(row)
        self.results.append(result)

    def write(self):
        k = len(self.rows)
        if not k:
            return 0
        # the block's bytes on disk first: HDF5 never meets a full disk (reserve_space)
        reserve_space(self.f, k * (self.size * self.size * 3 + 512), "aligning faces",
                      name=Path(self.f.filename).with_suffix(""))
        order = np.argsort(self.rows, kind="stable")
        rows = np.asarray(self.rows)[order]
        s = self.size
        face = np.zeros((k, s, s, 3), np.uint8)
        lms = np.full((k, 68, 2), np.nan, np.float32)
        boxes = np.repeat(self.template_boxes[None], k, axis=0)
        mats = np.full((k, 2, 3), np.nan, np.float32)
        reasons = np.zeros(k, np.int8)
        for j, i in enumerate(order):
            img, lm, M, reason = self.results[i]
            reasons[j] = reason
            if img is None:
                continue
            face[j] = img
            mats[j] = M
            if lm is not None:
                lms[j] = lm
                boxes[j] = faces.region_boxes(lm, image_size=s)
        contiguous = rows[-1] - rows[0] == k - 1
        sel = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
        f = self.f
        f["faces"][sel] = face
        f["landmarks"][sel] = lms
        f["boxes"][sel] = boxes
        f["transforms"][sel] = mats
        f["skip_reason"][sel] = reasons
        f["valid"][sel] = reasons == 0
        # mark done last and flush: a crash after this point loses nothing already written
        f["done"][sel] = True
        f.flush()
        self.rows, self.results = [], []
        return k


# --- reading --------------------------------------------------------------------------------


class AlignedFaces:
    """Read the aligned-face cache: whole faces or region crops, by row.

    Cheap to create and to pickle: the HDF5 file is opened on first read in each process
    (and re-opened after a fork), so DataLoader workers can share one instance.

    Parameters
    ----------
    path : str or Path
        A cache built by :func:`ensure_aligned`.

    Raises
    ------
    StoreError
        The file is missing, incomplete, or of another format version.
    """

    #: HDF5 chunk cache per open file: holds a few dozen decompressed chunks
    CACHE_BYTES = 64 * 2 ** 20

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no aligned-face cache (run featbench align)")
        try:
            with _h5(self.path, "r") as f:
                attrs = dict(f.attrs)
                version = int(attrs.get("format_version", -1))
                if version != FORMAT_VERSION or not attrs.get("complete"):
                    raise StoreError(
                        f"{self.path}: aligned-face cache of format {version}, complete="
                        f"{bool(attrs.get('complete'))}; featbench reads format {FORMAT_VERSION} "
                        "(rerun featbench align to rebuild it)")
                self.keys = f["frames"][:]
                self.valid = f["valid"][:]
                self.boxes = f["boxes"][:].astype(np.int64)
            self.size = int(attrs["size"])
            self.settings = json.loads(attrs.get("settings", "{}"))
            self.skipped = json.loads(attrs.get("skipped", "{}"))
        except OSError as exc:  # permission, a lock, or damage: said as what it is
            from featbench.core.errors import describe_os_error

            raise StoreError(f"{self.path}: cannot read the aligned-face cache: "
                             f"{describe_os_error(exc)} (rerun featbench align --force to "
                             "rebuild it if it is damaged)") from None
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # h5py's text on damage
            raise StoreError(f"{self.path}: damaged aligned-face cache ({type(exc).__name__}); "
                             "rerun featbench align --force to rebuild it") from None
        self.fingerprint = attrs.get("fingerprint")
        self.rebuilt_because = _json(attrs.get("rebuilt_because")) or []
        self._file, self._pid = None, None

    def __len__(self):
        return len(self.keys)

    def __repr__(self):
        return f"AlignedFaces({str(self.path)!r}: {len(self)} frames, {int(self.valid.sum())} valid)"

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            with _OPEN_LOCK:  # reader threads (finetune's prefetch) open one handle between them
                if self._file is None or self._pid != os.getpid():
                    # after a fork the parent's handle must not be used (HDF5 is not fork-safe)
                    self._file = h5py.File(self.path, "r", rdcc_nbytes=self.CACHE_BYTES,
                                           rdcc_nslots=1009)
                    self._pid = os.getpid()
        return self._file

    @property
    def landmarks(self):
        """Aligned landmarks of every row, (n, 68, 2) float32, NaN where unknown."""
        return self._h5()["landmarks"][:]

    def read_faces(self, indices):
        """Return the stored faces of ``indices``, (k, S, S, 3) uint8, in the order given.

        Runs of consecutive rows are read as one slice each (what a DataLoader's sorted
        batches are), never row by row.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.size, self.size, 3), np.uint8)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        starts = np.flatnonzero(np.diff(uniq, prepend=uniq[0] - 2) != 1)
        ends = np.append(starts[1:], len(uniq))
        ds = self._h5()["faces"]
        data = np.empty((len(uniq), self.size, self.size, 3), np.uint8)
        for a, b in zip(starts, ends):
            ds.read_direct(data, np.s_[uniq[a]:uniq[b - 1] + 1], np.s_[a:b])
        out[:] = data[inverse]
        return out

    def read(self, indices, region="full", size=None):
        """Return faces or region crops of rows ``indices``.

        Parameters
        ----------
        indices : array_like of int
            Row numbers (the table's row order).
        region : {"full", "upper", "middle", "lower"}
        size : int or (h, w), optional
            Output size. None: the stored face for ``full``; for a region, the size of that
            region's box on the template (so every crop in a batch has one shape).

        Returns
        -------
        ndarray, shape (k, H, W, 3), uint8 RGB
        """
        if region != "full" and region not in REGIONS:
            raise UsageError(did_you_mean(region, ("full",) + REGIONS, what="region"))
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return region_crops(self.read_faces(idx), self.boxes[idx], region, size)

    def close(self):
        """Close this process's file handle (reopened on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # a handle does not travel to a worker
        return state


def region_crops(images, boxes, region="full", size=None):
    """Return the faces or region crops of aligned ``images``: what every encoder is fed.

    Parameters
    ----------
    images : ndarray, shape (k, S, S, 3), uint8
        Aligned faces.
    boxes : ndarray, shape (k, 3, 4)
        Their upper / middle / lower boxes (:func:`featbench.core.faces.region_boxes`).
    region : {"full", "upper", "middle", "lower"}
    size : int or (h, w), optional
        Output size. None: the face as it is for ``full``; for a region, the size of that
        region's box on the template (so every crop in a batch has one shape).

    Returns
    -------
    ndarray, shape (k, H, W, 3), uint8 RGB
    """
    side = images.shape[1] if images.ndim == 4 else faces.CANONICAL_SIZE
    if region == "full":
        if size is None or _hw(size) == (side, side):
            return images
        return np.stack([faces.crop_region(im, (0, 0, side, side), _hw(size))
                         for im in images]) if len(images) else _empty(size)
    r = REGIONS.index(region)
    if size is None:
        x0, y0, x1, y1 = faces.region_boxes(faces.template(side), image_size=side)[r]
        size = (int(y1 - y0), int(x1 - x0))
    if not len(images):
        return _empty(size)
    return np.stack([faces.crop_region(im, box[r], _hw(size)) for im, box in zip(images, boxes)])


def _hw(size):
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _empty(size):
    h, w = _hw(size)
    return np.empty((0, h, w, 3), np.uint8)


# --- inspection -----------------------------------------------------------------------------


def sample_rows(valid, n):
    """Return up to ``n`` row indices with a face, evenly spread over the table."""
    rows = np.flatnonzero(np.asarray(valid, dtype=bool))
    if len(rows) <= n:
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))]


def render_sheet(table, path, out, *, n=8):
    """Draw a PNG sheet that shows the alignment geometry of ``n`` frames.

    One row per frame: the original frame with its landmarks, the aligned face with its
    landmarks and the three region boxes, then the upper, middle and lower crops.

    Parameters
    ----------
    table : FrameTable
        The table the cache ``path`` was built from (for the original frames).
    path : str or Path
        The aligned-face cache.
    out : str or Path
        The PNG to write (its folder is created).
    n : int
        Frames to show, spread evenly over those with a face.

    Returns
    -------
    Path
        ``out``.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    if not 1 <= n <= MAX_SHEET_ROWS:
        # one row is ~200 px high: 100000 rows made a 77 MB PNG no viewer opens
        raise UsageError(f"--n must be 1-{MAX_SHEET_ROWS} (rows of the sheet), got {n}")
    rows, aligned, lms, boxes, mats, (with_face, total) = _sheet_rows(table, path, n)
    originals = dict(faces.iter_frames(table, rows))
    titles = ("frame + landmarks", "aligned", "upper", "middle", "lower")
    fig = Figure(figsize=(12.5, 2.6 * len(rows)))
    axes = fig.subplots(len(rows), 5, squeeze=False,
                      gridspec_kw={"width_ratios": (1.4, 1, 1, 1, 1)})
    for r, row in enumerate(rows):
        frame = _frame_with_landmarks(originals[int(row)].copy(), lms[r], mats[r])
        face = _face_with_regions(aligned[r].copy(), lms[r], boxes[r])
        crops = [faces.crop_region(aligned[r], box) for box in boxes[r]]
        key = table.frames.iloc[int(row)]
        for c, img in enumerate([frame, face] + crops):
            ax = axes[r, c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r, 0].set_ylabel(f"{key['subject']} {key['video']}\nframe {key['frame']}", fontsize=8)
    fig.suptitle(f"{table.dataset}: alignment and regions of {len(rows)} frames "
                 f"({with_face} of {total} with a face)", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from featbench.core.workspace import save_figure

    save_figure(fig, out, dpi=80)  # marked as featbench's: a rerun may replace it
    return out


def _sheet_rows(table, path, n):
    """Read what the sheet shows of ``n`` frames spread over those with a face.

    Returns ``(rows, aligned faces, landmarks, region boxes, transforms, (frames with a face,
    frames))``; StoreError when the cache does not match ``table`` or has no face.
    """
    with AlignedFaces(path) as af:
        if len(af) != len(table):
            raise StoreError(f"{path}: holds {len(af)} frames, the data set {len(table)} "
                             "(rerun featbench align)")
        rows = sample_rows(af.valid, n)
        if not len(rows):
            raise StoreError(f"{path}: no frame has a face to show ({af.skipped})")
        aligned = af.read(rows)
        lms = af.landmarks[rows]
        boxes = af.boxes[rows]
        with _h5(path, "r") as f:
            mats = f["transforms"][np.sort(rows)][np.argsort(np.argsort(rows))]
        counts = (int(af.valid.sum()), len(af))
    return rows, aligned, lms, boxes, mats, counts


def _frame_with_landmarks(frame, lms, mat):
    """Draw the landmarks ``lms`` (aligned coordinates) back on the original ``frame``; crop to the face.

    ``mat`` is the frame -> aligned transform; a frame without landmarks is returned as it is.
    """
    import cv2

    if not np.isfinite(lms).all():
        return frame
    inv = cv2.invertAffineTransform(mat.astype(np.float64))
    pts = faces.transform_points(lms, inv)
    dot = max(1, round(np.ptp(pts[:, 0]) / 80))
    for x, y in pts:
        cv2.circle(frame, (int(round(x)), int(round(y))), dot, (0, 255, 0), -1)
    # the face and some context, not a whole 1024 x 768 frame in which it is small
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    pad = 0.6 * max(x1 - x0, y1 - y0)
    h, w = frame.shape[:2]
    return frame[max(0, int(y0 - pad)):min(h, int(y1 + pad)),
                 max(0, int(x0 - pad)):min(w, int(x1 + pad))]


def _face_with_regions(face, lms, boxes):
    """Draw the upper / middle / lower region boxes (red, green, blue) and the landmarks on ``face``."""
    import cv2

    colours = ((230, 60, 60), (60, 200, 60), (70, 120, 255))  # upper, middle, lower
    for box, colour in zip(boxes, colours):
        cv2.rectangle(face, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1),
                      colour, 1)
    if np.isfinite(lms).all():
        for x, y in lms:
            cv2.circle(face, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
    return face
