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
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        pts = np.asarray(scipy.io.loadmat(path)["pts"], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError, MatReadError):  # empty, garbage, cut short
        return None
    if pts.shape not in ((66, 2), (68, 2)) or not np.isfinite(pts).all():
        return None  # a file holding NaN is a frame without landmarks: skipped and counted
    if np.ptp(pts, axis=0).max() < MIN_SPREAD:
        return None  # all points on one spot (an all-zero file): no face to align to
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
