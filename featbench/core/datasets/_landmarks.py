"""Reading per-frame landmark files (DISFA's ``*_lm.mat``) into one array of iBUG 68 points."""

import numpy as np

from featbench.core.landmarks import ibug66_to_68


def read_landmark_file(path):
    """Return the 68-point landmarks of one ``.mat`` file (variable ``pts``, 66 or 68 x 2), or None.

    None also for an unreadable file or one holding NaN / inf: alignment counts such a frame
    as having no landmarks.
    """
    import scipy.io

    try:
        pts = np.asarray(scipy.io.loadmat(path)["pts"], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError):
        return None
    if pts.shape not in ((66, 2), (68, 2)) or not np.isfinite(pts).all():
        return None  # a file holding NaN is a frame without landmarks: skipped and counted
    return ibug66_to_68(pts) if pts.shape == (66, 2) else pts


def read_landmark_files(table):
    """Return (frames, 68, 2) float32 landmarks of ``table``; NaN where a frame has none."""
    out = np.full((len(table), 68, 2), np.nan, dtype=np.float32)
    for i, path in enumerate(table.frames["landmark_file"].to_numpy()):
        if path:
            pts = read_landmark_file(path)
            if pts is not None:
                out[i] = pts
    return out
