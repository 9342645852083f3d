"""Reader of DISFA as distributed (PROTOCOL.md), also used for the embedded synthetic set.

Layout::

    ActionUnit_Labels/SN001/SN001_au1.txt        lines "frame,intensity", frames 1-based, intensity 0-5
    Videos_LeftCamera/LeftVideoSN001_comp.avi    (case of _comp varies: matched case-insensitively)
    Video_RightCamera/RightVideoSN001_Comp.avi
    Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat   (or l0NNNN_lm.mat; 0-based; pts 66x2)

Conventions: frame ``f`` of a label file (1-based) is video index ``f - 1`` and landmark file
number ``f - 1``. An AU is present when its intensity is >= ``threshold`` (2 in the protocol).
Tolerated and counted, never fatal: frames without a landmark file, label frames past the end
of the video, subjects with fewer frames than the others, a missing AU label file or video.
DISFA's landmarks belong to the left camera; right-camera frames get none (alignment then
detects the face).
"""

import re
from collections import Counter
from pathlib import Path

from featbench.core.aus import DISFA_AUS, au_name
from featbench.core.errors import LabelFileError, LayoutError, os_error
from featbench.core.frames import MAX_FRAME, FrameTable, build_frames
from featbench.core.datasets._paths import children_by_lower_name, find_child
from featbench.core.datasets._text import read_lines

CAMERA_FOLDERS = {
    "left": ("Videos_LeftCamera", "Video_LeftCamera"),
    "right": ("Video_RightCamera", "Videos_RightCamera"),
}
CAMERA_PREFIX = {"left": "LeftVideo", "right": "RightVideo"}
_SUBJECT_RE = re.compile(r"^SN\d{3}$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(SN\d{3})_au(\d{1,2})\.txt$", re.IGNORECASE)
_LM_RE = re.compile(r"(\d+)_lm\.mat$", re.IGNORECASE)


def read_label_file(path):
    """Parse a DISFA label file into ``{frame (1-based): intensity}``.

    Raises
    ------
    LabelFileError
        A line that is not ``frame,intensity`` with integers, a frame < 1, an intensity
        outside 0-5; the message names the file and line.
    """
    out = {}
    for lineno, line in enumerate(read_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise LabelFileError(f"{path}:{lineno}: expected 'frame,intensity', got {line!r}")
        try:
            frame, value = int(parts[0]), int(parts[1])
        except ValueError:
            raise LabelFileError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
        if frame < 1:
            raise LabelFileError(f"{path}:{lineno}: frame {frame} < 1 (DISFA frames are 1-based)")
        if frame > MAX_FRAME:
            raise LabelFileError(f"{path}:{lineno}: frame {frame} is past any video featbench "
                                 f"reads (at most {MAX_FRAME:,} frames): a damaged line?")
        if not 0 <= value <= 5:
            raise LabelFileError(f"{path}:{lineno}: intensity {value} outside 0-5")
        if out.get(frame, value) != value:
            raise LabelFileError(f"{path}:{lineno}: frame {frame} labelled twice, "
                                 f"{out[frame]} and {value}")
        out[frame] = value
    return out


def _video_frame_count(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return n if n > 0 else None
    finally:
        cap.release()


def _landmark_files(folder):
    """Return ``{frame index (0-based): path}`` of the ``*_lm.mat`` files under ``folder``."""
    out = {}
    if folder is None or not folder.is_dir():
        return out
    for p in folder.rglob("*"):
        m = _LM_RE.search(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def read_disfa(root, *, camera="left", threshold=2):
    """Read a DISFA-layout folder into a :class:`FrameTable` (dataset name ``disfa``).

    Parameters
    ----------
    root : Path
        The DISFA folder as distributed.
    camera : {"left", "right", "both"}
    threshold : int
        Occurrence = intensity >= threshold (1-5).
    """
    root = Path(root)
    if not 1 <= threshold <= 5:
        raise LayoutError(f"--threshold {threshold}: must be an intensity 1-5")
    cameras = ("left", "right") if camera == "both" else (camera,)
    subjects, cam_dirs, lm_root = _disfa_layout(root, cameras)
    skipped = Counter()
    rows, lengths = [], {}
    for sdir in subjects:
        subject = sdir.name.upper()
        per_au = _subject_labels(sdir, subject, skipped)
        n_frames = max(max(v) for v in per_au.values() if v) if any(per_au.values()) else 0
        lengths[subject] = n_frames
        lms = _landmark_files(find_child(lm_root, subject) if lm_root else None)
        for cam in cameras:
            video = cam_dirs[cam].get(f"{CAMERA_PREFIX[cam]}{subject}_comp.avi".lower())
            if video is None:
                skipped[f"no {cam}-camera video"] += n_frames
                continue
            rows += _video_rows(subject, video, n_frames, per_au,
                                lms=lms if cam == "left" and lm_root is not None else None,
                                threshold=threshold,
                                skipped=skipped)
    longest = max(lengths.values())
    short = {s: n for s, n in lengths.items() if n < longest}
    table = FrameTable("disfa", root, DISFA_AUS, build_frames(rows, DISFA_AUS, intensity=True),
                       skipped=dict(skipped), has_intensity=True, pre_aligned=False,
                       landmark_points=66 if lm_root is not None else 0,
                       notes={"short_subjects": short} if short else {},
                       label_threshold=int(threshold))
    return table


def _disfa_layout(root, cameras):
    """Return ``(subject label folders, {camera: {lower-case name: video}}, Landmark_Points or None)``.

    Raises LayoutError, naming what is missing, for a folder that is not DISFA's layout.
    """
    labels_dir = find_child(root, "ActionUnit_Labels")
    if labels_dir is None or not labels_dir.is_dir():
        raise LayoutError(f"{root}: not a DISFA folder: no ActionUnit_Labels/ "
                          "(expected ActionUnit_Labels/SN001/SN001_au1.txt ...)")
    named = sorted(p for p in labels_dir.iterdir() if _SUBJECT_RE.match(p.name))
    for p in named:  # a subject folder the OS cannot open is said, never silently dropped
        if not p.exists():
            try:
                p.stat()
            except OSError as exc:
                raise os_error(exc, p, LayoutError) from None
    subjects = sorted((p for p in named if p.is_dir()), key=lambda p: p.name.upper())
    if not subjects:
        raise LayoutError(f"{labels_dir}: no subject folders (expected SN001, SN002, ...)")
    cam_dirs = {}
    for cam in cameras:
        found = next((d for d in (find_child(root, n) for n in CAMERA_FOLDERS[cam]) if d), None)
        if found is None:
            raise LayoutError(f"{root}: no {CAMERA_FOLDERS[cam][0]}/ folder for the {cam} camera")
        cam_dirs[cam] = children_by_lower_name(found)
    return subjects, cam_dirs, find_child(root, "Landmark_Points")


def _subject_labels(sdir, subject, skipped):
    """Return ``{AU: {frame (1-based): intensity}}`` of one subject's label files.

    Missing and empty label files leave their AU unlabelled and are counted in ``skipped``.
    """
    per_au = {}
    for f in sdir.iterdir():
        m = _LABEL_RE.match(f.name)
        if m and m.group(1).upper() == subject:
            au = au_name(m.group(2))
            if au in DISFA_AUS:
                per_au[au] = read_label_file(f)
    if not per_au:
        raise LayoutError(f"{sdir}: no label files (expected {subject}_au1.txt ...)")
    for au in DISFA_AUS:
        if au not in per_au:
            skipped["label files missing (AU left unlabelled)"] += 1
        elif not per_au[au]:
            skipped["label files empty (AU left unlabelled)"] += 1
    return per_au


def _video_rows(subject, video, n_frames, per_au, *, lms, threshold, skipped):
    """Return the table rows of one subject's video: one per labelled frame the video holds.

    ``lms`` maps 0-based frames to landmark files (left camera; None for the right one, which
    DISFA gives no landmarks, or without Landmark_Points/); frames past the video's end and frames without a landmark file
    are counted in ``skipped``.
    """
    n_video = _video_frame_count(video)
    labelled = set().union(*per_au.values())
    if n_video is not None and n_frames > n_video:
        # counted only where a label file has the frame: one stray line far past the end is
        # one frame, not every number up to it (and the loop stops at the video's end)
        skipped["label frames past the end of the video"] += sum(f > n_video for f in labelled)
        n_frames = n_video
    rows = []
    for frame1 in range(1, n_frames + 1):
        index = frame1 - 1
        row = {"subject": subject, "video": video.stem, "frame": index,
               "source": str(video.resolve()), "source_index": index, "split": ""}
        lm = lms.get(index) if lms is not None else None
        row["landmark_file"] = str(lm.resolve()) if lm is not None else ""
        if lms is not None and lm is None:
            skipped["frames without a landmark file"] += 1
        for au in DISFA_AUS:
            v = per_au.get(au, {}).get(frame1)
            row[au] = -1 if v is None else int(v >= threshold)
            row[f"{au}_int"] = -1 if v is None else v
        rows.append(row)
    return rows
