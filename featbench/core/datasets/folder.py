"""Reader of a user's own images described by a CSV manifest.

``<root>/manifest.csv`` (or ``--root`` naming the CSV itself) has the columns ``image`` (a path
relative to the manifest's folder, or absolute) and ``subject``, then one column per AU in any
spelling (``AU1``, ``au01``, ``AU01``) holding 1 (present), 0 (absent) or empty / -1
(unlabelled). Optional columns: ``video``, ``frame``, ``split`` and free-text columns such as
``expression`` or ``view``, which are kept. Images that do not exist are skipped and counted.
Such photos have no landmarks: alignment detects them.

Intensities: a column ``AU12_int`` (or OpenFace's spelling ``AU12_r``) holds the AU's intensity,
an integer 0-5 (0 absent, 1-5 FACS A-E), empty or -1 when unknown. An AU with an intensity column
and no occurrence column is present when its intensity is >= ``threshold`` (2, as DISFA's); one
with both keeps the occurrence column as written.
"""

import csv
import re
from collections import Counter
from pathlib import Path

from featbench.core.aus import au_name
from featbench.core.errors import LabelFileError, LayoutError, UsageError
from featbench.core.frames import BASE_COLUMNS, MAX_FRAME, FrameTable, build_frames
from featbench.core.datasets._text import parse_label, read_lines

MANIFEST = "manifest.csv"
_INTENSITY_RE = re.compile(r"^(.+?)_(?:int|r)$", re.IGNORECASE)


def _label_columns(header):
    """Return ``({column: AU} of occurrence, {column: AU} of intensity, free-text columns)``."""
    au_cols, int_cols, extra = {}, {}, []
    for col in header:
        if col in ("image", "subject") or col in BASE_COLUMNS:
            continue
        m = _INTENSITY_RE.match(col)
        try:
            if m:
                int_cols[col] = au_name(m.group(1))
            else:
                au_cols[col] = au_name(col)
        except UsageError:
            extra.append(col)
    return au_cols, int_cols, extra


def _row_labels(rec, au_cols, int_cols, threshold, where):
    """Return ``{AU: occurrence, AU_int: intensity}`` of one manifest line."""
    out = {}
    for col, au in int_cols.items():
        raw = (rec[col] or "").strip()
        out[f"{au}_int"] = -1 if raw == "" else parse_label(
            raw, allowed=(-1, 0, 1, 2, 3, 4, 5), where=f"{where}: {col}",
            expect="an intensity 0-5, -1 or empty")
        out[au] = -1 if out[f"{au}_int"] < 0 else int(out[f"{au}_int"] >= threshold)
    for col, au in au_cols.items():
        raw = (rec[col] or "").strip()
        out[au] = -1 if raw == "" else parse_label(
            raw, allowed=(-1, 0, 1), where=f"{where}: {col}", expect="0, 1 or empty")
    return out


def read_folder(root, *, threshold=2):
    """Read a manifest folder into a :class:`FrameTable` (dataset name ``folder``).

    ``threshold``: an AU given only as an intensity is present when it is >= ``threshold``.
    """
    root = Path(root)
    manifest = root if root.is_file() else root / MANIFEST
    if not manifest.is_file():
        raise LayoutError(f"{root}: no {MANIFEST} (expected columns image,subject,AU01,...)")
    base = manifest.parent
    reader = csv.DictReader(read_lines(manifest))
    header = reader.fieldnames or []
    for col in ("image", "subject"):
        if col not in header:
            raise LayoutError(f"{manifest}:1: no {col!r} column (header: {','.join(header)})")
    au_cols, int_cols, extra = _label_columns(header)
    aus = tuple(dict.fromkeys(list(au_cols.values()) + list(int_cols.values())))
    rows, skipped, counters, seen = [], Counter(), Counter(), {}
    for rec in reader:
        lineno = reader.line_num
        if None in rec or None in rec.values():
            n = len(header) - sum(v is None for v in rec.values()) + len(rec.get(None) or ())
            raise LabelFileError(f"{manifest}:{lineno}: {n} fields, the header has {len(header)}")
        image = Path(rec["image"].strip())
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            skipped["images missing"] += 1
            continue
        subject = rec["subject"].strip()
        if not subject:
            raise LabelFileError(f"{manifest}:{lineno}: empty subject")
        video = (rec.get("video") or "").strip() or subject
        frame = rec.get("frame")
        row = {"subject": subject, "video": video, "source": str(image.resolve()),
               "source_index": -1, "landmark_file": "", "split": (rec.get("split") or "").strip()}
        try:
            row["frame"] = int(frame) if frame not in (None, "") else counters[video]
        except ValueError:
            raise LabelFileError(f"{manifest}:{lineno}: non-numeric frame {frame!r}") from None
        if not 0 <= row["frame"] <= MAX_FRAME:  # the frame table keeps them as 32-bit numbers
            raise LabelFileError(f"{manifest}:{lineno}: frame {frame} outside 0-{MAX_FRAME:,}")
        counters[video] += 1
        row.update(_row_labels(rec, au_cols, int_cols, threshold, f"{manifest}:{lineno}"))
        row.update({c: rec[c] for c in extra})
        # one image is one frame: listed twice it could land in training and test at once
        first = seen.setdefault(row["source"], lineno)
        if first != lineno:
            raise LabelFileError(f"{manifest}:{lineno}: image {rec['image'].strip()} is already "
                                 f"listed on line {first} (each image once)")
        rows.append(row)
    derived = bool(set(int_cols.values()) - set(au_cols.values()))
    return FrameTable("folder", root, aus,
                      build_frames(rows, aus, intensity=bool(int_cols), extra=extra),
                      skipped=dict(skipped), has_intensity=bool(int_cols), pre_aligned=False,
                      landmark_points=0, label_threshold=int(threshold) if derived else None)
