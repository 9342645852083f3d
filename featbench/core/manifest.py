"""The schema of a featbench model file: its manifest, its safetensors headers, its tensors.

One validation of a model file (:mod:`featbench.core.modelfile` runs it on every run folder
and export it opens, before any value of it is used): a pydantic schema of the manifest
(types, ranges, lengths: :func:`check_manifest`), a schema of each safetensors header (dtype,
shape, offsets that lie inside the file, back to back: :func:`read_header`), and what a run
kind says its tensors must be (:class:`Tensor` specs, matched by :func:`match_tensors`:
names, dtypes, shapes whose symbols, such as the code dimensions ``d``, must agree across the
run). Every failure is one :class:`ModelFormatError` line that names the file.

Sizes a manifest gives are bounded (:mod:`featbench.core.modellimits`), because each one
decides an allocation somewhere: a face side (``alignment.size``, ``input_size``: 16 - 1024
pixels, as ``featbench finetune --input-size`` allows), code dimensions, counts of AUs, folds,
units and members. A tensor's bytes are bounded by the file that holds them: its
shape must account for exactly the bytes between its offsets, and the offsets must lie in the
file, so no tensor allocates more than the file's size.

Conventions: a *group* is a unit's tensors (``AU01``, ``model``, ``AU01-<fold>``), one file
``<group>.safetensors`` in a run folder, the names ``<prefix><group>/<name>`` in an export.
The schema accepts keys it does not know (a later featbench of the same format version may
add some); it never coerces a value of the wrong type (``"2"`` is not the number 2).
"""

import json
import math
import re
from dataclasses import dataclass

from featbench.core.errors import StoreError
from featbench.core.modellimits import (AU_PATTERN, DTYPE_SIZES, FLOATS, GROUP_PATTERN,
                                        MAX_HEADER, NAME_PATTERN)

REEXPORT = ("re-export the run with this featbench (featbench export RUN --out FILE.safetensors; "
            "a run saved by featbench 0.1 must be trained again first)")


class ModelFormatError(StoreError):
    """A file that is not a featbench model, or one whose content does not hold together."""


def _pydantic():
    """The schema models (:mod:`featbench.core._schema`: pydantic is imported only when a model
    is read, so ``featbench --help`` stays instant)."""
    from featbench.core import _schema

    return {"Manifest": _schema.Manifest, "MemberRef": _schema.MemberRef,
            "HeaderEntry": _schema.HeaderEntry}


def _first_error(exc):
    """One line of a pydantic ValidationError: where its first problem is and what it is."""
    errors = exc.errors(include_url=False)
    e = errors[0]
    loc = ".".join(str(p) for p in e.get("loc", ()))
    msg = str(e.get("msg", "invalid")).replace("Value error, ", "")
    if e.get("type") == "string_pattern_mismatch":
        msg = "not " + _PATTERN_WORDS.get((e.get("ctx") or {}).get("pattern"), "a valid name")
    got = e.get("input")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = (f"{loc}: " if loc else "") + msg + (
        "" if isinstance(got, dict) or not loc else f", got {_short(got)}") + more
    return " ".join(text.split())


#: what each name pattern of the schema asks for, in words
_PATTERN_WORDS = {AU_PATTERN: "an AU name (AU01, AU02...)",
                  NAME_PATTERN: "a plain name (no folder, no leading dot)",
                  GROUP_PATTERN: "a tensor group's name (letters, digits, _ + = - .)",
                  r"^[0-9a-f]{64}$": "a sha256 (64 lowercase hex digits)",
                  r"^[a-z][a-z0-9_]{0,60}_$": "a fitted attribute's name (scikit-learn's: "
                                              "lowercase, ending with _)"}


def validate(model, value, where, what):
    """Validate ``value`` with the named schema; ModelFormatError (one line naming ``where``)."""
    from pydantic import ValidationError

    try:
        return _pydantic()[model].model_validate(value)
    except ValidationError as exc:
        raise ModelFormatError(f"{where}: {what}: {_first_error(exc)}") from None


# --- the manifest -----------------------------------------------------------------------------
def check_manifest(manifest, where, *, fmt, version, made_by, required=()):
    """Return ``manifest`` once it is a valid manifest of format ``fmt``, version ``version``
    (``task`` and ``settings`` filled in with their defaults where absent).

    Parameters
    ----------
    manifest : object
        The parsed JSON.
    where : str or Path
        The file (named first in every message).
    fmt, version : str, int
        The format name and version this featbench reads.
    made_by : str
        This featbench's version (for the message about another format version).
    required : tuple of str
        Keys whose absence means a damaged file (said first, in those words).

    Raises
    ------
    ModelFormatError
        Not a featbench manifest, another format version, or any value of a wrong type,
        out of its range, or inconsistent with the rest: one line naming ``where``.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ModelFormatError(f"{where}: not a featbench model manifest; {REEXPORT}")
    have = manifest.get("format_version")
    if not isinstance(have, int) or isinstance(have, bool):
        raise ModelFormatError(
            f"{where}: damaged model manifest: format_version is {_short(have)} (a "
            f"{type(have).__name__}), not a whole number: a damaged or hand-edited file; "
            f"{REEXPORT}")
    if have != version:
        made = manifest.get("featbench_version", "?")
        raise ModelFormatError(
            f"{where}: model format {have} (featbench {str(made)[:40]}); this featbench "
            f"{made_by} reads format {version}: " + ("upgrade featbench" if have > version
                                                    else REEXPORT))
    missing = [k for k in required if k not in manifest]
    if missing:  # a valid header over an empty or cut run
        raise ModelFormatError(f"{where}: damaged featbench model file: its manifest lacks "
                               f"{', '.join(missing)}; {REEXPORT}")
    validate("Manifest", manifest, where, "invalid model manifest")
    manifest.setdefault("task", "occurrence")  # what the schema's defaults mean, for readers
    manifest.setdefault("settings", {})
    return manifest


def check_members(manifest, where, *, export):
    """A folder vote's member references (``[{"run": name}]``, sibling folders): their names."""
    members = manifest.get("members")
    if members is None or export:
        return []
    return [validate("MemberRef", m, where, f"invalid model manifest: members.{i}").run
            for i, m in enumerate(members)]


def check_groups(manifest, where, *, export, prefix=""):
    """Each tensor group's entry names its own file (a folder) or its own prefix (an export).

    A run folder's ``file`` must be ``<group>.safetensors`` (so no entry reaches outside the
    folder, and no group reads another's tensors); an export's ``prefix`` must be
    ``<member prefix><group>/``, and each carried file's ``carried.<i>/``.
    """
    for group, entry in manifest["tensors"].items():
        want = f"{prefix}{group}/" if export else f"{group}.safetensors"
        got = entry.get("prefix") if export else entry.get("file")
        if got != want:
            key = "prefix" if export else "file"
            raise ModelFormatError(f"{where}: invalid model manifest: tensors.{group}.{key} is "
                                   f"{_short(got)}, not {want!r}: a group reads only its own "
                                   "tensors")
    for i, (key, entry) in enumerate((manifest.get("carried") or {}).items()):
        if not export or prefix:
            raise ModelFormatError(f"{where}: invalid model manifest: carried files belong to "
                                   "the top of an export")
        if entry.get("prefix") != f"carried.{i}/":
            raise ModelFormatError(f"{where}: invalid model manifest: carried.{_short(key)}.prefix "
                                   f"is {_short(entry.get('prefix'))}, not 'carried.{i}/'")


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- safetensors headers ----------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file, as its header describes it (offsets from the file's start)."""

    dtype: str
    shape: tuple
    start: int
    end: int

    @property
    def nbytes(self):
        return self.end - self.start


def read_header(fh, size, where):
    """Return ``(entries, metadata)`` of the safetensors file open as ``fh`` (``size`` bytes).

    Only the header is read. Every entry is checked: a known dtype, a shape of at most
    :data:`MAX_RANK` non-negative sides whose bytes equal its offsets' span, offsets inside the
    file and back to back from the end of the header (as safetensors writes them).

    Raises
    ------
    ModelFormatError
        A cut or damaged file: one line naming ``where`` and what is wrong.
    """
    fh.seek(0)
    head = fh.read(8)
    if len(head) < 8:
        raise ModelFormatError(f"{where}: damaged safetensors file: {size} bytes, shorter than "
                               "its header")
    n = int.from_bytes(head, "little")
    if n > min(MAX_HEADER, size - 8):
        raise ModelFormatError(f"{where}: damaged safetensors file: its header claims {n} bytes, "
                               f"the file has {size - 8} after the length (cut short?)")
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{where}: damaged safetensors file: its header is not JSON "
                               f"({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{where}: damaged safetensors file: its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFormatError(f"{where}: damaged safetensors file: __metadata__ is not a map of "
                               "strings")
    return _entries(header, 8 + n, size, where), meta


def _entries(header, base, size, where):
    """The header's tensors as :class:`Entry` (absolute offsets), checked back to back."""
    out = {}
    for name, raw in header.items():
        e = validate("HeaderEntry", raw, where, f"damaged safetensors file: tensor {_short(name)}")
        if e.dtype not in DTYPE_SIZES:
            raise ModelFormatError(f"{where}: damaged safetensors file: tensor {_short(name)} has "
                                   f"the unknown dtype {_short(e.dtype)}")
        begin, end = e.data_offsets
        need = math.prod(e.shape) * DTYPE_SIZES[e.dtype]
        if end - begin != need:
            raise ModelFormatError(f"{where}: damaged safetensors file: tensor {_short(name)} of "
                                   f"shape {e.shape} {e.dtype} needs {need} bytes, its offsets "
                                   f"span {end - begin}")
        if base + end > size:
            raise ModelFormatError(f"{where}: damaged safetensors file: tensor {_short(name)} ends "
                                   f"at byte {base + end}, past the end of the file ({size} bytes; "
                                   "cut short?)")
        out[name] = Entry(e.dtype, tuple(e.shape), base + begin, base + end)
    at = base
    for name, e in sorted(out.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if e.start != at:
            raise ModelFormatError(f"{where}: damaged safetensors file: tensor {_short(name)} "
                                   f"starts at byte {e.start}, expected {at} (overlapping or "
                                   "gapped offsets)")
        at = e.end
    if at != size:
        raise ModelFormatError(f"{where}: damaged safetensors file: {size - at} bytes after its "
                               "last tensor")
    return out


# --- what a run kind needs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    """What one tensor of a group must be.

    Attributes
    ----------
    shape : tuple or None
        Each side an int, or a symbol (``"d"``) that must take one value everywhere the run
        uses it (a symbol bound beforehand, from the manifest, must equal that value); None:
        any shape (still bounded by the file's bytes).
    dtypes : frozenset of str
        The safetensors dtype codes allowed (floats by default; ``export --half`` stores F16).
    required : bool
    """

    shape: tuple
    dtypes: frozenset = FLOATS
    required: bool = True


def match_tensors(where, group, have, want, bound, *, extra=False):
    """Check the tensors ``have`` of ``group`` against what its kind needs, ``want``.

    Parameters
    ----------
    where : str or Path
    group : str
    have : dict of str -> Entry
    want : dict of str -> Tensor
    bound : dict of str -> int
        Symbols bound so far (updated here).
    extra : bool
        Whether tensors ``want`` does not name are allowed.

    Raises
    ------
    ModelFormatError
        A tensor missing, unexpected, of another dtype, or of another shape.
    """
    missing = [n for n, t in want.items() if t.required and n not in have]
    if missing:
        raise ModelFormatError(f"{where}: tensor group {group} lacks {_short(missing[0])} "
                               f"({len(missing)} missing): damaged, or not a run of its kind")
    unknown = [n for n in have if n not in want]
    if unknown and not extra:
        raise ModelFormatError(f"{where}: tensor group {group} holds {_short(unknown[0])}, which "
                               "its run kind does not use")
    for name, spec in want.items():
        if name in have:
            _match_one(where, f"{group}/{name}", have[name], spec, bound)


def _match_one(where, what, entry, spec, bound):
    if entry.dtype not in spec.dtypes:
        raise ModelFormatError(f"{where}: tensor {_short(what)} is {entry.dtype}; its run kind "
                               f"needs {'/'.join(sorted(spec.dtypes))}")
    shape = entry.shape
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise ModelFormatError(f"{where}: tensor {_short(what)} has shape {list(shape)}; its run "
                               f"kind needs {_shape_text(spec.shape, bound)}")
    for side, want in zip(shape, spec.shape):
        if isinstance(want, str):
            want = bound.setdefault(want, side)
        if side != want:
            raise ModelFormatError(f"{where}: tensor {_short(what)} has shape {list(shape)}; its "
                                   f"run kind needs {_shape_text(spec.shape, bound)}")


def _shape_text(shape, bound):
    return "[" + ", ".join(f"{s}={bound[s]}" if isinstance(s, str) and s in bound else str(s)
                           for s in shape) + "]"


def check_symbol(where, name, value, bound, *, what, limit=None):
    """Bind (or compare) a symbol from the manifest, e.g. an LSTM unit's ``dims``: one value
    per run, at most ``limit``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ModelFormatError(f"{where}: invalid model manifest: {what} is {_short(value)}, not "
                               "a whole number")
    if limit is not None and value > limit:
        raise ModelFormatError(f"{where}: invalid model manifest: {what} is {value}, above "
                               f"the largest featbench reads ({limit})")
    have = bound.setdefault(name, value)
    if have != value:
        raise ModelFormatError(f"{where}: {what} is {value}, but the run's tensors have "
                               f"{name}={have}")
    return value


def plain_names(values, where, what):
    """``values`` if each is a plain name (no folder, no ``..``): a run folder's sibling runs."""
    for v in values:
        if not isinstance(v, str) or not re.match(NAME_PATTERN, v) or v in (".", ".."):
            raise ModelFormatError(f"{where}: invalid model manifest: {what} {_short(v)} is not "
                                   "a plain name")
    return values
