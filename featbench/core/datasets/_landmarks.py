"""Reading per-frame landmark files (DISFA's ``*_lm.mat``) into one array of iBUG 68 points."""

import numpy as np

from featbench.core.landmarks import ibug66_to_68


#: landmarks spread over fewer pixels than this (all on one spot) describe no face
MIN_SPREAD = 1.0


def read_landmark_file(path):
    """Return the 68-point landmarks of one ``.mat`` file (variable ``pts``, 66 or 68 x 2), or None.

    None also for an unreadable file (empty, not a MAT-file, cut short), one holding NaN / inf,
    or one whose points all lie on one spot (an all-zero file): alignment counts such a frame
    as having no landmarks.
    """
    return _read(path)[0]


def _read(path):
    """``(landmarks or None, damaged)``: damaged when the file cannot be read as a MAT-file
    with a 66 / 68 x 2 ``pts`` (empty, garbage, cut short, another shape); a readable file of
    NaN or of points on one spot is a frame without landmarks, not damage."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        pts = np.asarray(scipy.io.loadmat(path)["pts"], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError, MatReadError):  # empty, garbage, cut short
        return None, True
    if pts.shape not in ((66, 2), (68, 2)):
        return None, True
    if not np.isfinite(pts).all():
        return None, False  # a file holding NaN is a frame without landmarks: skipped and counted
    if np.ptp(pts, axis=0).max() < MIN_SPREAD:
        return None, False  # all points on one spot (an all-zero file): no face to align to
    return (ibug66_to_68(pts) if pts.shape == (66, 2) else pts), False


def read_landmark_files(table, *, damaged=None):
    """Return (frames, 68, 2) float32 landmarks of ``table``; NaN where a frame has none.

    ``damaged``: a list the paths of unreadable landmark files are appended to (their frames
    are NaN, counted as without landmarks, and named by whoever passed the list).
    """
    out = np.full((len(table), 68, 2), np.nan, dtype=np.float32)
    for i, path in enumerate(table.frames["landmark_file"].to_numpy()):
        if path:
            pts, bad = _read(path)
            if pts is not None:
                out[i] = pts
            elif bad and damaged is not None:
                damaged.append(str(path))
    return out


def damaged_landmark_files(table):
    """Return the landmark files of ``table`` that cannot be MAT-files: empty, or without the
    text header every MAT-file of version 5 or later starts with (and not readable as the
    header-less version 4 either). Cheap enough for ``data info``: one stat and 6 bytes a file.
    """
    out = []
    for path in dict.fromkeys(p for p in table.frames["landmark_file"].to_numpy() if p):
        try:
            with open(path, "rb") as fh:
                head = fh.read(6)
        except OSError:
            out.append(str(path))
            continue
        if not head or (head != b"MATLAB" and _read(path)[1]):
            out.append(str(path))
    return out
