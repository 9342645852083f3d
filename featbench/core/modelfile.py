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
                                folder; {group: {"prefix": "<g>/", "sha256": hex, "data_sha256":
                                hex}} in an export ("sha256": the digest of the run folder's file,
                                the trained weights' identity; "data_sha256": of the group's
                                tensors' bytes as the export stores them, checked on reading)
    members                     a vote's members: [{"run": name}] in a folder (sibling folders),
                                their whole manifests in an export
    carried                     an export's carried files: {key: {"prefix": "carried.<i>/", "name"}}

Anything else (a pickle, a joblib file, a torch zip checkpoint, an unknown file) is refused by
:func:`sniff` from its first bytes, before any loader sees it, with one line that says how to
re-export (:class:`ModelFormatError`, exit status 2).

Reading validates before anything is used (:mod:`featbench.core.manifest`): the manifest against
its schema, every safetensors header (dtype, shape, offsets inside the file), a run folder's
files inside the folder, a group's bytes against the manifest's sha256 before its first tensor
is read. Tensors are read by this module's own reader at those checked offsets, so a damaged
file is one line, never a safetensors traceback. What each run kind needs of its tensors is
checked in :func:`classify.modelcheck.check_model`.

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
from featbench.core import manifest as schema
from featbench.core.errors import MissingRunError, StoreError
from featbench.core.manifest import REEXPORT, ModelFormatError
from featbench.core.modellimits import MAX_DEPTH, MAX_HEADER
from featbench.core.workspace import atomic_path, atomic_write_text

FORMAT = "featbench-model"
#: the layout this code writes and reads (1 was featbench 0.1's joblib pickle: refused)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: the key of an export's safetensors ``__metadata__`` that holds the manifest
META_KEY = "featbench.manifest"
SUFFIX = ".safetensors"

_REQUIRED = ("run", "kind", "aus", "folds", "weights", "preprocessing", "training_data")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
           "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
#: bytes hashed at a time (a network's file is never held whole to hash it)
_CHUNK = 1 << 22

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "META_KEY", "REEXPORT", "ModelFormatError",
           "ModelFile", "create_manifest", "write_model", "read_manifest", "open_model",
           "export_model", "sniff"]


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
    """Return the manifest of a run folder or an export file (validated; no tensor is read).

    Raises
    ------
    ModelFormatError
        Not a featbench model (a pickle, a torch checkpoint...), one of another format
        version (the message says how to re-export), or a manifest that fails its schema.
    """
    return open_model(path).manifest


def _check_group(group):
    if not group or "/" in group or group.startswith(".") or os.sep in group:
        raise ValueError(f"tensor group {group!r}: a plain name is needed (no '/', no leading '.')")


def _check_manifest(manifest, where, *, export, prefix=""):
    """The manifest once it passes its schema (:mod:`featbench.core.manifest`) and names only
    its own tensors; else one ModelFormatError line naming ``where``."""
    schema.check_manifest(manifest, where, fmt=FORMAT, version=FORMAT_VERSION,
                          made_by=__version__, required=_REQUIRED)
    schema.check_groups(manifest, where, export=export, prefix=prefix)
    schema.check_members(manifest, where, export=export)
    return manifest


# --- reading --------------------------------------------------------------------------------
def sniff(path):
    """Say what ``path`` is from its first bytes: ``"folder"`` or ``"export"``; refuse the rest.

    Only raw bytes and a JSON header are read, so nothing the file carries can run.

    Raises
    ------
    ModelFormatError
        A pickle (featbench 0.1's joblib export or any pickle), a compressed joblib file, a
        PyTorch zip checkpoint, a damaged safetensors file (cut short, offsets past its end,
        an unknown dtype), or any other file: one line naming what it is and how to re-export.
    StoreError
        ``path`` does not exist.
    """
    return _sniff(Path(path))[0]


def _sniff(path):
    """``("folder", None)`` or ``("export", (entries, metadata))`` (see :func:`sniff`)."""
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            old = any(path.glob("*.joblib")) or any(path.glob("*.pt"))
            raise ModelFormatError(
                f"{path}: no {MANIFEST}" + (" (a run saved by featbench 0.1 as pickles, which "
                                           "featbench does not load: train the run again)" if old
                                           else ": not a featbench run folder"))
        return "folder", None
    if not path.is_file():
        raise StoreError(f"{path}: model file does not exist")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if len(head) >= 9 and head[8:9] == b"{":  # safetensors: a length, then its JSON header
                entries, meta = schema.read_header(fh, path.stat().st_size, path)
                if META_KEY in meta:
                    return "export", (entries, meta)
                raise ModelFormatError(
                    f"{path}: a safetensors file without a featbench manifest (network weights?), "
                    f"not a featbench model file; {REEXPORT}")
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
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
    if not head:
        return "an empty file"
    if len(head) < 9:
        return f"a file of {len(head)} bytes (cut short?)"
    return "a file of unknown format"


def _json(text, where):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{where}: its manifest is not valid JSON ({type(exc).__name__}): "
                               f"damaged; {REEXPORT}") from None


def open_model(path):
    """Open a run folder or an export file; return a :class:`ModelFile` (tensors read lazily).

    The manifest passes its schema and each group's safetensors header is checked (see
    :mod:`featbench.core.manifest`) before anything else reads them; a tensor's bytes are
    checked against the manifest's sha256 before its first value is read.

    Raises
    ------
    ModelFormatError
        See :func:`sniff` and :func:`read_manifest`.
    StoreError
        The path does not exist, or its manifest cannot be read.
    """
    return _open(Path(path), 0)


def _open(path, depth):
    kind, header = _sniff(path)
    if kind == "folder":
        where = path / MANIFEST
        try:
            if where.stat().st_size > MAX_HEADER:
                raise ModelFormatError(f"{where}: {where.stat().st_size} bytes, far larger than "
                                       "a model manifest: not one")
            text = where.read_bytes()
        except OSError as exc:
            raise StoreError(f"{where}: unreadable manifest ({exc.strerror or exc})") from None
        manifest = _check_manifest(_json(text, where), where, export=False)
        return ModelFile(path, manifest, where=where, depth=depth)
    entries, meta = header
    manifest = _check_manifest(_json(meta[META_KEY], path), path, export=True)
    return ModelFile(path, manifest, export=True, entries=entries, depth=depth)


class ModelFile:
    """An opened model: its manifest, and its tensors read on demand.

    Attributes
    ----------
    path : Path
        The run folder or the export file.
    manifest : dict
        Validated by :func:`open_model`.
    is_export : bool
    where : str
        What messages name: the export file (and the member), or the run folder.
    """

    def __init__(self, path, manifest, *, export=False, entries=None, prefix="", where=None,
                 depth=0):
        self.path, self.manifest, self.is_export = Path(path), manifest, bool(export)
        self.where, self.prefix, self.depth = str(where or path), prefix, depth
        self._headers, self._verified, self._members = {}, set(), None
        self._entries = entries or {}
        if self.is_export:
            self._headers = _export_groups(self, entries)

    def __repr__(self):
        return f"ModelFile({str(self.path)!r}, run={self.manifest.get('run')!r})"

    @property
    def groups(self):
        """The names of the tensor groups."""
        return list(self.manifest.get("tensors", {}))

    def _file(self, group):
        return self.path if self.is_export else self.path / f"{group}{SUFFIX}"

    def headers(self, group):
        """``{name: Entry}`` of the group's tensors (dtype, shape, offsets); no data is read.

        Raises
        ------
        StoreError
            No such group, or its file is missing.
        ModelFormatError
            Its file is damaged or lies outside the run folder.
        """
        if group not in self.manifest.get("tensors", {}):
            raise StoreError(f"{self.where}: model {self.manifest.get('run')} has no tensors "
                             f"{group!r} (it has {', '.join(self.groups) or 'none'})")
        if group not in self._headers:
            self._headers[group] = _folder_group(self, group)
        return self._headers[group]

    def verify(self, group=None):
        """Check the bytes of ``group`` (None: every group) against the manifest's sha256.

        A run folder's file must have the digest its manifest records; an export's group
        the digest of its tensors' bytes (``data_sha256``, written by :func:`export_model`;
        older exports lack it and are checked by their headers only).

        Raises
        ------
        ModelFormatError
            A file changed or damaged since it was written.
        """
        for g in self.groups if group is None else [group]:
            if g in self._verified:
                continue
            entries, entry = self.headers(g), self.manifest["tensors"][g]
            if not self.is_export:
                _check_digest(self._file(g), [(0, None)], entry["sha256"],
                              f"{self._file(g)}: its sha256 is not the one the run's manifest "
                              "records: changed or damaged since the run was saved (train the "
                              "run again)")
            elif entry.get("data_sha256"):
                spans = sorted((e.start, e.end) for e in entries.values())
                _check_digest(self.path, spans, entry["data_sha256"],
                              f"{self.where}: the tensors of group {g} do not match their "
                              "sha256 in the manifest: a damaged file (copy it again, or "
                              "re-export the run)")
            self._verified.add(g)

    def tensors(self, group):
        """Return the group's tensors as a lazy read-only mapping name -> ndarray (checked
        against the manifest's sha256 on first use).

        Raises
        ------
        StoreError
            No such group, or its file is missing.
        ModelFormatError
            Its bytes are not the ones the manifest records.
        """
        entries = self.headers(group)
        self.verify(group)
        return LazyTensors(self._file(group), entries, self.where)

    def members(self):
        """A vote's members as ModelFiles (sibling run folders, or embedded in an export)."""
        if self._members is None:
            self._members = [self._member(i, m) for i, m in enumerate(self.manifest.get("members") or [])]
        return self._members

    def _member(self, i, m):
        if self.depth >= MAX_DEPTH:
            raise ModelFormatError(f"{self.where}: votes nested deeper than {MAX_DEPTH}")
        if self.is_export:
            where = f"{self.path} (member {i})"
            prefix = f"{self.prefix}members.{i}/"
            return ModelFile(self.path, _check_manifest(m, where, export=True, prefix=prefix),
                             export=True, entries=self._entries, prefix=prefix, where=where,
                             depth=self.depth + 1)
        folder = self.path.parent / m["run"]
        if not folder.is_dir():  # said as the ensemble's, not as a file the user never named
            raise MissingRunError(
                f"{self.path}: ensemble {self.manifest.get('run')} votes with {m['run']}, whose "
                f"model folder is no longer in {self.path.parent}: run it again, or featbench "
                "ensemble with the runs there are")
        return _open(folder, self.depth + 1)

    def carried(self, key):
        """``(file name, bytes)`` of a file an export carries under ``key`` (None when not carried)."""
        entry = (self.manifest.get("carried") or {}).get(str(key))
        if entry is None:
            return None
        name = entry["prefix"] + "bytes"
        return entry["name"], LazyTensors(self.path, {name: self._entries[name]}, self.where)[name].tobytes()


def _export_groups(model, entries):
    """Each group's entries of an export (names without the group's prefix); a tensor under
    the model's prefix that belongs to none of its groups, members or carried files is refused."""
    prefix, out, seen = model.prefix, {}, set()
    for group in model.groups:
        start = f"{prefix}{group}/"
        out[group] = {k[len(start):]: e for k, e in entries.items()
                      if k.startswith(start) and "/" not in k[len(start):]}
        seen.update(start + k for k in out[group])
    for key, c in (model.manifest.get("carried") or {}).items():
        e = entries.get(c["prefix"] + "bytes")
        if e is None or e.dtype != "U8" or len(e.shape) != 1:
            raise ModelFormatError(f"{model.where}: the carried file {c['name']!r} has no bytes "
                                   f"(no U8 tensor {c['prefix']}bytes): damaged; {REEXPORT}")
        seen.add(c["prefix"] + "bytes")
    members = [f"{prefix}members.{i}/" for i in range(len(model.manifest.get("members") or []))]
    stray = [k for k in entries if k.startswith(prefix) and k not in seen
             and not any(k.startswith(m) for m in members)]
    if stray:
        raise ModelFormatError(f"{model.where}: tensor {stray[0][:80]!r} belongs to no group of "
                               f"the manifest: damaged; {REEXPORT}")
    return out


def _folder_group(model, group):
    """The checked header of a run folder's ``<group>.safetensors`` (inside the folder)."""
    path = model.path / f"{group}{SUFFIX}"
    if path.is_symlink() and path.resolve().parent != model.path.resolve():
        raise ModelFormatError(f"{path}: a link out of the run folder; a run's files stay in it")
    if not path.is_file():
        raise StoreError(f"{path}: tensor file of run {model.manifest.get('run')} is missing "
                         "(train the run again)")
    try:
        with open(path, "rb") as fh:
            entries, _ = schema.read_header(fh, path.stat().st_size, path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
    bad = [k for k in entries if "/" in k or not k]
    if bad:
        raise ModelFormatError(f"{path}: tensor name {bad[0][:80]!r}: a group's names hold no '/'")
    return entries


def _check_digest(path, spans, want, message):
    """sha256 of the byte ranges ``spans`` ((start, end); end None: to the file's end) of
    ``path``, read in chunks; ModelFormatError(``message``) unless it is ``want``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for start, end in spans:
                fh.seek(start)
                left = None if end is None else end - start
                while left is None or left > 0:
                    chunk = fh.read(_CHUNK if left is None else min(_CHUNK, left))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left = None if left is None else left - len(chunk)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if digest.hexdigest() != want:
        raise ModelFormatError(message)


class LazyTensors:
    """A read-only mapping of one tensor group; each ``[name]`` reads that tensor only.

    Parameters
    ----------
    path : Path
        The safetensors file.
    entries : dict of str -> Entry
        The group's checked header entries (name -> dtype, shape, absolute offsets).
    where : str
        What messages name.
    """

    def __init__(self, path, entries, where=None):
        self.path, self.entries, self.where = Path(path), entries, str(where or path)

    def keys(self):
        return sorted(self.entries)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, name):
        return name in self.entries

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, name):
        e = self.entries[name]  # KeyError: no such tensor
        dtype = np.dtype(_DTYPES[e.dtype]).newbyteorder("<")
        count = int(np.prod(e.shape, dtype=np.int64))
        try:
            arr = np.fromfile(self.path, dtype=dtype, count=count, offset=e.start)
            return arr.reshape(e.shape).astype(dtype.newbyteorder("="), copy=False)
        except (OSError, ValueError) as exc:  # the file changed since its header was checked
            raise ModelFormatError(f"{self.where}: tensor {name!r} cannot be read "
                                   f"({type(exc).__name__}): cut short since it was opened?") from None

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def to_dict(self):
        """Every tensor of the group, read now: ``{name: ndarray}``."""
        return dict(self.items())


# --- exporting --------------------------------------------------------------------------------
def export_model(model, out, *, half=False, carry=None):
    """Write ``model`` (a run folder, or its :class:`ModelFile`) to ONE export file ``out``.

    Tensors are copied one at a time (memory stays at the largest tensor); the file is written
    through a temporary name and renamed, so a crash never leaves half a file. Each group's
    entry records the sha256 of its tensors' bytes as written (``data_sha256``), which
    :meth:`ModelFile.verify` checks on the receiving side.

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
        _write_safetensors(tmp, refs, lambda: {META_KEY: json.dumps(manifest)})
    return Path(out)


def _embed(src, prefix, refs, half):
    """Return ``src``'s manifest for an export, its tensors appended to ``refs`` under ``prefix``."""
    manifest = dict(src.manifest, tensors={})
    for group in src.groups:
        lazy = src.tensors(group)  # checked against its sha256: a damaged run is not exported
        g = f"{prefix}{group}/"
        entry = {"prefix": g, "sha256": src.manifest["tensors"][group]["sha256"],
                 "data_sha256": "0" * 64}  # filled once the group's bytes are written
        manifest["tensors"][group] = entry
        sink = (entry, hashlib.sha256())
        refs.extend(_Ref.lazy(lazy, name, g + name, half, sink) for name in lazy.keys())
    if "members" in src.manifest:
        manifest["members"] = [_embed(m, f"{prefix}members.{i}/", refs, half)
                               for i, m in enumerate(src.members())]
    return manifest


class _Ref:
    """A tensor to write: its name, safetensors dtype code, shape, how to read its bytes and
    the (manifest entry, hasher) whose ``data_sha256`` its bytes go into (an export's)."""

    def __init__(self, name, code, shape, load, sink=None):
        self.name, self.code, self.shape, self.load = name, code, [int(s) for s in shape], load
        self.sink = sink

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
    def lazy(cls, tensors, key, name, half, sink=None):
        e = tensors.entries[key]
        to16 = half and e.dtype in ("F32", "F64")

        def load():
            arr = tensors[key]
            return arr.astype(np.float16) if to16 else arr

        return cls(name, "F16" if to16 else e.dtype, e.shape, load, sink)


def _write_safetensors(path, refs, metadata=None):
    """Write ``refs`` as one safetensors file, tensor by tensor; return its sha256.

    ``metadata``: a dict, or a callable returning it, called again once the data is written
    when refs feed ``data_sha256`` digests into it: the header is then rewritten in place
    (hex digests replace placeholders of the same length).
    """
    header, offset = {}, 0
    for r in refs:
        if r.name in header:
            raise ValueError(f"tensor {r.name!r} twice")
        header[r.name] = {"dtype": r.code, "shape": r.shape, "data_offsets": [offset, offset + r.nbytes]}
        offset += r.nbytes
    text = _header_bytes(header, metadata)
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
            if r.sink is not None:
                r.sink[1].update(data)
        sinks = {id(r.sink): r.sink for r in refs if r.sink is not None}
        if sinks:
            for entry, hasher in sinks.values():
                entry["data_sha256"] = hasher.hexdigest()
            again = _header_bytes(header, metadata)
            if len(again) != len(text):  # cannot happen: digests replace same-length placeholders
                raise ValueError("the header changed length when its digests were filled in")
            fh.seek(8)
            fh.write(again)
    return digest.hexdigest()


def _header_bytes(header, metadata):
    meta = metadata() if callable(metadata) else metadata
    if meta:
        header = {"__metadata__": {str(k): str(v) for k, v in meta.items()}, **header}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
