"""Reader of Aff-Wild2's ABAW3 AU track (PROTOCOL.md).

Layout::

    AU_Detection_Challenge/Train_Set/<video>.txt        header AU1,AU2,...,AU26; line i = frame i
    AU_Detection_Challenge/Validation_Set/<video>.txt   values 0 / 1, -1 = not annotated
    cropped_aligned/<video>/00001.jpg                   5 digits, 1-based, already aligned

Frames whose labels are all -1 are skipped and counted; so are annotated frames with no image
(no face was found). The split column keeps Train_Set / Validation_Set as ``train`` /
``validation``. Each video is one subject (two-person videos carry ``_left`` / ``_right``).
"""

from collections import Counter
from pathlib import Path

from featbench.core.aus import au_name
from featbench.core.errors import LabelFileError, LayoutError, UsageError
from featbench.core.frames import FrameTable, build_frames
from featbench.core.datasets._paths import find_child
from featbench.core.datasets._text import parse_label, read_lines

SPLIT_FOLDERS = (("Train_Set", "train"), ("Validation_Set", "validation"))


def read_abaw_label_file(path):
    """Parse one ABAW AU file: return (AU names, list of per-frame value lists).

    Raises
    ------
    LabelFileError
        A header that is not a list of AUs, a line with the wrong number of values, or a
        value other than -1, 0, 1; the message names the file and line.
    """
    lines = read_lines(path)
    if not lines:
        raise LabelFileError(f"{path}: empty label file (expected a header line AU1,AU2,...)")
    try:
        aus = [au_name(h) for h in lines[0].split(",")]
    except UsageError:
        raise LabelFileError(f"{path}:1: header is not a list of AUs: {lines[0]!r}") from None
    values = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != len(aus):
            raise LabelFileError(f"{path}:{lineno}: {len(parts)} values for {len(aus)} AUs")
        row = [parse_label(p.strip(), allowed=(-1, 0, 1), where=f"{path}:{lineno}: {au}",
                           expect="0, 1 or -1") for p, au in zip(parts, aus)]
        values.append(row)
    return aus, values


def read_affwild2(root):
    """Read an Aff-Wild2 ABAW3 AU-track folder into a :class:`FrameTable` (``affwild2``)."""
    root = Path(root)
    ann = find_child(root, "AU_Detection_Challenge")
    if ann is None and any(find_child(root, f) for f, _ in SPLIT_FOLDERS):
        ann = root  # root is the annotation folder itself
    if ann is None or not ann.is_dir():
        raise LayoutError(f"{root}: not an Aff-Wild2 ABAW folder: no AU_Detection_Challenge/ "
                          "(expected AU_Detection_Challenge/Train_Set/<video>.txt)")
    images = find_child(root, "cropped_aligned") or find_child(root.parent, "cropped_aligned")
    if images is None:
        raise LayoutError(f"{root}: no cropped_aligned/ folder with the face images")
    rows, skipped, all_aus = [], Counter(), None
    for folder, split in SPLIT_FOLDERS:
        sdir = find_child(ann, folder)
        if sdir is None:
            continue
        for path in sorted(sdir.glob("*.txt")):
            aus, values = read_abaw_label_file(path)
            if all_aus is None:
                all_aus = tuple(aus)
            elif tuple(aus) != all_aus:
                raise LabelFileError(f"{path}:1: header {','.join(aus)} differs from other files'")
            video = path.stem
            vdir = images / video
            present = {p.name for p in vdir.iterdir()} if vdir.is_dir() else set()
            for i, vals in enumerate(values):
                if all(v < 0 for v in vals):
                    skipped["frames not annotated (-1)"] += 1
                    continue
                name = f"{i + 1:05d}.jpg"
                if name not in present:
                    skipped["annotated frames without an image (no face)"] += 1
                    continue
                row = {"subject": video, "video": video, "frame": i,
                       "source": str((vdir / name).resolve()), "source_index": -1,
                       "landmark_file": "", "split": split}
                row.update(zip(aus, vals))
                rows.append(row)
    if all_aus is None:
        raise LayoutError(f"{ann}: no label files in Train_Set/ or Validation_Set/")
    return FrameTable("affwild2", root, all_aus, build_frames(rows, all_aus), skipped=dict(skipped),
                      has_intensity=False, pre_aligned=True, landmark_points=0)
