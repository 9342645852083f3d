"""featbench's one model format: a JSON manifest beside safetensors tensors, never a pickle.

A trained run is a folder, an export is one file; both hold the same content and are read the
same way (:func:`open_model`), and neither is ever read with pickle: the manifest is JSON, the
tensors are `safetensors <https://huggingface.co/docs/safetensors>`_ (a JSON header and raw
little-endian bytes: loading one runs no code). The model is Hugging Face's move to
safetensors, skops for scikit-learn models and torchvision's ``Weights`` (identity,
preprocessing and metadata travel with the tensors).

Run folder (``results/<ds>/models/<run>/``)::

    manifest.json            what the run is (below)
    <group>.safetensors      one file per group of tensors: a network unit (``AU01``, ``model``,
                             ``AU01-fold1``), the linear models of a fold, a vote's scales...
                             read lazily, one group (and one tensor) at a time
    settings.json ...        the training record (every argument, logs): not needed to load

Export (``featbench export RUN --out FILE``): ONE ``.safetensors`` file. Its header's
``__metadata__["featbench.manifest"]`` holds the manifest; tensor ``<name>`` of group ``<g>``
is stored as ``<g>/<name>`` (a vote's member ``i`` as ``members.<i>/<g>/<name>``), and files
carried along (the fine-tuned weights a classify run's codes came from) as ``uint8`` tensors
``carried.<i>/bytes``. Any safetensors reader opens it; ``export --half`` stores floating
tensors as float16 (thresholds stay in the manifest, exact).

The manifest (JSON; :func:`create_manifest` fills and checks it)::

    format, format_version      "featbench-model", FORMAT_VERSION (1 was the pickle of featbench 0.1)
    featbench_version, created
    run, kind, task             the RunKey string, the run kind (lda, svm, lstm, ft, transfer,
                                vote...), the task ("occurrence")
    aus                         ["AU01", ...]
    folds                       [{"name": fold, "thresholds": {au: float}}]: per fold and AU the
                                threshold its decisions used (an AU without a model is absent)
    weights                     the WeightsId string of the network the run reads
    preprocessing               {"model", "regions": {au: region}, "input_size", "mean", "std",
                                 "alignment": {...}} (what faces go in, and how)
    training_data               {"dataset": name, "synthetic": bool}
    settings                    the kind's own JSON (architecture, score rule...)
    tensors                     {group: {"file": "<group>.safetensors", "sha256": hex}} in a
                                folder; {group: {"prefix": "<g>/", "sha256": hex}} in an export
                                (the digest of the run folder's file: the trained weights' identity)
    members                     a vote's members: [{"run": name}] in a folder (sibling folders),
                                their whole manifests in an export
    carried                     an export's carried files: {key: {"prefix": "carried.<i>/", "name"}}

Anything else (a pickle, a joblib file, a torch zip checkpoint, an unknown file) is refused by
:func:`sniff` from its first bytes, before any loader sees it, with one line that says how to
re-export (:class:`ModelFormatError`, exit status 2).

API: :func:`create_manifest`, :func:`write_model`, :func:`read_manifest`, :func:`open_model`
(-> :class:`ModelFile`: ``manifest``, ``tensors(group)`` lazy, ``members()``, ``carried(key)`` ->
``(name, bytes)``),
:func:`export_model`, :func:`sniff`.
"""

import hashlib
import json
import os
import struct
import time
from pathlib import Path

import numpy as np

from featbench import __version__
from featbench.core.errors import MissingRunError, StoreError
from featbench.core.workspace import atomic_path, atomic_write_text

FORMAT = "featbench-model"
#: the layout this code writes and reads (1 was featbench 0.1's joblib pickle: refused)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: the key of an export's safetensors ``__metadata__`` that holds the manifest
META_KEY = "featbench.manifest"
SUFFIX = ".safetensors"
REEXPORT = ("re-export the run with this featbench (featbench export RUN --out FILE.safetensors; "
            "a run saved by featbench 0.1 must be trained again first)")

_REQUIRED = ("run", "kind", "aus", "folds", "weights", "preprocessing", "training_data")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
           "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
#: the largest safetensors header :func:`sniff` reads (the library's own limit)
_MAX_HEADER = 100_000_000


class ModelFormatError(StoreError):
    """A file that is not a featbench model (a pickle, a torch checkpoint, another format)."""


# --- the manifest ---------------------------------------------------------------------------
def create_manifest(*, run, kind, aus, folds, weights, preprocessing, training_data,
                    task="occurrence", settings=None, members=None):
    """Return a checked manifest dict (format, versions and date filled in).

    Parameters
    ----------
    run : str or RunKey
        The run's name.
    kind : str
        Its run kind (the registry's name: ``lda``, ``svm``, ``lstm``, ``ft``, ``transfer``,
        ``vote``...).
    aus : list of str
    folds : list of dict
        ``[{"name": fold name, "thresholds": {au: float}}, ...]``.
    weights : str or WeightsId
        The identity of the network's weights the run reads (``""`` for a vote).
    preprocessing : dict
        ``model``, ``regions`` ({au: region}), ``input_size``, ``mean``, ``std``, ``alignment``
        (keys a kind has no use for may be absent).
    training_data : dict
        ``{"dataset": name, "synthetic": bool}``.
    task : str
        ``occurrence`` (0/1 decisions) by default.
    settings : dict, optional
        The kind's own JSON (must survive ``json.dumps``).
    members : list of str, optional
        A vote's member runs.

    Raises
    ------
    ValueError
        A missing field, or a value JSON cannot hold.
    """
    out = {"format": FORMAT, "format_version": FORMAT_VERSION, "featbench_version": __version__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": str(run), "kind": str(kind),
           "task": str(task), "aus": [str(a) for a in aus],
           "folds": [{"name": str(f["name"]), "thresholds": {str(a): float(t) for a, t in
                                                             f["thresholds"].items()}} for f in folds],
           "weights": str(weights), "preprocessing": dict(preprocessing),
           "training_data": {"dataset": str(training_data["dataset"]),
                             "synthetic": bool(training_data.get("synthetic", False))},
           "settings": dict(settings or {}), "tensors": {}}
    if members is not None:
        out["members"] = [{"run": str(m)} for m in members]
    missing = [k for k in _REQUIRED if out.get(k) in (None, "") and k != "weights"]
    if missing:
        raise ValueError(f"a model manifest needs {', '.join(missing)}")
    json.dumps(out, allow_nan=True)  # raises TypeError on a value JSON cannot hold
    return out


def write_model(folder, manifest, tensors):
    """Write a run folder: one ``<group>.safetensors`` per group, then ``manifest.json``.

    Parameters
    ----------
    folder : path
        Created if needed; the manifest is written last (through a temporary file), so a folder
        whose writing was interrupted has no manifest and is not a model.
    manifest : dict
        :func:`create_manifest`'s; its ``tensors`` entry is filled here.
    tensors : dict of str -> dict of str -> array
        ``{group: {name: array}}``; numpy arrays or torch tensors (moved to the CPU). A group
        may also be a callable returning that dict: it is called when its file is written, so
        a run of many networks holds one in memory at a time.

    Returns
    -------
    Path
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest, tensors={})
    for group, arrays in tensors.items():
        _check_group(group)
        arrays = arrays() if callable(arrays) else arrays
        bad = [k for k in arrays if "/" in k or not k]
        if bad:
            raise ValueError(f"tensor names {bad} of group {group!r}: no '/' allowed")
        path = folder / f"{group}{SUFFIX}"
        with atomic_path(path) as tmp:
            digest = _write_safetensors(tmp, [_Ref.of(k, v) for k, v in arrays.items()])
        manifest["tensors"][group] = {"file": path.name, "sha256": digest}
        del arrays
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return folder


def read_manifest(path):
    """Return the manifest of a run folder or an export file (checked; no tensor is read).

    Raises
    ------
    ModelFormatError
        Not a featbench model (a pickle, a torch checkpoint...), or one of another format
        version: the message says how to re-export.
    """
    return open_model(path).manifest


def _check_group(group):
    if not group or "/" in group or group.startswith(".") or os.sep in group:
        raise ValueError(f"tensor group {group!r}: a plain name is needed (no '/', no leading '.')")


def _check_manifest(manifest, where):
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{where}: not a featbench model manifest; {REEXPORT}")
    have = manifest.get("format_version")
    if have != FORMAT_VERSION:
        made = manifest.get("featbench_version", "?")
        newer = isinstance(have, int) and have > FORMAT_VERSION
        raise ModelFormatError(
            f"{where}: model format {have} (featbench {made}); this featbench {__version__} reads "
            f"format {FORMAT_VERSION}: " + ("upgrade featbench" if newer else REEXPORT))
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:  # a valid header over an empty or cut run
        raise ModelFormatError(f"{where}: damaged featbench model file: its manifest lacks "
                               f"{', '.join(missing)}; {REEXPORT}")
    return manifest


# --- reading --------------------------------------------------------------------------------
def sniff(path):
    """Say what ``path`` is from its first bytes: ``"folder"`` or ``"export"``; refuse the rest.

    Only raw bytes and a JSON header are read, so nothing the file carries can run.

    Raises
    ------
    ModelFormatError
        A pickle (featbench 0.1's joblib export or any pickle), a compressed joblib file, a
        PyTorch zip checkpoint, or any other file: one line naming what it looks like and how
        to re-export.
    StoreError
        ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            old = any(path.glob("*.joblib")) or any(path.glob("*.pt"))
            raise ModelFormatError(
                f"{path}: no {MANIFEST}" + (" (a run saved by featbench 0.1 as pickles, which "
                                           "featbench does not load: train the run again)" if old
                                           else ": not a featbench run folder"))
        return "folder"
    if not path.is_file():
        raise StoreError(f"{path}: model file does not exist")
    with open(path, "rb") as fh:
        head = fh.read(16)
        if _export_header(fh, head, path.stat().st_size) is not None:
            return "export"
    raise ModelFormatError(f"{path}: {_what_it_is(head)}, not a featbench model file; featbench "
                           f"never unpickles a model (it could run code): {REEXPORT}")


def _what_it_is(head):
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return "a pickle (featbench 0.1's export, joblib or torch.save of an old torch)"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (a PyTorch checkpoint written by torch.save)"
    if head[:2] in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b") \
            or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[:2] == b"ZF":
        return "a compressed file (a joblib export of featbench 0.1?)"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (a feature or predictions file?)"
    return "a file of unknown format"


def _export_header(fh, head, size):
    """Return the parsed safetensors header of an export, or None when it is not one."""
    if len(head) < 9:
        return None
    n = struct.unpack("<Q", head[:8])[0]
    if not 2 <= n <= min(_MAX_HEADER, size - 8) or head[8:9] != b"{":
        return None
    fh.seek(8)
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return header if isinstance(meta, dict) and META_KEY in meta else None


def open_model(path):
    """Open a run folder or an export file; return a :class:`ModelFile` (tensors read lazily).

    Raises
    ------
    ModelFormatError
        See :func:`sniff` and :func:`read_manifest`.
    """
    path = Path(path)
    if sniff(path) == "folder":
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path / MANIFEST}: unreadable manifest ({exc})") from None
        return ModelFile(path, _check_manifest(manifest, path / MANIFEST))
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        text = f.metadata()[META_KEY]
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ModelFormatError(f"{path}: its manifest is not valid JSON ({exc})") from None
    return ModelFile(path, _check_manifest(manifest, path), export=True)


class ModelFile:
    """An opened model: its manifest, and its tensors read on demand.

    Attributes
    ----------
    path : Path
        The run folder or the export file.
    manifest : dict
    is_export : bool
    """

    def __init__(self, path, manifest, *, export=False):
        self.path, self.manifest, self.is_export = Path(path), manifest, bool(export)

    def __repr__(self):
        return f"ModelFile({str(self.path)!r}, run={self.manifest.get('run')!r})"

    @property
    def groups(self):
        """The names of the tensor groups."""
        return list(self.manifest.get("tensors", {}))

    def tensors(self, group):
        """Return the group's tensors as a lazy read-only mapping name -> ndarray.

        Raises
        ------
        StoreError
            No such group, or its file is missing.
        """
        entry = self.manifest.get("tensors", {}).get(group)
        if entry is None:
            raise StoreError(f"{self.path}: model {self.manifest.get('run')} has no tensors "
                             f"{group!r} (it has {', '.join(self.groups) or 'none'})")
        if self.is_export:
            return LazyTensors(self.path, entry["prefix"])
        path = self.path / entry["file"]
        if not path.is_file():
            raise StoreError(f"{path}: tensor file of run {self.manifest.get('run')} is missing "
                             "(train the run again)")
        return LazyTensors(path, "")

    def members(self):
        """A vote's members as ModelFiles (sibling run folders, or embedded in an export)."""
        out = []
        for i, m in enumerate(self.manifest.get("members", [])):
            if self.is_export:
                out.append(ModelFile(self.path, _check_manifest(m, f"{self.path} member {i}"),
                                     export=True))
            else:
                folder = self.path.parent / m["run"]
                if not folder.is_dir():  # said as the ensemble's, not as a file the user never named
                    raise MissingRunError(
                        f"ensemble {self.manifest.get('run')} votes with {m['run']}, whose model "
                        f"folder is no longer in {self.path.parent}: run it again, or featbench "
                        "ensemble with the runs there are")
                out.append(open_model(folder))
        return out

    def carried(self, key):
        """``(file name, bytes)`` of a file an export carries under ``key`` (None when not carried)."""
        entry = self.manifest.get("carried", {}).get(str(key))
        if entry is None:
            return None
        return entry["name"], LazyTensors(self.path, entry["prefix"])["bytes"].tobytes()


class LazyTensors:
    """A read-only mapping of one tensor group; each ``[name]`` reads that tensor only."""

    def __init__(self, path, prefix):
        self.path, self.prefix = Path(path), prefix

    def _open(self):
        from safetensors import safe_open

        try:
            return safe_open(str(self.path), framework="numpy")
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types: a bad tensor file
            with open(self.path, "rb") as fh:
                what = _what_it_is(fh.read(16))
            raise ModelFormatError(f"{self.path}: not a safetensors tensor file ({what}; "
                                   f"{type(exc).__name__}): {REEXPORT}") from None

    def keys(self):
        with self._open() as f:
            return [k[len(self.prefix):] for k in f.keys() if k.startswith(self.prefix)
                    and "/" not in k[len(self.prefix):]]

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, name):
        return name in self.keys()

    def __getitem__(self, name):
        with self._open() as f:
            try:
                return f.get_tensor(self.prefix + name)
            except Exception:  # noqa: BLE001 - safetensors raises its own error types
                raise KeyError(name) from None

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def to_dict(self):
        """Every tensor of the group, read now: ``{name: ndarray}``."""
        return dict(self.items())


# --- exporting --------------------------------------------------------------------------------
def export_model(model, out, *, half=False, carry=None):
    """Write ``model`` (a run folder, or its :class:`ModelFile`) to ONE export file ``out``.

    Tensors are copied one at a time (memory stays at the largest tensor); the file is written
    through a temporary name and renamed, so a crash never leaves half a file.

    Parameters
    ----------
    model : path or ModelFile
    out : path
    half : bool
        Store floating tensors as float16 (half the size; the decisions may change where a
        score lies within float16's precision of its threshold).
    carry : dict of str -> path, optional
        Files to carry along by key (the fine-tuned weights file whose codes a classify run
        reads, keyed by its weights identity); :meth:`ModelFile.carried` returns their bytes.

    Returns
    -------
    Path
    """
    src = model if isinstance(model, ModelFile) else open_model(model)
    refs = []
    manifest = _embed(src, "", refs, half)
    manifest["carried"] = {}
    for i, (key, path) in enumerate((carry or {}).items()):
        prefix = f"carried.{i}/"
        manifest["carried"][str(key)] = {"prefix": prefix, "name": Path(path).name}
        refs.append(_Ref.of(prefix + "bytes", np.frombuffer(Path(path).read_bytes(), np.uint8)))
    manifest["exported"] = {"featbench_version": __version__, "half": bool(half),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(out) as tmp:
        _write_safetensors(tmp, refs, {META_KEY: json.dumps(manifest)})
    return Path(out)


def _embed(src, prefix, refs, half):
    """Return ``src``'s manifest for an export, its tensors appended to ``refs`` under ``prefix``."""
    manifest = dict(src.manifest, tensors={})
    for group in src.groups:
        lazy = src.tensors(group)
        g = f"{prefix}{group}/"
        manifest["tensors"][group] = {"prefix": g, "sha256": src.manifest["tensors"][group].get("sha256", "")}
        refs.extend(_Ref.lazy(lazy, name, g + name, half) for name in lazy.keys())
    if "members" in src.manifest:
        manifest["members"] = [_embed(m, f"{prefix}members.{i}/", refs, half)
                               for i, m in enumerate(src.members())]
    return manifest


class _Ref:
    """A tensor to write: its name, safetensors dtype code, shape and how to read its bytes."""

    def __init__(self, name, code, shape, load):
        self.name, self.code, self.shape, self.load = name, code, [int(s) for s in shape], load

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_DTYPES[self.code]).itemsize

    @classmethod
    def of(cls, name, value):
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        if arr.dtype not in _CODES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} has no safetensors code")
        return cls(name, _CODES[arr.dtype], arr.shape, lambda: arr)

    @classmethod
    def lazy(cls, tensors, key, name, half):
        with tensors._open() as f:
            sl = f.get_slice(tensors.prefix + key)
            code, shape = sl.get_dtype(), sl.get_shape()
        to16 = half and code in ("F32", "F64")

        def load():
            arr = tensors[key]
            return arr.astype(np.float16) if to16 else arr

        return cls(name, "F16" if to16 else code, shape, load)


def _write_safetensors(path, refs, metadata=None):
    """Write ``refs`` as one safetensors file, tensor by tensor; return its sha256."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for r in refs:
        if r.name in header:
            raise ValueError(f"tensor {r.name!r} twice")
        header[r.name] = {"dtype": r.code, "shape": r.shape, "data_offsets": [offset, offset + r.nbytes]}
        offset += r.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for chunk in (struct.pack("<Q", len(text)), text):
            fh.write(chunk)
            digest.update(chunk)
        for r in refs:
            arr = np.asarray(r.load())
            if list(arr.shape) != r.shape:
                raise ValueError(f"tensor {r.name!r}: shape {list(arr.shape)}, header said {r.shape}")
            flat = np.ascontiguousarray(arr.reshape(-1), dtype=np.dtype(_DTYPES[r.code]).newbyteorder("<"))
            data = memoryview(flat).cast("B") if flat.size else b""
            fh.write(data)
            digest.update(data)
    return digest.hexdigest()
