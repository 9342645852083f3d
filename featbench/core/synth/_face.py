"""Synthetic faces: an identity's 3-D landmark shape and how each action unit deforms it.

Face space: x to the image's right (the subject's left), y down, z toward the camera, in units
of the face's width (jaw point 0 to 16 is about 1.0). The origin is midway between the eyes.
Points follow iBUG's 68-point scheme (``featbench.core.landmarks``); the renderer projects them
with the head pose, so the landmarks written to disk are exactly where the face was drawn.

AU strengths are given per AU as ``s`` in 0-1 (see :func:`strength`), indexed by
:data:`AU_INDEX`; every displacement below is a FACS appearance change (PROTOCOL.md's table).
"""

from dataclasses import dataclass

import numpy as np

from featbench.core.aus import ALL_AUS

#: AU name -> column of the strength / intensity vectors used throughout the generator
AU_INDEX = {au: i for i, au in enumerate(ALL_AUS)}

# Skin tones (BGR) from light to dark; an identity's tone is a blend of two neighbours.
_SKIN = np.array([[196, 214, 240], [160, 190, 228], [120, 160, 205], [90, 128, 180],
                  [70, 100, 150], [50, 72, 112]], dtype=np.float32)
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 80, 130], [110, 160, 200],
                  [150, 150, 155], [30, 60, 150]], dtype=np.float32)
_IRIS = np.array([[30, 50, 80], [130, 100, 60], [70, 110, 60], [25, 30, 40]], dtype=np.float32)


def strength(intensity):
    """Map an AU intensity (0-5, continuous) to a rendering strength in 0-1.

    Linear: intensity 1 (a trace, labelled absent) is subtle but not invisible, and intensity 2
    (the protocol's threshold) only twice as strong, so the boundary between present and
    absent is genuinely ambiguous, as in real video.
    """
    return np.clip(np.asarray(intensity, dtype=np.float32) / 5.0, 0.0, 1.0)


@dataclass
class Identity:
    """One synthetic person: proportions, colours and permanent marks (all in face units)."""

    face_w: float
    chin_y: float
    jaw_taper: float
    jaw_p: float
    forehead_h: float
    eye_in: float
    eye_w: float
    eye_up: float
    eye_lo: float
    eye_y: float
    iris_r: float
    brow_y: float
    brow_th: float
    brow_arch: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    skin: np.ndarray
    lip: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    iris: np.ndarray
    hairline: float
    long_hair: bool
    age: float
    beard: float
    glasses: bool
    chin_dots: np.ndarray
    background: np.ndarray
    shirt: np.ndarray


def sample_identity(rng):
    """Draw an :class:`Identity` from ``rng`` (a numpy Generator)."""
    u = rng.uniform
    tone = u(0, len(_SKIN) - 1.001)
    k = int(tone)
    skin = _SKIN[k] * (1 - (tone - k)) + _SKIN[k + 1] * (tone - k)
    skin = skin * u(0.94, 1.06, 3)
    lip = skin * np.array([0.62, 0.55, 0.92]) + np.array([20, 10, 25])
    hair = _HAIR[rng.integers(len(_HAIR))] * u(0.8, 1.2, 3)
    brow = np.minimum(hair, skin * 0.55) * u(0.7, 1.0)
    bald = u() < 0.08
    return Identity(
        face_w=u(0.9, 1.08), chin_y=u(0.74, 0.88), jaw_taper=u(0.15, 0.4), jaw_p=u(0.7, 1.25),
        forehead_h=u(0.55, 0.68),
        eye_in=u(0.11, 0.145), eye_w=u(0.19, 0.24), eye_up=u(0.035, 0.05), eye_lo=u(0.022, 0.034),
        eye_y=u(-0.015, 0.015), iris_r=u(0.036, 0.044),
        brow_y=u(-0.17, -0.12), brow_th=u(0.022, 0.042), brow_arch=u(0.01, 0.04), brow_tilt=u(-0.02, 0.02),
        nose_len=u(0.25, 0.31), nose_w=u(0.075, 0.11),
        mouth_y=u(0.46, 0.53), mouth_w=u(0.15, 0.2), lip_up=u(0.022, 0.04), lip_lo=u(0.03, 0.05),
        skin=skin.astype(np.float32), lip=lip.astype(np.float32), hair=hair.astype(np.float32),
        brow=brow.astype(np.float32), iris=_IRIS[rng.integers(len(_IRIS))] * u(0.8, 1.2, 3),
        hairline=-0.95 if bald else u(-0.52, -0.36), long_hair=bool(u() < 0.4),
        age=float(u(0, 1) ** 2), beard=float(u(0.2, 0.6)) if u() < 0.18 else 0.0,
        glasses=bool(u() < 0.12),
        chin_dots=np.stack([u(-0.07, 0.07, 7), u(0.0, 0.08, 7)], axis=1).astype(np.float32),
        background=u(40, 215, 3).astype(np.float32), shirt=u(20, 230, 3).astype(np.float32),
    )


def _mirror(pts):
    out = np.array(pts, dtype=np.float32)
    out[..., 0] *= -1
    return out


def landmarks3d(idt, s):
    """Return the (68, 3) face-space landmarks of ``idt`` with AU strengths ``s`` (16,) in 0-1.

    Also returns a dict of auxiliary geometry that texture drawing needs (mouth opening etc.).
    """
    a = {au: float(s[i]) for au, i in AU_INDEX.items()}
    P = np.zeros((68, 3), dtype=np.float32)
    drop = _place_jaw(P, idt, a)
    _place_brows(P, idt, a)
    _place_eyes(P, idt, a)
    _place_nose(P, idt, a)
    return P, {"a": a, **_place_mouth(P, idt, a, drop)}


def _place_jaw(P, idt, a):
    """Set the jaw line P[0:17] (``a``: AU activations); return the chin's AU26 drop."""
    # Jaw: a superellipse from ear to ear; AU26 lowers the chin, AU17 pushes the chin boss up.
    t = np.arange(17) / 16.0 * np.pi
    c, sn = -np.cos(t), np.sin(t)
    P[:17, 0] = 0.5 * idt.face_w * c * (1 - idt.jaw_taper * sn ** 3)
    P[:17, 1] = 0.02 + (idt.chin_y - 0.02) * sn ** idt.jaw_p
    P[:17, 2] = -0.35 + 0.5 * sn
    drop = 0.11 * a["AU26"]
    P[:17, 1] += drop * sn ** 2 - 0.02 * a["AU17"] * sn ** 8
    return drop


def _place_brows(P, idt, a):
    """Set the brows P[17:27]: AU1 raises the inner ends, AU2 the outer, AU4 / AU9 lower them."""
    # Brows: 17 (outer) -> 21 (inner) on the image's left, mirrored 22 (inner) -> 26 (outer).
    k = np.linspace(0, 1, 5)  # 0 outer, 1 inner
    bx = -(idt.eye_in + idt.eye_w + 0.05 - (idt.eye_w + 0.05 + idt.eye_in - 0.07) * k)
    by = idt.brow_y + idt.eye_y - idt.brow_arch * np.sin(np.pi * (0.25 + 0.6 * k)) + idt.brow_tilt * (k - 0.5)
    by = by - 0.085 * a["AU01"] * (0.15 + 0.85 * k ** 1.5)      # inner brow raiser
    by = by - 0.075 * a["AU02"] * (1.0 - 0.9 * k)                 # outer brow raiser
    by = by + 0.06 * a["AU04"] * (0.35 + 0.65 * k) + 0.02 * a["AU09"] * k  # lowerer; 9 pulls inner
    bx = bx + (0.045 * a["AU04"] + 0.01 * a["AU09"]) * k ** 2      # drawn together
    right = np.stack([bx, by, 0.27 + 0.04 * k], axis=1)
    P[17:22] = right
    P[22:27] = _mirror(right[::-1])


def _place_eyes(P, idt, a):
    """Set the eyes P[36:48]: AU5 opens the upper lid, AU6 / AU7 narrow from below."""
    # Eyes: 36 outer, 37-38 upper lid, 39 inner, 40-41 lower lid (image left); mirrored 42-47.
    ex0, ex1 = -(idt.eye_in + idt.eye_w), -idt.eye_in
    up = idt.eye_up * (1 + 2.0 * a["AU05"] - 0.3 * a["AU07"] - 0.15 * a["AU04"] - 0.2 * a["AU06"])
    lo = idt.eye_lo * (1 - 0.9 * a["AU06"] - 0.8 * a["AU07"] - 0.1 * a["AU12"])
    lo = max(lo, 0.002)
    up = max(up, lo * 0.2 + 0.004)
    ey = idt.eye_y + 0.006 * a["AU06"]
    corner_lift = -0.016 * a["AU06"]
    eye = np.array([
        [ex0, ey + corner_lift, 0.16],
        [ex0 + 0.33 * idt.eye_w, ey - up, 0.22],
        [ex0 + 0.67 * idt.eye_w, ey - up * 0.95, 0.22],
        [ex1, ey + 0.004, 0.19],
        [ex0 + 0.67 * idt.eye_w, ey + lo, 0.21],
        [ex0 + 0.33 * idt.eye_w, ey + lo * (1 - 0.2 * a["AU07"]), 0.21],
    ], dtype=np.float32)
    P[36:42] = eye
    P[42:48] = _mirror(eye[[3, 2, 1, 0, 5, 4]])


def _place_nose(P, idt, a):
    """Set the nose P[27:36]."""
    # Nose: bridge 27-30, nostrils 31-35; AU9 wrinkles the nose and lifts the wings, AU10 a little.
    nl = idt.nose_len
    P[27:31] = [[0, 0.0, 0.30], [0, nl / 3, 0.38], [0, 2 * nl / 3, 0.45], [0, nl, 0.52]]
    wing_up = 0.03 * a["AU09"] + 0.012 * a["AU10"]
    nw = idt.nose_w * (1 + 0.15 * a["AU09"])
    ny = nl + 0.045
    P[31:36] = [[-nw, ny - 0.012 - wing_up, 0.36], [-nw / 2, ny + 0.008 - wing_up * 0.6, 0.42],
                [0, ny + 0.015 - wing_up * 0.4, 0.45], [nw / 2, ny + 0.008 - wing_up * 0.6, 0.42],
                [nw, ny - 0.012 - wing_up, 0.36]]


def _place_mouth(P, idt, a, drop):
    """Set the mouth P[48:68]; return what texture drawing needs (opening, lip sizes, corners)."""
    # Mouth. Corners: 12 up and out, 14 in and a little up, 15 down, 20 out, 23 in; lips: 10 raises the upper,
    # 17 pushes the lower up, 24 presses both, 23/20 thin the red; 25 parts, 26 drops the jaw.
    my, mw = idt.mouth_y, idt.mouth_w
    mw_ = mw + 0.04 * a["AU12"] + 0.07 * a["AU20"] - 0.035 * a["AU23"] - 0.012 * a["AU24"]
    mw_ = mw_ - 0.015 * a["AU14"]   # dimpler: corners tightened and drawn in (BP4D)
    cy = my - 0.045 * a["AU12"] + 0.07 * a["AU15"] + 0.01 * a["AU20"] + 0.01 * a["AU17"] - 0.005 * a["AU10"]
    cy = cy - 0.008 * a["AU14"]
    thin = 1 - 0.45 * a["AU23"] - 0.5 * a["AU24"] - 0.4 * a["AU20"] - 0.2 * a["AU12"]
    lu, ll = idt.lip_up * max(thin, 0.25), idt.lip_lo * max(thin, 0.25)
    lift = 0.04 * a["AU10"] + 0.012 * a["AU09"]          # upper-lip raiser
    push = 0.035 * a["AU17"]                             # chin raiser
    part = 0.0
    if a["AU25"] > 0:
        part = 0.012 + 0.05 * a["AU25"]
    jaw_open = drop * (1.0 if a["AU25"] > 0.05 else 0.35)
    gap_top = my - 0.5 * part - lift * 0.8                 # inner upper lip
    gap_bot = my + 0.5 * part + jaw_open * 0.9 - push * 0.6  # inner lower lip
    gap_bot = max(gap_bot, gap_top)
    up_ctr = my - 0.5 * part - lift
    ang = 0.25 * lu * a["AU12"]                           # smile lifts the lip line at the sides
    P[48] = [-mw_, cy, 0.26]
    P[49] = [-mw_ * 0.6, (up_ctr + cy) / 2 - lu * 0.85 - ang, 0.32]
    P[50] = [-mw_ * 0.25, up_ctr - lu, 0.36]
    P[51] = [0, up_ctr - lu * 0.82, 0.37]
    P[54:51:-1] = _mirror(P[48:51])
    lo_ctr = gap_bot
    P[55] = [mw_ * 0.6, (lo_ctr + cy) / 2 + ll * 0.8, 0.31]
    P[56] = [mw_ * 0.25, lo_ctr + ll, 0.34]
    P[57] = [0, lo_ctr + ll * 1.02, 0.35]
    P[58:60] = _mirror(P[56:54:-1])
    P[60] = [-mw_ * 0.86, cy + 0.002, 0.27]
    P[61] = [-mw_ * 0.32, (gap_top + cy) / 2 * 0.3 + gap_top * 0.7, 0.33]
    P[62] = [0, gap_top, 0.34]
    P[63] = _mirror(P[61])
    P[64] = _mirror(P[60])
    P[65] = [mw_ * 0.32, (gap_bot + cy) / 2 * 0.3 + gap_bot * 0.7, 0.32]
    P[66] = [0, gap_bot, 0.33]
    P[67] = _mirror(P[65])
    return {"part": gap_bot - gap_top, "lu": lu, "ll": ll, "cy": cy, "mw": mw_}


def canonical_shape():
    """Return a mean frontal 68-point shape (68, 2) in face units (the alignment template)."""
    rng = np.random.default_rng(12345)
    shapes = [landmarks3d(sample_identity(rng), np.zeros(len(AU_INDEX)))[0][:, :2] for _ in range(64)]
    return np.mean(shapes, axis=0).astype(np.float32)
