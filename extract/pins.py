"""Weights files without a published hash: checked for completeness, pinned on first use.

MatConvNet's ``imagenet-vgg-f/m/s.mat`` and the VGG-Face port's ``vgg_face_dag.pth`` carry no
hash in their names and none is published, so nothing vouches for their bytes. Two checks
stand in for one:

completeness (:func:`incomplete`)
    The file's own structure is walked to its end: a MAT-file v5's data elements must end
    exactly at the end of the file, a zip archive (torch's format) must have its central
    directory, a safetensors file its last tensor. A download cut short by a server that sent
    no ``Content-Length`` is refused, never kept.
pinned on first use (:func:`pinned`, :func:`pin`)
    The sha256 of the first complete copy used here is written to ``.featbench-pins.json`` in
    the cache folder. A later file of the same name with another sha256 (replaced by hand or
    by ``featbench weights import``) is reported: refused by ``--weights imagenet``, a
    mismatch for ``featbench weights verify``, refused by ``import`` unless ``--force``
    (which pins the new one).
"""

import json
import struct
import time
import zipfile
from pathlib import Path

from featbench.core.workspace import atomic_write_text, file_lock

PINS_FILE = ".featbench-pins.json"


# --- completeness ----------------------------------------------------------------------------
def incomplete(path):
    """Return why the weights file ``path`` is cut short or not of its format, or None.

    MAT-file v5 (``.mat``), zip (torch's format since 1.6, ``.pth``/``.pt``), safetensors; a
    legacy (pre-1.6) torch pickle has no structure to walk and is not judged here (its load
    fails on a cut file).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    with open(path, "rb") as fh:
        head = fh.read(128)
    if path.suffix.lower() == ".mat":
        return _mat_incomplete(path, head, size)
    if path.suffix.lower() == ".safetensors":
        return _safetensors_incomplete(path, head, size)
    if head.startswith(b"PK"):
        return None if zipfile.is_zipfile(path) else ("cut short: the zip archive has no "
                                                      "central directory at its end")
    return None


#: MAT-file v5 data element types (miINT8 ... miUTF32); 14 = miMATRIX, 15 = miCOMPRESSED
_MAT_TYPES = set(range(1, 19)) - {8, 10, 11}


def _mat_incomplete(path, head, size):
    if len(head) < 128 or not head.startswith(b"MATLAB"):
        return "not a MAT-file (no 'MATLAB' header)"
    if b"MATLAB 7.3" in head[:116]:  # an HDF5 file behind a MAT header
        import h5py

        try:
            with h5py.File(path, "r"):
                return None
        except OSError as exc:
            return f"cut short or damaged (HDF5: {str(exc).splitlines()[0][:120]})"
    endian = "<" if head[126:128] == b"IM" else ">" if head[126:128] == b"MI" else None
    if endian is None:
        return "not a MAT-file v5 (bad endian mark)"
    pos = 128
    with open(path, "rb") as fh:
        while pos < size:
            fh.seek(pos)
            tag = fh.read(8)
            if len(tag) < 8:
                return f"cut short: {size} bytes, a data element starts at {pos}"
            kind, nbytes = struct.unpack(endian + "II", tag)
            if kind >> 16:  # small data element: type and size in 4 bytes, data in 4
                pos += 8
                continue
            if kind not in _MAT_TYPES:
                return f"damaged: unknown data element type {kind} at byte {pos}"
            end = pos + 8 + nbytes
            if kind != 15:
                end += -nbytes % 8  # padded to 8 bytes (compressed elements are not)
            if end > size and not (kind != 15 and pos + 8 + nbytes == size):
                return f"cut short: {size} bytes, its last data element needs {end}"
            pos = end
    return None


def _safetensors_incomplete(path, head, size):
    if len(head) < 8:
        return "cut short: no safetensors header"
    (n,) = struct.unpack("<Q", head[:8])
    if n > min(size, 100 << 20):
        return "not a safetensors file (header length out of range)"
    with open(path, "rb") as fh:
        fh.seek(8)
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "damaged: its safetensors header is not JSON"
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    return None if need <= size else f"cut short: {size} bytes, its tensors need {need}"


# --- pins ------------------------------------------------------------------------------------
def _pins_path(folder):
    return Path(folder) / PINS_FILE


def read_pins(folder):
    """Return ``{file name: {"sha256", "pinned", "how"}}`` of the cache ``folder`` ({} if none)."""
    try:
        pins = json.loads(_pins_path(folder).read_text())
    except (OSError, ValueError):
        return {}
    return pins if isinstance(pins, dict) else {}


def pinned(folder, filename):
    """Return the pin of ``filename`` in ``folder`` (a dict with ``sha256``), or None."""
    pin = read_pins(folder).get(filename)
    return pin if isinstance(pin, dict) and isinstance(pin.get("sha256"), str) else None


def pin(folder, filename, digest, how):
    """Record ``digest`` as the sha256 of ``filename`` in the cache ``folder`` (first use)."""
    path = _pins_path(folder)
    with file_lock(path, what="pinning weights in", keep=False):
        pins = read_pins(folder)
        pins[filename] = {"sha256": digest, "pinned": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "how": how}
        atomic_write_text(path, json.dumps(pins, indent=1, sort_keys=True) + "\n")


def replaced(folder, filename, digest):
    """Return why ``filename`` of sha256 ``digest`` is not the file pinned here, or None."""
    p = pinned(folder, filename)
    if p is None or p["sha256"] == digest:
        return None
    return (f"sha256 {digest[:16]}… differs from the copy pinned on first use here "
            f"({p['sha256'][:16]}…, {p.get('pinned', '?')}, {p.get('how', '?')}): the file was "
            "replaced")
