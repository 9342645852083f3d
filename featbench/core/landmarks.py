"""Facial landmark conventions: iBUG's 68 points, DISFA's 66, and conversion between them.

DISFA distributes 66 points: iBUG's 68 without the two inner-mouth corners (68-point indices
60 and 64). featbench works in 68 points; converting 66 -> 68 fills each inner-mouth corner
from its neighbours (the outer mouth corner and the inner-lip midpoints), which is within a
pixel or two of an annotated corner and is never used by the alignment (eyes, nose and outer
mouth corners are).
"""

import numpy as np

#: 68-point indices kept in DISFA's 66-point files, in file order
IBUG66_FROM_68 = np.array([i for i in range(68) if i not in (60, 64)])

#: index groups of the 68-point iBUG scheme
JAW = range(0, 17)
RIGHT_BROW, LEFT_BROW = range(17, 22), range(22, 27)
NOSE = range(27, 36)
RIGHT_EYE, LEFT_EYE = range(36, 42), range(42, 48)
OUTER_MOUTH, INNER_MOUTH = range(48, 60), range(60, 68)


def ibug66_to_68(pts):
    """Convert 66-point landmarks (..., 66, 2) to iBUG 68 points (..., 68, 2)."""
    pts = np.asarray(pts, dtype=np.float32)
    if pts.shape[-2] != 66:
        raise ValueError(f"expected 66 points, got {pts.shape[-2]}")
    out = np.empty(pts.shape[:-2] + (68, 2), dtype=np.float32)
    out[..., IBUG66_FROM_68, :] = pts
    inner_mid = 0.5 * (out[..., 62, :] + out[..., 66, :])
    out[..., 60, :] = 0.75 * out[..., 48, :] + 0.25 * inner_mid
    out[..., 64, :] = 0.75 * out[..., 54, :] + 0.25 * inner_mid
    return out


def ibug68_to_66(pts):
    """Convert iBUG 68-point landmarks (..., 68, 2) to DISFA's 66 points (..., 66, 2)."""
    pts = np.asarray(pts, dtype=np.float32)
    if pts.shape[-2] != 68:
        raise ValueError(f"expected 68 points, got {pts.shape[-2]}")
    return pts[..., IBUG66_FROM_68, :]
