"""The HDF5 feature file: one network's codes of every frame with a face (DESIGN.md contract).

``data/features/<dataset>/<model>.h5``:

==================== ===================== =================================================
dataset              shape, dtype          meaning
==================== ===================== =================================================
/frames              (n,) KEY_DTYPE        subject, video, frame of each row: the frames with
                                           a valid aligned face, in the frame table's order
/<region>/codes      (n, dims) float32     codes of ``full``, ``upper``, ``middle``, ``lower``
                     (or float16)          in /frames' row order, chunked by rows
==================== ===================== =================================================

File attributes: ``model``, ``layer``, ``weights`` (``imagenet`` | ``random:<seed>`` |
``sha256:<hex>`` | ``vggface`` | ``dlib`` | ``none``), ``input_size``, ``dims``, ``dtype``,
``preprocessing`` (json: mean, std, pixel scale), ``frames_sha256``, ``dataset``, ``created``,
``featbench_version``, ``format_version``. Each region group carries ``rows_done``: rows are
written in order, so a run that stopped resumes at ``rows_done`` and ends with the same file an
uninterrupted run writes.

A file made with other weights, another frame list, another layer or input size, or another
dtype is refused with a :class:`StoreError` that says what differs and how to replace it
(``--overwrite``); it is never silently mixed.
"""

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featbench import __version__
from featbench.core.align import cache_fingerprint, cached_faces, read_cache_info
from featbench.core.errors import (FeatbenchError, MissingRunError, StoreError, describe_os_error,
                                   h5_errno)
from featbench.core.frames import differences
from featbench.core.workspace import (atomic_path, check_free_space, file_lock, reserve_space,
                                     trim_h5)

FORMAT_VERSION = 1
#: bytes per chunk of /<region>/codes: a few dozen rows of a 4096-d code
CHUNK_BYTES = 1 << 20
#: attributes that must match for a file to be resumed or extended with another region
#: what h5py raises on a file whose header or object tables hold changed bytes
_DAMAGE = (OSError, KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError)
IDENTITY_ATTRS = ("model", "layer", "weights", "input_size", "dims", "dtype", "frames_sha256",
                  "source_fingerprint")


def keys_sha256(keys):
    """Return the sha256 of a structured array of frame keys (the frame list's identity)."""
    return hashlib.sha256(np.ascontiguousarray(keys).tobytes()).hexdigest()


def _h5(path, mode):
    import h5py

    return h5py.File(path, mode)


class FeatureWriter:
    """Write (or resume writing) a feature file, region by region, batch by batch.

    Use :func:`open_store`; close it (or use it as a context manager) when done.
    """

    def __init__(self, f, path, lock=None):
        self.f, self.path, self._lock = f, Path(path), lock
        self.n = int(f["frames"].shape[0])
        self.dims = int(f.attrs["dims"])
        self.dtype = np.dtype(str(f.attrs["dtype"]))

    def rows_done(self, region):
        """Rows of ``region`` already written (0 when the region is new)."""
        g = self.f.get(region)
        # a group without its codes (disk full while creating them, or damaged) holds no rows
        return int(g.attrs.get("rows_done", 0)) if g is not None and "codes" in g else 0

    def codes(self, region):
        """Return the (n, dims) dataset of ``region``, created chunked by rows if new.

        Codes carry HDF5's fletcher32 checksum per chunk: a flipped byte is an error on read,
        never a silently wrong code. A region whose creation failed (disk full while its
        chunks were allocated) is created anew.
        """
        g = self.f.get(region)
        if g is not None and "codes" not in g:
            del self.f[region]  # half-made: created, then the disk filled; nothing in it
            g = None
        if g is None:
            import h5py

            rows = max(1, min(self.n, CHUNK_BYTES // (self.dims * self.dtype.itemsize)))
            # every chunk allocated now: later batches write raw data only, never the chunk
            # index, so a run killed between two flushes leaves the file's metadata intact
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            check_free_space(self.path, self.n * self.dims * self.dtype.itemsize,
                             f"writing the {region} codes")
            with self._os_errors(f"creating the {region} codes"):
                try:
                    g = self.f.create_group(region)
                    g.attrs["rows_done"] = 0
                    g.create_dataset("codes", shape=(self.n, self.dims), dtype=self.dtype,
                                     chunks=(rows, self.dims) if self.n else None,
                                     fletcher32=bool(self.n), dcpl=dcpl)
                    self.f.flush()
                except BaseException:
                    if region in self.f:
                        del self.f[region]
                    raise
        return self.f[region]["codes"]

    def _os_errors(self, doing):
        return _os_errors(self.path, doing, resume=True)

    def write(self, region, start, codes):
        """Write rows ``start:start+len(codes)`` of ``region`` and record the progress.

        Rows are written in order: ``start`` must equal :meth:`rows_done`, so that the
        progress mark always means "every row before it is final".
        """
        done = self.rows_done(region)
        if start != done:
            raise StoreError(f"{self.path}: {region} rows must be written in order "
                             f"(at {done}, got {start})")
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.dims:
            raise StoreError(f"{self.path}: codes of shape {codes.shape}, the file holds "
                             f"{self.dims}-d codes")
        ds = self.codes(region)
        end = start + len(codes)
        with self._os_errors(f"writing {region} codes"):
            reserve_space(self.f, codes.shape[0] * codes.shape[1] * np.dtype(self.dtype).itemsize,
                          f"writing {region} codes")  # HDF5 never meets a full disk
            ds[start:end] = codes.astype(self.dtype, copy=False)
            # the mark moves only after the rows are in the file: a crash between the two
            # rewrites those rows on resume, never skips them
            self.f[region].attrs["rows_done"] = end
            self.f.flush()

    def close(self):
        try:
            if self.f:
                f, self.f = self.f, None
                with self._os_errors("closing it"):
                    try:
                        f.close()
                    except _DAMAGE as exc:  # OSError included: then the disk, said as such
                        if isinstance(exc, OSError):
                            raise
                        raise StoreError(f"{self.path}: damaged feature file ({exc}); pass "
                                         "--overwrite to replace it") from None
                    trim_h5(self.path)  # the space reserved for rows and not used
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True, eq=False)
class StoreIdentity:
    """What a feature file is made of and from: a file of another identity is refused (or,
    with ``overwrite``, replaced), never mixed.

    Parameters
    ----------
    keys : ndarray of KEY_DTYPE
        The frames (rows) of the file.
    model, layer, weights : str
        Registry name, code layer, weights identity.
    input_size, dims : int
    dtype : {"float32", "float16"}
    source : str
        The identity of the pixels the codes are computed from (the aligned-face cache's
        fingerprint: frame keys, input files, alignment settings); a file made from other
        pixels is refused like one made with other weights.
    """

    keys: np.ndarray
    model: str
    layer: str
    weights: str
    input_size: int
    dims: int
    dtype: str = "float32"
    source: str = ""

    def attrs(self):
        """The file's identity attributes (what a reader compares)."""
        return {"model": self.model, "layer": self.layer, "weights": self.weights,
                "input_size": int(self.input_size), "dims": int(self.dims),
                "dtype": str(np.dtype(self.dtype)), "frames_sha256": keys_sha256(self.keys),
                "source_fingerprint": self.source or ""}


def open_store(path, identity=None, *, overwrite=False, extra_attrs=None, source_changes=(),
               **fields):
    """Open the feature file ``path`` for writing: new, resumed, or refused.

    Parameters
    ----------
    path : str or Path
    identity : StoreIdentity, optional
        What the file is; default ``StoreIdentity(**fields)`` (``keys``, ``model``, ``layer``,
        ``weights``, ``input_size``, ``dims``, ``dtype``, ``source``).
    overwrite : bool
        Replace an existing file that does not match instead of refusing.
    extra_attrs : dict, optional
        More attributes stored on a new file (dataset, preprocessing).
    source_changes : sequence of str
        What changed in those pixels' inputs (``AlignedFaces.rebuilt_because``), for the message.

    Returns
    -------
    FeatureWriter

    Raises
    ------
    StoreError
        The existing file was made differently (what differs, and ``--overwrite``), or is not
        a readable feature file.
    """
    path = Path(path)
    identity = identity if identity is not None else StoreIdentity(**fields)
    # one writer per feature file: a second extract of the same network waits, then resumes
    # (or finds complete) what the first wrote
    lock = file_lock(path, what="writing codes into")
    lock.__enter__()
    try:
        return _open_store(path, lock, identity, overwrite=overwrite, extra_attrs=extra_attrs,
                           source_changes=source_changes)
    except BaseException:
        lock.__exit__(None, None, None)
        raise


def _open_store(path, lock, identity, *, overwrite, extra_attrs, source_changes):
    want, keys = identity.attrs(), identity.keys
    if path.exists() and not overwrite:
        f = _open_existing(path)
        try:
            problem = _difference(f, want, keys, source_changes)
            _probe(f)
        except _DAMAGE as exc:
            f.close()
            raise StoreError(f"{path}: damaged feature file ({type(exc).__name__}); pass "
                             "--overwrite to replace it") from None
        if problem is None:
            return FeatureWriter(f, path, lock)
        f.close()
        raise StoreError(f"{path}: {problem}; pass --overwrite to replace it (its codes are "
                         "lost), or move it away")
    # a new file appears whole (attributes and /frames) or not at all: made beside, renamed
    with _os_errors(path, "creating it", resume=False), atomic_path(path) as tmp:
        with _h5(tmp, "w") as f:
            f.attrs.update(want)
            f.attrs.update({"format_version": FORMAT_VERSION, "featbench_version": __version__,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
            f.create_dataset("frames", data=np.asarray(keys))
    return FeatureWriter(_h5(path, "r+"), path, lock)


def _probe(f):
    """Read every object a writer touches, so damage shows here and not mid-run."""
    int(f["frames"].shape[0])
    for name in f:
        if name == "frames":
            continue
        g = f[name]
        int(g.attrs.get("rows_done", 0))
        if "codes" in g:
            g["codes"].shape


@contextlib.contextmanager
def _os_errors(path, doing, *, resume):
    """Turn an OS error while ``doing`` something to ``path`` into one :class:`StoreError` line."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:  # h5py says a failed write all three ways
        if not isinstance(exc, OSError) and h5_errno(exc) is None:
            raise
        then = "; free space and rerun: it resumes where it stopped" if resume else ""
        raise StoreError(f"{path}: {describe_os_error(exc)} while {doing}{then}") from None


def is_complete(path, regions, identity):
    """Whether ``path`` already holds every row of ``regions`` for exactly ``identity`` (a
    :class:`StoreIdentity`).

    Checked read-only, so a finished file is not touched (its modification time is what tells
    later stages that their results are newer than the codes).
    """
    path = Path(path)
    if not path.exists():
        return False
    try:
        f = _h5(path, "r")
    except OSError:
        return False
    try:
        with f:
            want = identity.attrs()
            if "frames" not in f or _difference(f, want, identity.keys) is not None:
                return False
            n = int(f["frames"].shape[0])
            return all(r in f and "codes" in f[r] and f[r]["codes"].shape == (n, want["dims"])
                       and int(f[r].attrs.get("rows_done", 0)) == n for r in regions)
    except _DAMAGE:
        return False  # damaged: open_store says how, and --overwrite replaces it


def _open_existing(path):
    import errno

    try:
        f = _h5(path, "r+")
    except OSError as exc:
        what = describe_os_error(exc)
        if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreError(f"{path}: cannot write to the feature file: {what}") from None
        raise StoreError(f"{path}: not a readable HDF5 file ({what}); pass --overwrite to "
                         "replace it") from None
    try:
        version = f.attrs.get("format_version")
        ok = version == FORMAT_VERSION and "frames" in f
    except _DAMAGE as exc:
        f.close()
        raise StoreError(f"{path}: damaged feature file ({type(exc).__name__}); pass --overwrite "
                         "to replace it") from None
    if not ok:
        f.close()
        raise StoreError(f"{path}: not a featbench feature file of format {FORMAT_VERSION} "
                         f"(format_version={version}); pass --overwrite to replace it")
    return f


def _difference(f, want, keys, source_changes=()):
    """Return what differs between the open file and the asked identity, or None."""
    have = {k: f.attrs.get(k) for k in IDENTITY_ATTRS}
    have["input_size"] = int(have["input_size"]) if have["input_size"] is not None else None
    have["dims"] = int(have["dims"]) if have["dims"] is not None else None
    if have["weights"] != want["weights"]:
        return (f"made with weights {have['weights']}, asked for {want['weights']} "
                "(codes of different weights are never mixed)")
    if have["frames_sha256"] != want["frames_sha256"]:
        n = int(f["frames"].shape[0])
        return (f"made from another frame list ({n} frames, asked {len(keys)}; the data set "
                "or its alignment changed)")
    if (have["source_fingerprint"] or "") != want["source_fingerprint"]:
        changed = (f"changed: {', '.join(source_changes)}" if source_changes else
                   "a video, image or landmark file of the data set, or the alignment, changed")
        return f"made from other aligned faces than the cache holds now ({changed}): stale codes"
    for k in ("model", "layer", "input_size", "dims", "dtype"):
        if have[k] != want[k]:
            return f"made with {k} {have[k]}, asked for {want[k]}"
    return None


def read_codes(path, region="full"):
    """Read one region's codes from a feature file.

    Parameters
    ----------
    path : str or Path
    region : {"full", "upper", "middle", "lower"}

    Returns
    -------
    keys : ndarray of KEY_DTYPE, shape (n,)
    codes : ndarray, shape (n, dims), float32
    attrs : dict
        The file's attributes (model, layer, weights, ...).

    Raises
    ------
    MissingRunError
        No such file, or the region was never extracted.
    StoreError
        Not a feature file, or the region is incomplete (an interrupted run).
    """
    path = Path(path)
    if not path.exists():
        raise MissingRunError(f"{path}: no feature file (run featbench extract --model "
                              f"{path.stem} first)")
    with _reading(path) as f:
        if f.attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: feature file of format {f.attrs.get('format_version')}, "
                             f"featbench reads {FORMAT_VERSION} (re-extract with --overwrite)")
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        redo = f"re-extract with featbench extract --model {attrs.get('model')} --overwrite"
        if "frames" not in f:
            raise StoreError(f"{path}: damaged feature file: no /frames ({redo})")
        if region not in f or "codes" not in f[region]:
            have = sorted(k for k in f if k != "frames" and "codes" in f[k]) or ["none"]
            raise MissingRunError(f"{path}: no {region} codes (regions here: {', '.join(have)}; "
                                  f"run featbench extract --model {attrs.get('model')} "
                                  f"--region {region})")
        n = int(f["frames"].shape[0])
        done = int(f[region].attrs.get("rows_done", 0))
        if done < n:
            raise StoreError(f"{path}: {region} codes incomplete ({done} of {n} rows; rerun "
                             f"featbench extract --model {attrs.get('model')} --region {region} "
                             "to finish)")
        ds = f[region]["codes"]
        if ds.shape != (n, int(attrs.get("dims", -1))):
            raise StoreError(f"{path}: damaged feature file: /{region}/codes has shape "
                             f"{ds.shape}, /frames {n} rows of {attrs.get('dims')}-d codes ({redo})")
        keys = f["frames"][:]
        if len(np.unique(keys)) != n:
            raise StoreError(f"{path}: damaged feature file: /frames lists some frames twice "
                             f"({redo})")
        try:
            codes = ds[:].astype(np.float32, copy=False)
        except OSError:  # the fletcher32 filter found a chunk whose bytes changed
            raise StoreError(f"{path}: damaged feature file: the checksum of the {region} codes "
                             f"does not match (bytes changed on disk; {redo})") from None
    return keys, codes, attrs


@contextlib.contextmanager
def _reading(path):
    """Open ``path`` read-only; any failure to open or parse it is one :class:`StoreError` line."""
    try:
        f = _h5(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the feature file: {describe_os_error(exc)}") from None
    try:
        with f:
            yield f
    except FeatbenchError:
        raise
    except _DAMAGE as exc:
        # h5py's answers to bytes changed in the file's header or object tables
        raise StoreError(f"{path}: damaged feature file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}); "
                         "re-extract with --overwrite") from None


def check_source(path, table, aligned):
    """Refuse codes made from other aligned faces than the data set's cache gives now.

    What :func:`open_store` checks when ``extract`` reuses a file, for the readers of codes
    (``classify``): the feature file records the fingerprint of the aligned-face cache its
    codes came from. When ``aligned`` (the workspace's cache) has been rebuilt since (a video
    replaced and realigned), or still has that fingerprint but ``table``'s input files changed
    since (a video replaced, not realigned yet), the codes are stale. Codes made from another
    cache than the workspace's, or from in-memory faces, are not judged.

    Raises
    ------
    StoreError
        One line naming the feature file, what changed and the command that renews it.
    """
    attrs, encoded = _attrs_and_frames(path)
    # another data set's codes are not this check's to judge
    what = _source_change(attrs, table, aligned) if _frames_of(table, encoded) else None
    if what:
        raise StoreError(f"{path}: made from other aligned faces than {table.dataset} gives now "
                         f"({what}): stale codes; renew them with featbench extract --model "
                         f"{attrs.get('model')} --dataset {table.dataset} --overwrite")


def _source_change(attrs, table, aligned):
    """What changed since a feature file's codes were made (see :func:`check_source`), or None.

    For a file every frame of which is a frame of ``table`` (its callers check that) -- not
    one whose frame list equals the table's: a frame without a face (no landmarks, none
    detected) is a frame of the table that is never encoded, and must not make complete codes
    look stale.
    """
    have = str(attrs.get("source_fingerprint") or "")
    info = read_cache_info(aligned) if have and Path(aligned).exists() else None
    if info is None:
        return None  # no source recorded, or no cache to judge by
    if info.get("fingerprint") != have:  # realigned since: the cache says why
        changed = list(json.loads(info.get("rebuilt_because") or "[]"))
    else:  # made from this cache: have its inputs changed since?
        digests = table.input_digests()
        if cache_fingerprint(table, json.loads(info["settings"]), digests=digests) == have:
            return None
        changed = differences(json.loads(info.get("inputs") or "null"), digests)
    return (f"changed: {', '.join(changed)}" if changed else
            "a video, image or landmark file of the data set, or the alignment, changed")


def _attrs_and_frames(path):
    """A feature file's attributes and /frames (the keys of the frames it encoded)."""
    with _reading(path) as f:
        if "frames" not in f:
            raise StoreError(f"{path}: damaged feature file: no /frames (re-extract with "
                             "--overwrite)")
        return dict(f.attrs), f["frames"][:]


def _frames_of(table, keys):
    """Whether every key of ``keys`` is a frame of ``table`` (compared frame by frame)."""
    want = table.keys()
    if keys.dtype != want.dtype:
        keys = keys.astype(want.dtype)
    void = np.dtype((np.void, want.dtype.itemsize))
    return bool(np.isin(np.ascontiguousarray(keys).view(void),
                        np.ascontiguousarray(want).view(void)).all())


def stale_codes(path, table, aligned):
    """Return why the codes of ``path`` are stale for ``table``, or None when they are not (or
    there is no file). What ``featbench run`` asks before it renews derived codes itself.

    Stale: the file encoded a frame that is not one of ``table``'s (another frame list); its
    faces were realigned, or their input files changed, since (:func:`check_source`); or the
    frames it encoded are not, frame by frame, the frames with a face in the cache ``aligned``
    now (what ``extract`` would encode). Frames of ``table`` without a face are in neither.
    """
    if not Path(path).exists():
        return None
    attrs, encoded = _attrs_and_frames(path)
    if not _frames_of(table, encoded):
        return "made from another frame list"
    why = _source_change(attrs, table, aligned)
    if why:
        return why
    now = cached_faces(aligned) if Path(aligned).exists() else None
    if now is not None and not np.array_equal(encoded.astype(now.dtype), now):
        return (f"made from another frame list ({len(encoded)} frames encoded, the aligned "
                f"faces have {len(now)})")
    return None


def store_info(path):
    """Return ``{"attrs": {...}, "frames": n, "regions": {region: rows_done}}`` of a feature file.

    A region whose codes are missing (a damaged file) counts as 0 rows done.
    """
    with _reading(path) as f:
        if "frames" not in f:
            raise StoreError(f"{path}: damaged feature file: no /frames (re-extract with "
                             "--overwrite)")
        return {"attrs": dict(f.attrs), "frames": int(f["frames"].shape[0]),
                "regions": {k: int(f[k].attrs.get("rows_done", 0)) if "codes" in f[k] else 0
                            for k in f if k != "frames"}}
