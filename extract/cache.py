"""The weights cache as users manage it: ``featbench weights list | where | fetch | verify | import``.

``import`` is how air-gapped clusters bring weights in: a file, a folder or a zip / wheel
archive holding weight files; each weight file (``.pth .pt .mat .safetensors .bin .ckpt``) is
recognised by its name against the catalogue (every registered network's file and every
torchvision classification weights file), copied into the cache through a part file while its
sha256 is computed, and kept only when the hash matches the published one. Anything
unrecognised or mismatched is refused with its reason and leaves nothing behind.
"""

import zipfile
from dataclasses import dataclass
from pathlib import Path

from featbench.core.errors import WeightsError
from featbench.core.workspace import remove_stale_temps

from extract.catalog import entry_for, recognise, recognised_files, registered_entries
from extract.download import fetch, file_digest, mirrored
from extract.pins import incomplete, pin, pinned, replaced
from extract.registry import get_spec
from extract.weights import checkpoints_dir, load_network, pretrained_path

WEIGHT_SUFFIXES = (".pth", ".pt", ".mat", ".safetensors", ".bin", ".ckpt")
ARCHIVE_SUFFIXES = (".zip", ".whl")


@dataclass
class Outcome:
    """What happened to one file: ``status`` (ok, cached, imported, refused, mismatch,
    unpinned, unknown, downloaded, missing), the catalogue entry when known, and a note."""

    name: str
    status: str
    entry: object = None
    path: object = None
    sha256: str = ""
    note: str = ""

    def line(self):
        what = f" = {self.entry.label}" if self.entry else ""
        digest = f" sha256:{self.sha256[:16]}…" if self.sha256 else ""
        where = f" -> {self.path}" if self.path else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.status:<10} {self.name}{what}{digest}{where}{note}"


def resolve(name, tag=None):
    """Return the catalogue entry and spec of a network name (``alexnet``, ``tv:mobilenet_v2``)."""
    spec = get_spec(name)
    return entry_for(spec, tag), spec


# --- list / where -----------------------------------------------------------------------------
def list_weights():
    """Return one dict per known weights file: the registered networks' own files, then any
    other recognised file found in the cache (e.g. an imported ``tv:`` file)."""
    rows, seen = [], set()
    for entry in registered_entries():
        path, cached = pretrained_path(get_spec(entry.model))
        rows.append(_row(entry, path, cached, mirrored))
        seen.add(entry.filename)
    folder = checkpoints_dir()
    if folder.is_dir():
        known = recognised_files()
        for path in sorted(folder.iterdir()):
            if path.name in known and path.name not in seen:
                rows.append(_row(known[path.name], path, True, mirrored))
    return rows


def _row(entry, path, cached, mirrored):
    size = (Path(path).stat().st_size / 1e6 if cached else entry.size_mb) if path else None
    return {"model": entry.model, "tag": entry.tag, "file": entry.filename,
            "cached": bool(cached), "size_mb": round(size, 1) if size else None,
            "path": str(path) if path else "",
            "source": mirrored(entry.urls[0]) if entry.urls else "shipped with its package",
            "hash": ("sha256 " + entry.sha256[:12] + "…" if entry.sha256 else
                     f"sha256 prefix {entry.sha256_prefix}" if entry.sha256_prefix else
                     "not pinned" if entry.urls else "package"),
            "licence": entry.licence}


def where(name, tag=None):
    """Return ``(path, exists)`` of the file ``--model NAME --weights TAG`` reads."""
    resolve(name, tag)  # no published weights / unknown tag: WeightsError
    return pretrained_path(get_spec(name), tag)


# --- fetch / verify ---------------------------------------------------------------------------
def fetch_weights(names, tag=None, *, progress=True):
    """Download (or find cached) the file of every network in ``names``; return Outcomes.

    Raises
    ------
    WeightsError
        After trying all: one line naming each file that could not be had.
    """
    out, failed = [], []
    for name in names:
        entry, spec = resolve(name, tag)
        try:
            if entry.source in ("timm", "dlib"):  # their own caches: loading fetches them
                net = load_network(spec, tag or "imagenet") if entry.source == "timm" else None
                path, exists = where(name, tag)
                out.append(Outcome(entry.filename, "cached" if exists else "missing", entry,
                                   path, note=str(net.weights_id) if net else ""))
                continue
            path, digest, downloaded = fetch(entry, progress=progress)
        except WeightsError as exc:
            failed.append(str(exc))
            out.append(Outcome(entry.filename, "missing", entry, note=str(exc)))
            continue
        out.append(Outcome(entry.filename, "downloaded" if downloaded else "cached", entry, path,
                           digest, "" if entry.pinned else "no pinned hash: trust on first use"))
    if failed:
        raise WeightsError(f"{len(failed)} of {len(names)} weights files could not be had: "
                           + " | ".join(failed))
    return out


def verify_cache(names=(), tag=None):
    """Check cached files (``names``' files, or every recognised file in the cache).

    A file with a published hash is checked against it; one without, against the sha256 pinned
    on its first use here and for completeness (:mod:`extract.pins`). The temporary files of
    downloads that were killed are removed (outcome ``removed``).
    """
    folder = checkpoints_dir()
    out = [Outcome(p.name, "removed", None, p, note="leftover of an interrupted download")
           for p in remove_stale_temps(folder)] if folder.is_dir() else []
    if names:
        targets = []
        for name in names:
            entry, _ = resolve(name, tag)
            path, _ = where(name, tag)
            targets.append((entry, Path(path)))
    else:
        known = recognised_files()
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        targets = [(known.get(p.name), p) for p in files if not p.name.startswith(".")]
    for entry, path in targets:
        if entry is None:
            out.append(Outcome(path.name, "unknown", None, path, note="not in the registry"))
        elif not path.is_file():
            out.append(Outcome(entry.filename, "missing", entry, path))
        else:
            out.append(_verify_one(entry, path))
    return out


def _verify_one(entry, path):
    digest = file_digest(path)
    bad = entry.check(digest)
    if bad or entry.pinned:
        return Outcome(entry.filename, "mismatch" if bad else "ok", entry, path, digest, bad or "")
    bad = replaced(path.parent, entry.filename, digest)
    if bad:
        return Outcome(entry.filename, "mismatch", entry, path, digest, bad)
    cut = incomplete(path)
    if cut:
        return Outcome(entry.filename, "incomplete", entry, path, digest, cut)
    if pinned(path.parent, entry.filename):
        return Outcome(entry.filename, "ok", entry, path, digest,
                       "no published hash: matches the sha256 pinned on first use here")
    return Outcome(entry.filename, "unpinned", entry, path, digest,
                   "no published hash, not used yet: complete; pinned on first use")


# --- import -----------------------------------------------------------------------------------
def import_weights(paths, *, progress=True, force=False):
    """Copy the recognised, hash-verified weight files found in ``paths`` into the cache.

    A file without a published hash must be complete, and must be the file pinned here on
    first use, if one was: another is refused unless ``force`` (which pins it instead).

    Returns
    -------
    list of Outcome
        ``imported`` (a file already in the cache is replaced by the verified copy) or
        ``refused`` (with the reason).

    Raises
    ------
    WeightsError
        A path that does not exist, or no weight file found at all.
    """
    out = []
    for path in map(Path, paths):
        if not path.exists():
            raise WeightsError(f"{path}: no such file or folder to import weights from")
        found = list(_candidates(path))
        if not found:
            raise WeightsError(f"{path}: holds no weight file ({', '.join(WEIGHT_SUFFIXES)}), "
                               "nothing imported")
        for name, opener, size in found:
            out.append(_import_one(name, opener, size, progress, force))
    return out


def _candidates(path):
    """Yield ``(file name, opener, size)`` of every weight file in a file, folder or archive."""
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            if sub.suffix.lower() in WEIGHT_SUFFIXES + ARCHIVE_SUFFIXES:
                yield from _candidates(sub)
    elif path.suffix.lower() in ARCHIVE_SUFFIXES and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist()
                       if not m.is_dir() and Path(m.filename).suffix.lower() in WEIGHT_SUFFIXES]
        for member in members:
            yield Path(member.filename).name, _zip_opener(path, member.filename), member.file_size
    else:
        yield path.name, lambda p=path: open(p, "rb"), path.stat().st_size


def _zip_opener(archive, member):
    import contextlib

    @contextlib.contextmanager
    def opener():
        with zipfile.ZipFile(archive) as zf, zf.open(member) as fh:
            yield fh

    return opener


def _import_one(name, opener, size, progress, force=False):
    from extract.download import FetchFailed, store_verified, where

    entry = recognise(name)
    if entry is None:
        return Outcome(name, "refused", note="its name is no weights file featbench's registry "
                                             "knows (featbench weights list)")
    target = where(entry)

    def check(digest):
        if entry.pinned:
            return entry.check(digest)
        bad = None if force else replaced(target.parent, entry.filename, digest)
        return bad and f"{bad} (featbench weights import --force pins this one instead)"

    try:
        with opener() as fh:
            digest = store_verified(fh, target, check=check, progress=progress, total=size,
                                    validate=None if entry.pinned else incomplete)
    except FetchFailed as exc:
        return Outcome(name, "refused", entry, note=str(exc))
    if not entry.pinned:
        pin(target.parent, entry.filename, digest, f"imported from {name}")
    return Outcome(name, "imported", entry, target, digest,
                   "" if entry.pinned else "no published hash: pinned here")
