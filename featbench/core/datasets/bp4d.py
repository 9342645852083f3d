"""Reader of BP4D-Spontaneous as distributed (PROTOCOL.md), also used for ``synth-bp4d``.

Layout (as public loaders read it: ME-GraphAU's ``tool/BP4D_image_label_process.py``, the
FERA 2015 intensity files)::

    AUCoding/AU_OCC/F001_T1.csv             header row; column 1 the frame number, then one
                                            column per AU number: 0 absent, 1 present, 9 not coded
    AUCoding/AU_INT/AU06/F001_T1_AU06.csv   no header; "frame,intensity", 0-5, 9 not coded
                                            (FERA 2015: AU06, AU10, AU12, AU14, AU17)
    2D+3D/F001/T1/0979.jpg                  the frames as images, one folder per subject and
                                            task, named by frame number (any zero padding)

The image folder may also be ``Sequences/``, ``BP4D-Spontaneous/``, ``images/`` or ``img/``,
or the subject folders may sit in the root itself. Subjects are F001-F023 and M001-M018, tasks
T1-T8; a copy with fewer is read as it is.

Conventions: one row per labelled frame that has an image; ``video`` is ``<subject>_<task>``
and ``frame`` BP4D's own frame number (the image's, which starts where coding starts, not at
0). Only the 12 AUs of the protocol (:data:`~featbench.core.aus.BP4D_AUS`) are kept; the
other columns of AU_OCC are ignored. A 9 is "not coded": the frame is unlabelled for that AU
(-1, masked), never a negative. Intensities come from the AU_INT files where they exist
(``AUnn_int``; -1 elsewhere); occurrence always from AU_OCC.

Tolerated and counted, never fatal: labelled frames without an image, a task with a label
file but no image folder, a task or subject with images but no label file (its frames are not
read), a label file lacking one of the 12 AU columns (that AU unlabelled there), AU_INT frames
that AU_OCC does not list. A malformed label file (an unknown value, a short line, a frame
twice) is one :class:`~featbench.core.errors.LabelFileError` naming the file and line.

Faces: BP4D's 2DFeatures tracking files are not read; alignment detects the face in each
frame (as for a folder of photos).
"""

import re
from collections import Counter
from pathlib import Path

from featbench.core.aus import BP4D_AUS, BP4D_INTENSITY_AUS
from featbench.core.errors import LabelFileError, LayoutError
from featbench.core.frames import MAX_FRAME, FrameTable, build_frames
from featbench.core.datasets._paths import find_child
from featbench.core.datasets._text import parse_label, read_lines

#: folders, under the root, that may hold the subject folders of images (else the root)
IMAGE_FOLDERS = ("2D+3D", "Sequences", "BP4D-Spontaneous", "images", "img")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: the AU_OCC value that means "not coded"
NOT_CODED = 9
_SUBJECT_RE = re.compile(r"^[FM]\d{3}$", re.IGNORECASE)
_OCC_RE = re.compile(r"^([FM]\d{3})_(T\d{1,2})\.csv$", re.IGNORECASE)
_INT_RE = re.compile(r"^([FM]\d{3})_(T\d{1,2})_AU(\d{1,2})\.csv$", re.IGNORECASE)
_AU_HEADER_RE = re.compile(r"^\s*(?:au)?\s*0*(\d{1,2})\s*$", re.IGNORECASE)


#: the values of an AU_OCC cell and of a FERA 2015 intensity file (9: not coded)
_OCC_VALUES = (0, 1, NOT_CODED)
_INT_VALUES = (0, 1, 2, 3, 4, 5, NOT_CODED)


def _int_field(raw, where, what):
    """Return ``int(raw)`` (``"1"``, ``"1.0"``); LabelFileError naming ``where`` otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise LabelFileError(f"{where}: non-numeric {what} {raw.strip()!r}") from None
    if value != int(value):
        raise LabelFileError(f"{where}: {what} {raw.strip()!r} is not a whole number")
    return int(value)


def _frame_number(raw, where, seen):
    frame = _int_field(raw, where, "frame number")
    if not 0 <= frame <= MAX_FRAME:
        raise LabelFileError(f"{where}: frame {frame} outside 0-{MAX_FRAME:,}: a damaged line?")
    if frame in seen:
        raise LabelFileError(f"{where}: frame {frame} is listed twice")
    seen.add(frame)
    return frame


def read_occurrence_file(path):
    """Parse one AU_OCC file: return (the protocol AUs it has, ``{frame: {AU: 1 | 0 | -1}}``).

    The header names the AUs (``1``, ``AU1``, ``AU01``...); its first cell (the frame column)
    is not read. Columns of AUs outside the 12 of the protocol are ignored; a protocol AU
    missing from the header is missing from the first value and from every frame's dict.

    Raises
    ------
    LabelFileError
        An empty file, a line whose number of fields differs from the header's, a value other
        than 0, 1 or 9 in a protocol AU's column, a frame number that is not a whole number
        in 0-10,000,000 or appears twice; the message names the file and line.
    """
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise LabelFileError(f"{path}: empty label file (expected a header row: frame,1,2,4,...)")
    header = [h.strip() for h in lines[0].split(",")]
    columns = {}
    for j, cell in enumerate(header[1:], 1):
        m = _AU_HEADER_RE.match(cell)
        if m is None:
            raise LabelFileError(f"{path}:1: header cell {cell!r} is not an AU number "
                                 "(expected frame,1,2,4,...)")
        au = f"AU{int(m.group(1)):02d}"
        if au in BP4D_AUS:
            columns[au] = j
    out, seen = {}, set()
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split(",")
        where = f"{path}:{lineno}"
        if len(parts) != len(header):
            raise LabelFileError(f"{where}: {len(parts)} fields, the header has {len(header)}")
        frame = _frame_number(parts[0], where, seen)
        labels = {}
        for au, j in columns.items():
            value = parse_label(parts[j].strip(), allowed=_OCC_VALUES, where=f"{where}: {au}",
                                expect="0, 1 or 9 (not coded)")
            labels[au] = -1 if value == NOT_CODED else value
        out[frame] = labels
    return tuple(columns), out


def read_intensity_file(path):
    """Parse one FERA 2015 intensity file into ``{frame: intensity 0-5 | -1 (9, not coded)}``.

    Raises
    ------
    LabelFileError
        A line that is not ``frame,intensity``, an intensity outside 0-5 and 9, a frame twice.
    """
    out, seen = {}, set()
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            raise LabelFileError(f"{where}: expected 'frame,intensity', got {line.strip()!r}")
        frame = _frame_number(parts[0], where, seen)
        value = parse_label(parts[1].strip(), allowed=_INT_VALUES, where=f"{where}: intensity",
                            expect="0-5 or 9 (not coded)")
        out[frame] = -1 if value == NOT_CODED else value
    return out


def _image_root(root):
    """Return the folder holding the subject folders of images; LayoutError if there is none."""
    for name in IMAGE_FOLDERS + ("",):
        folder = find_child(root, name) if name else root
        if folder is not None and folder.is_dir() and any(
                p.is_dir() and _SUBJECT_RE.match(p.name) for p in folder.iterdir()):
            return folder
    for name in IMAGE_FOLDERS:
        folder = find_child(root, name)
        if folder is not None and folder.is_dir() and any(folder.glob("*.zip")):
            raise LayoutError(f"{folder}: holds the subjects' archives (F001.zip ...); extract "
                              "them there first (F001/T1/0001.jpg ...)")
    raise LayoutError(f"{root}: no folder of BP4D images (expected 2D+3D/F001/T1/0001.jpg ..., "
                      f"or F001/T1/... in {', '.join(IMAGE_FOLDERS)} or the root)")


def _label_files(root):
    """Return ``{(subject, task): AU_OCC path}`` and AUCoding/ (LayoutError if missing)."""
    coding = find_child(root, "AUCoding")
    occ = find_child(coding, "AU_OCC") if coding is not None and coding.is_dir() else None
    if occ is None or not occ.is_dir():
        raise LayoutError(f"{root}: not a BP4D folder: no AUCoding/AU_OCC/ "
                          "(expected AUCoding/AU_OCC/F001_T1.csv ...)")
    files = {}
    for p in occ.iterdir():
        m = _OCC_RE.match(p.name)
        if m:
            files[(m.group(1).upper(), m.group(2).upper())] = p
    if not files:
        raise LayoutError(f"{occ}: no label files (expected F001_T1.csv ...)")
    return files, coding


def _intensity_files(coding):
    """Return ``{(subject, task): {AU: path}}`` of AUCoding/AU_INT/AUnn/ (empty if absent)."""
    out = {}
    folder = find_child(coding, "AU_INT")
    if folder is None or not folder.is_dir():
        return out
    for sub in folder.iterdir():
        if not sub.is_dir():
            continue
        for p in sub.iterdir():
            m = _INT_RE.match(p.name)
            au = f"AU{int(m.group(3)):02d}" if m else None
            if au in BP4D_INTENSITY_AUS:
                out.setdefault((m.group(1).upper(), m.group(2).upper()), {})[au] = p
    return out


def _images_of(folder):
    """Return ``{frame number: image path}`` of a task folder ({} when it does not exist)."""
    if folder is None or not folder.is_dir():
        return {}
    out = {}
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


def read_bp4d(root):
    """Read a BP4D-Spontaneous folder into a :class:`FrameTable` (dataset name ``bp4d``).

    Raises
    ------
    LayoutError
        No AUCoding/AU_OCC/ or no image folder (the message says what was expected).
    LabelFileError
        A malformed label file (the message names the file and line).
    """
    root = Path(root)
    occ_files, coding = _label_files(root)
    images = _image_root(root)
    int_files = _intensity_files(coding)
    skipped, rows = Counter(), []
    subjects = {p.name.upper(): p for p in images.iterdir() if p.is_dir() and _SUBJECT_RE.match(p.name)}
    unlabelled = sorted(s for s in subjects if not any(k[0] == s for k in occ_files))
    for subject, task in sorted(occ_files):
        sdir = subjects.get(subject)
        frames = _images_of(find_child(sdir, task) if sdir is not None else None)
        columns, labels = read_occurrence_file(occ_files[(subject, task)])
        if not frames:
            skipped["label files without an image folder (frames left out)"] += 1
            continue
        skipped["label files lacking an AU column (AU left unlabelled)"] += len(columns) < len(BP4D_AUS)
        intensity = {au: read_intensity_file(p) for au, p in int_files.get((subject, task), {}).items()}
        for au, values in intensity.items():
            skipped["intensity frames not in the AU_OCC file"] += len(values.keys() - labels.keys())
        for frame, occ in sorted(labels.items()):
            image = frames.get(frame)
            if image is None:
                skipped["labelled frames without an image"] += 1
                continue
            row = {"subject": subject, "video": f"{subject}_{task}", "frame": frame,
                   "source": str(image.resolve()), "source_index": -1, "landmark_file": "",
                   "split": ""}
            row.update(occ)
            row.update({f"{au}_int": values.get(frame, -1) for au, values in intensity.items()})
            rows.append(row)
    tasks_without_labels = sum(1 for s, sdir in subjects.items() for t in sdir.iterdir()
                               if t.is_dir() and (s, t.name.upper()) not in occ_files)
    if tasks_without_labels:
        skipped["task folders without a label file (frames not read)"] += tasks_without_labels
    notes = {"subjects_without_labels": unlabelled} if unlabelled else {}
    has_intensity = bool(int_files)
    return FrameTable("bp4d", root, BP4D_AUS,
                      build_frames(rows, BP4D_AUS, intensity=has_intensity),
                      skipped={k: v for k, v in skipped.items() if v}, has_intensity=has_intensity,
                      pre_aligned=False, landmark_points=0, notes=notes)
