"""Drawing one synthetic video frame with OpenCV: anti-aliased polygons, blurred shading layers.

:func:`render_frame` projects an identity's 3-D landmarks (``_face.landmarks3d``) with the
head pose, draws the head, then the features, then the AU textures (furrows, wrinkles, bulges)
on two soft layers (dark and light) that are blurred and multiplied in, then the nuisance:
illumination direction and colour, occlusion, blur and sensor noise. It returns the BGR image
and the 68 projected landmarks, which are the true positions of what was drawn.
"""

from dataclasses import dataclass

import numpy as np

from featbench.core.synth._face import landmarks3d

#: frame size (width, height) of the DISFA-layout videos
FRAME_SIZE = (320, 256)
_SHIFT = 4              # cv2 fixed-point bits: sub-pixel positions, so motion is smooth
_ONE = 1 << _SHIFT


@dataclass
class Pose:
    """Head pose and placement of one frame (angles in degrees, scale in pixels per face unit)."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    cx: float
    cy: float


@dataclass
class Scene:
    """The per-frame nuisance: light, camera blur and noise, gaze, occlusion."""

    light_dir: float      # angle of the light in the image plane (radians)
    light_k: float        # strength of the light gradient across the face (0 = flat)
    gain: float           # overall brightness
    tint: np.ndarray      # (3,) BGR colour of the light
    blur: float           # gaussian blur sigma (pixels)
    noise: float          # sensor noise sigma (0-255 scale)
    gaze: tuple           # iris offset (x, y) in eye-width units
    occluder: tuple = ()  # () or (kind, x, y, size) in face units


def _rotation(yaw, pitch, roll):
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return (rz @ rx @ ry).astype(np.float32)


_PIVOT = np.array([0.0, 0.25, -0.45], dtype=np.float32)  # roughly the neck: heads turn about it


class _Canvas:
    """An image plus two soft texture layers, and the projection of face space into it."""

    def __init__(self, size, pose, background):
        import cv2

        self.cv2 = cv2
        w, h = size
        self.img = np.empty((h, w, 3), np.uint8)
        self.img[:] = np.clip(background, 0, 255).astype(np.uint8)
        self.dark = np.zeros((h, w), np.uint8)
        self.light = np.zeros((h, w), np.uint8)
        self.shade = np.zeros((h, w), np.uint8)  # broad shadows (beard, nose side): blurred most
        self.R = _rotation(pose.yaw, pose.pitch, pose.roll)
        self.s = pose.scale
        self.c = np.array([pose.cx, pose.cy], np.float32)

    def project(self, X):
        X = np.asarray(X, np.float32)
        if X.shape[-1] == 2:
            X = np.concatenate([X, np.full(X.shape[:-1] + (1,), 0.3, np.float32)], axis=-1)
        Y = (X - _PIVOT) @ self.R.T + _PIVOT
        return Y[..., :2] * self.s + self.c

    def _fx(self, pts):
        return [np.round(np.asarray(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2)]

    def fill(self, X, color, *, layer=None, projected=False):
        pts = X if projected else self.project(X)
        target = self.img if layer is None else getattr(self, layer)
        col = tuple(float(v) for v in np.atleast_1d(color))
        self.cv2.fillPoly(target, self._fx(pts), col, self.cv2.LINE_AA, _SHIFT)

    def line(self, X, color, width, *, layer=None, closed=False, projected=False):
        pts = X if projected else self.project(X)
        target = self.img if layer is None else getattr(self, layer)
        col = tuple(float(v) for v in np.atleast_1d(color))
        t = max(1, int(round(width * self.s)))
        self.cv2.polylines(target, self._fx(pts), closed, col, t, self.cv2.LINE_AA, _SHIFT)

    def soft(self, layer, value, X, width):
        """A texture mark (wrinkle, furrow) of opacity ``value`` in 0-1 on a soft layer."""
        if value > 0.02:
            self.line(X, min(255.0, 255.0 * value), width, layer=layer)

    def blob(self, layer, value, center, axes):
        """A filled soft ellipse (bulge highlight or shadow) in face units."""
        if value > 0.02:
            t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            X = np.stack([center[0] + axes[0] * np.cos(t), center[1] + axes[1] * np.sin(t)], 1)
            self.fill(X, min(255.0, 255.0 * value), layer=layer)


def _arc(x0, x1, y, bend, n=7, z=0.28):
    x = np.linspace(x0, x1, n)
    u = np.linspace(-1, 1, n)
    return np.stack([x, y + bend * (u ** 2 - 1), np.full(n, z)], 1)


def _smooth(P, closed=True, it=2):
    """Chaikin corner cutting, so 6-point eyes and 12-point lips draw as curves."""
    for _ in range(it):
        Q = np.roll(P, -1, axis=0) if closed else P[1:]
        A = P if closed else P[:-1]
        new = np.empty((2 * len(A),) + P.shape[1:], P.dtype)
        new[0::2] = 0.75 * A + 0.25 * Q
        new[1::2] = 0.25 * A + 0.75 * Q
        P = new if closed else np.concatenate([P[:1], new, P[-1:]])
    return P


def _masked(cv, img, poly_px, draw):
    """Draw with ``draw(roi, offset)`` inside the anti-aliased polygon ``poly_px`` only."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(poly_px.min(0)).astype(int) - 2
    x1, y1 = np.ceil(poly_px.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    roi = img[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    off = np.array([x0, y0], np.float32)
    cv.fillPoly(mask, [np.round((poly_px - off) * _ONE).astype(np.int32).reshape(-1, 1, 2)],
                255, cv.LINE_AA, _SHIFT)
    tmp = roi.copy()
    draw(tmp, off)
    a = mask.astype(np.float32)[..., None] / 255.0
    roi[:] = (roi * (1 - a) + tmp * a).astype(np.uint8)


def render_frame(idt, s, pose, scene, rng, *, size=FRAME_SIZE):
    """Render one frame.

    Parameters
    ----------
    idt : Identity
    s : ndarray, shape (16,)
        AU strengths in 0-1, columns as ``_face.AU_INDEX``.
    pose : Pose
    scene : Scene
    rng : numpy.random.Generator
        Draws the sensor noise.
    size : (int, int)
        (width, height) of the frame.

    Returns
    -------
    image : ndarray, shape (height, width, 3), uint8, BGR
    landmarks : ndarray, shape (68, 2), float32
        The projected iBUG-68 landmarks, in pixels.
    """
    P, aux = landmarks3d(idt, s)
    cv = _Canvas(size, pose, idt.background)
    L = cv.project(P)
    _draw_body(cv, idt, pose, size)
    outline = _draw_head(cv, idt, P)
    _draw_upper_marks(cv, idt, P, aux["a"])
    _draw_lower_marks(cv, idt, P, aux["a"])
    _draw_shadows(cv, idt, P, scene)
    _composite_layers(cv, outline, pose, idt.skin)
    _draw_brows(cv, idt, P)
    _draw_eyes(cv, idt, L, pose, scene)
    _draw_nose(cv, P, idt.skin)
    _draw_mouth(cv, idt, L, aux["part"], pose)
    if idt.glasses:
        _draw_glasses(cv, P)
    if scene.occluder:
        _draw_occluder(cv, scene.occluder, idt.skin)
    return _light_and_sensor(cv.img, pose, scene, rng), L.astype(np.float32)


#: 28 angles around a circle: hair, ears, nostrils, glasses, hands
_RING = np.linspace(0, 2 * np.pi, 28, endpoint=False)


def _draw_body(cv, idt, pose, size):
    """Neck and shirt (they do not turn with the head), then the hair behind the head."""
    skin, t = idt.skin, _RING
    body = _Canvas(size, Pose(0, 0, pose.roll * 0.3, pose.scale, pose.cx, pose.cy), idt.background)
    body.img = cv.img
    body.fill([[-0.2, 0.5], [0.2, 0.5], [0.24, 1.1], [-0.24, 1.1]], skin * 0.8)
    body.fill([[-1.3, 1.05], [1.3, 1.05], [1.6, 2.4], [-1.6, 2.4]], idt.shirt)
    hair_y = 0.85 if idt.long_hair else 0.25
    if idt.hairline > -0.9:
        back = np.stack([0.62 * idt.face_w * np.cos(t), -0.2 + 0.5 * (hair_y + 0.85) * np.sin(t)
                         + 0.5 * (hair_y - 0.85) * (np.sin(t) > 0), np.full_like(t, -0.45)], 1)
        cv.fill(back, idt.hair)


def _draw_head(cv, idt, P):
    """Face (jaw + forehead dome), ears and hairline; return the face outline (face units)."""
    skin, t = idt.skin, _RING
    # Face outline: the jaw plus a forehead dome.
    th = np.linspace(0, np.pi, 13)[1:-1]
    fw = 0.5 * idt.face_w * 0.98
    dome = np.stack([fw * np.cos(th), 0.02 - idt.forehead_h * np.sin(th) ** 0.8,
                     -0.3 + 0.55 * np.sin(th)], 1)
    outline = np.concatenate([P[:17], dome], 0)
    cv.fill(outline, skin)
    # Ears.
    for sx in (-1, 1):
        cv.fill(np.stack([sx * (0.5 * idt.face_w + 0.035 * (1 + np.cos(t[::2]))) ,
                          0.1 + 0.11 * np.sin(t[::2]), np.full(14, -0.3)], 1), skin * 0.92)
    # Hairline / fringe over the top of the forehead.
    if idt.hairline > -0.9:
        xs = np.linspace(-fw * 1.02, fw * 1.02, 11)
        front = np.stack([xs, idt.hairline + 0.06 * (xs / fw) ** 2 * 2, np.full(11, 0.25)], 1)
        top = np.stack([fw * 1.08 * np.cos(th[::-1] * 0 + np.linspace(np.pi, 0, 11)),
                        0.02 - (idt.forehead_h + 0.06) * np.sin(np.linspace(np.pi, 0, 11)),
                        np.full(11, 0.0)], 1)
        cv.fill(np.concatenate([front, top[::-1]], 0), idt.hair)
    return outline


def _draw_upper_marks(cv, idt, P, a):
    """Soft-layer marks of the upper face: age lines, AU1/2 forehead, AU4 furrows, AU9 nose, eyes'.

    ``a`` holds the AU activations; the eyes' surroundings carry AU6 crow's feet and cheek
    bulge, the AU6/7 infraorbital furrow and the upper-lid crease (AU5, AU7).
    """
    age = idt.age
    by = 0.5 * (P[19, 1] + P[24, 1])
    fh_base = 0.45 * age
    for j, dy in enumerate((-0.1, -0.15, -0.2)):
        y = by + dy - 0.02 * j
        cv.soft("dark", fh_base * 0.6 + 0.95 * a["AU01"], _arc(-0.15, 0.15, y, 0.012), 0.011)
        for sx in (-1, 1):
            v = fh_base * 0.5 + 0.95 * a["AU02"] + 0.3 * a["AU01"]
            cv.soft("dark", v, _arc(sx * 0.1, sx * 0.36, y + 0.015, -0.01), 0.011)
    # AU4: vertical furrows between the brows, and bunching at the nose root.
    for sx in (-1, 1):
        x = sx * (0.03 + 0.01 * (1 - a["AU04"]))
        cv.soft("dark", 1.05 * a["AU04"] + 0.15 * age, [[x, by - 0.07, 0.3], [x * 0.8, by + 0.07, 0.3]], 0.012)
    cv.soft("dark", 0.7 * a["AU04"] + 0.5 * a["AU09"], _arc(-0.05, 0.05, by + 0.1, 0.01), 0.01)
    # AU9: transverse wrinkles over the nose bridge.
    for yy in (0.06, 0.1, 0.14):
        cv.soft("dark", 1.0 * a["AU09"], _arc(-0.055, 0.055, yy, -0.012, z=0.4), 0.01)
    # Eyes' surroundings: AU6 crow's feet and cheek bulge, AU6/7 infraorbital furrow.
    for side, (o, i_) in ((-1, (36, 39)), (1, (45, 42))):
        ox, oy = P[o, 0], P[o, 1]
        for ang in (-0.45, 0.0, 0.45):
            d = np.array([np.cos(ang), np.sin(ang)]) * 0.09
            cv.soft("dark", 1.4 * a["AU06"] + 0.25 * age,
                    [[ox + side * 0.02, oy, 0.1], [ox + side * (0.02 + d[0]), oy + d[1], 0.05]], 0.01)
        ex = 0.5 * (P[o, 0] + P[i_, 0])
        ly = P[41 if side < 0 else 46, 1]
        cv.soft("dark", 1.3 * a["AU06"] + 0.55 * a["AU07"] + 0.15 * age,
                _arc(ex - 0.08, ex + 0.08, ly + 0.035, -0.015, z=0.22), 0.014)
        cv.blob("light", 1.0 * a["AU06"] + 0.25 * a["AU12"], (ex + side * 0.02, ly + 0.09 - 0.04 * a["AU06"]),
                (0.08, 0.04))
        cv.blob("dark", 0.3 * a["AU06"], (ex + side * 0.03, ly + 0.15), (0.08, 0.02))
        # upper-lid crease; hidden by AU5 (lid raised into the orbit), deeper with AU7
        cv.soft("dark", 0.45 * (1 - a["AU05"]) + 0.2 * a["AU07"],
                _arc(P[o, 0] * 0.95 + P[i_, 0] * 0.05, P[i_, 0], P[37, 1] - 0.03, 0.008, z=0.22), 0.008)


def _draw_lower_marks(cv, idt, P, a):
    """Soft-layer marks of the lower face: nasolabial furrows (AU12, AU10, AU9, AU6, AU20),
    AU15 marionette lines, AU20 / AU23 stretch lines, AU14 dimples, AU24 and AU10 bulges,
    AU17 chin."""
    age = idt.age
    # Nasolabial furrows: AU12 (curved out), AU10 and AU9 (deep, straighter), AU6 a little.
    nl_v = 0.25 * age + 1.0 * max(a["AU12"], a["AU10"], 0.8 * a["AU09"], 0.35 * a["AU06"], 0.4 * a["AU20"])
    for sx, wing, corner in ((-1, 31, 48), (1, 35, 54)):
        w_, c_ = P[wing], P[corner]
        top = [w_[0] + sx * 0.03, w_[1] - 0.01, 0.35]
        mid = [c_[0] + sx * (0.035 + 0.02 * a["AU12"]), 0.5 * (w_[1] + c_[1]) + 0.01, 0.3]
        bot = [c_[0] + sx * (0.045 + 0.01 * a["AU20"]), c_[1] + 0.06, 0.25]
        cv.soft("dark", nl_v, [top, mid, bot], 0.014)
        # AU15 marionette lines, AU20 short stretch lines, AU24 bulge above the lip.
        cv.soft("dark", 1.5 * a["AU15"], [[c_[0], c_[1] + 0.02, 0.27], [c_[0] + sx * 0.025, c_[1] + 0.12, 0.2]], 0.014)
        cv.soft("dark", 1.4 * a["AU20"] + 0.4 * a["AU23"],
                [[c_[0] + sx * 0.015, c_[1] - 0.025, 0.27], [c_[0] + sx * 0.02, c_[1] + 0.025, 0.27]], 0.009)
        # AU14 (dimpler): a dimple and a short crescent just beyond each tightened corner
        cv.blob("dark", 1.1 * a["AU14"], (c_[0] + sx * 0.035, c_[1] + 0.005), (0.012, 0.02))
        cv.soft("dark", 0.9 * a["AU14"],
                [[c_[0] + sx * 0.02, c_[1] - 0.03, 0.27], [c_[0] + sx * 0.045, c_[1], 0.26],
                 [c_[0] + sx * 0.025, c_[1] + 0.03, 0.27]], 0.008)
    cv.blob("light", 0.7 * a["AU24"] + 0.2 * a["AU23"], (0, P[51, 1] - 0.045), (0.1, 0.02))
    cv.blob("dark", 0.5 * a["AU10"] + 0.2 * a["AU09"], (0, P[33, 1] + 0.03), (0.03, 0.015))
    # AU17: chin boss raised (highlight), dimpled skin, a deeper furrow under the lower lip.
    chin = P[8]
    cv.soft("dark", 0.2 + 0.9 * a["AU17"] + 0.2 * a["AU24"],
            _arc(-0.08, 0.08, P[57, 1] + 0.04 + 0.5 * (chin[1] - P[57, 1] - 0.18), 0.012, z=0.3), 0.013)
    cv.blob("light", 0.65 * a["AU17"], (0, chin[1] - 0.09), (0.08, 0.05))
    if a["AU17"] > 0.05:
        for dx, dy in idt.chin_dots:
            cv.blob("dark", 0.8 * a["AU17"], (dx, chin[1] - 0.12 + dy), (0.008, 0.008))


def _draw_shadows(cv, idt, P, scene):
    """Broad shadows on the blurriest layer: the beard, and the nose's side away from the light."""
    # Beard shadow.
    if idt.beard:
        jaw = P[3:14].copy()
        jaw[:, 1] += 0.02
        upper = np.stack([P[13:2:-1, 0] * 0.85, np.full(11, P[33, 1] + 0.08), np.full(11, 0.3)], 1)
        cv.fill(np.concatenate([jaw, upper], 0)[:, :2], 255 * idt.beard * 0.6, layer="shade")
    # Light from one side: the far side of the nose and face darker.
    lx = np.cos(scene.light_dir)
    nose_side = np.array([[0, 0.02], [0, P[30, 1]], [-np.sign(lx) * 0.09, P[31, 1]],
                          [-np.sign(lx) * 0.06, 0.1]])
    cv.fill(nose_side, 120 * scene.light_k * abs(lx), layer="shade")


def _composite_layers(cv, outline, pose, skin):
    """Blur the soft layers and multiply them into the image, over the head's bounding box only."""
    import cv2

    # Soft layers in: blurred (skin texture is smooth), darkening and lightening the skin. Only
    # the head's bounding box can hold marks, so only it is composited (most of the cost).
    sig = max(0.6, 0.008 * pose.scale)
    h, w = cv.img.shape[:2]
    box = cv.project(outline)
    m = int(3 * 2.5 * sig) + 2  # the widest blur's reach
    x0, y0 = np.maximum(np.floor(box.min(0)).astype(int) - m, 0)
    x1, y1 = np.minimum(np.ceil(box.max(0)).astype(int) + m, [w, h])
    if x1 > x0 + 1 and y1 > y0 + 1:
        roi = cv.img[y0:y1, x0:x1]
        dark = cv2.GaussianBlur(cv.dark[y0:y1, x0:x1], (0, 0), sig).astype(np.float32)
        dark += cv2.GaussianBlur(cv.shade[y0:y1, x0:x1], (0, 0), 2.5 * sig).astype(np.float32)
        light = cv2.GaussianBlur(cv.light[y0:y1, x0:x1], (0, 0), 2.5 * sig).astype(np.float32)
        f = roi.astype(np.float32) * (1.0 - dark * (0.55 / 255.0))[..., None]
        f += light[..., None] * (0.2 / 255.0 * skin)[None, None, :]
        roi[:] = np.clip(f, 0, 255).astype(np.uint8)


def _draw_brows(cv, idt, P):
    """The brows, crisp, as thick smoothed polygons along the brow landmarks."""
    for lo_, hi_ in ((17, 22), (22, 27)):
        b = P[lo_:hi_]
        thick = idt.brow_th * np.array([0.55, 0.9, 1.0, 1.0, 0.9])
        if lo_ == 22:
            thick = thick[::-1]
        poly = np.concatenate([b - [0, 1, 0] * thick[:, None] * 0.5, (b + [0, 1, 0] * thick[:, None] * 0.5)[::-1]])
        cv.fill(_smooth(poly, it=1), idt.brow)


def _draw_eyes(cv, idt, L, pose, scene):
    """Each eye inside its lid outline: white, iris and pupil following the gaze; the lid lines."""
    import cv2

    skin = idt.skin
    for rng_i, side in ((range(36, 42), -1), (range(42, 48), 1)):
        eye_px = _smooth(L[list(rng_i)], it=2)
        ctr = 0.5 * (L[rng_i[0]] + L[rng_i[3]])
        ew = np.linalg.norm(L[rng_i[3]] - L[rng_i[0]])
        r = idt.iris_r * pose.scale
        gaze = np.array(scene.gaze) * ew + np.array([np.sin(np.radians(pose.yaw)) * r * 0.6, 0])
        ic = ctr + gaze

        def draw_eye(roi, off, ic=ic, r=r):
            roi[:] = np.array([225, 232, 238]) * (0.6 + 0.4 * scene.gain)
            c = np.round((ic - off) * _ONE).astype(int)
            cv2.circle(roi, (int(c[0]), int(c[1])), int(r * _ONE), tuple(float(v) for v in idt.iris),
                       -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(roi, (int(c[0]), int(c[1])), int(r * 0.45 * _ONE), (10, 10, 10), -1, cv2.LINE_AA, _SHIFT)

        _masked(cv2, cv.img, eye_px, draw_eye)
        upper = _smooth(L[[rng_i[0], rng_i[1], rng_i[2], rng_i[3]]], closed=False)
        lower = _smooth(L[[rng_i[3], rng_i[4], rng_i[5], rng_i[0]]], closed=False)
        cv.line(upper, (25, 25, 30), 0.012, projected=True)
        cv.line(lower, skin * 0.6, 0.006, projected=True)


def _draw_nose(cv, P, skin):
    """Nose: soft side lines, nostrils and the line of its base."""
    t = _RING
    for sx, wing in ((-1, 31), (1, 35)):
        cv.line([[sx * 0.035, 0.1, 0.4], [sx * 0.05, P[30, 1] - 0.03, 0.45], P[wing]], skin * 0.8, 0.006)
        n = 0.5 * (P[wing] + P[32 if sx < 0 else 34])
        cv.fill(np.stack([n[0] + 0.025 * np.cos(t[::2]), n[1] - 0.006 + 0.011 * np.sin(t[::2]),
                          np.full(14, 0.42)], 1), skin * 0.35)
    cv.line(P[31:36], skin * 0.65, 0.007)


def _draw_mouth(cv, idt, L, part, pose):
    """Lips, then (opened by ``part``) the opening with teeth, else the line where the lips meet."""
    import cv2

    outer = L[48:60]
    cv.fill(_smooth(outer, it=1), idt.lip, projected=True)
    inner = L[60:68]
    if part > 0.004:
        def draw_mouth(roi, off):
            roi[:] = (35, 25, 45)
            teeth_h = 0.035 * pose.scale
            top = inner[[60 - 60, 61 - 60, 62 - 60, 63 - 60, 64 - 60]] - off
            band = np.concatenate([top, (top + [0, teeth_h])[::-1]])
            cv2.fillPoly(roi, [np.round(band * _ONE).astype(np.int32).reshape(-1, 1, 2)],
                         (215, 225, 230), cv2.LINE_AA, _SHIFT)
            if part > 0.07:
                bot = inner[[4, 5, 6, 7, 0]] - off
                band = np.concatenate([bot, (bot - [0, teeth_h * 0.7])[::-1]])
                cv2.fillPoly(roi, [np.round(band * _ONE).astype(np.int32).reshape(-1, 1, 2)],
                             (190, 200, 205), cv2.LINE_AA, _SHIFT)

        _masked(cv2, cv.img, _smooth(inner, it=1), draw_mouth)
    else:
        cv.line(_smooth(inner[[0, 1, 2, 3, 4]], closed=False), idt.lip * 0.45, 0.009, projected=True)


def _draw_glasses(cv, P):
    """Two rims and the bridge between them."""
    t = _RING
    for i0, i1 in ((36, 39), (42, 45)):
        c = 0.5 * (P[i0] + P[i1])
        box = np.stack([c[0] + 0.12 * np.cos(t), c[1] + 0.065 * np.sin(t), np.full_like(t, 0.3)], 1)
        cv.line(box, (30, 30, 30), 0.012, closed=True)
    cv.line([[-0.1, -0.01, 0.32], [0, -0.03, 0.34], [0.1, -0.01, 0.32]], (30, 30, 30), 0.012)


def _draw_occluder(cv, occluder, skin):
    """A hand in front of the mouth or cheek, or an object across the face (face units)."""
    t = _RING
    kind, ox, oy, size_ = occluder
    if kind == "hand":
        hand = np.stack([ox + size_ * np.cos(t), oy + 0.8 * size_ * np.sin(t), np.full_like(t, 0.7)], 1)
        cv.fill(hand, skin * 0.95)
        for f in range(4):
            fx = ox - size_ * 0.6 + f * size_ * 0.4
            cv.line([[fx, oy - 0.6 * size_, 0.7], [fx, oy - 1.5 * size_, 0.7]], skin * 0.9, 0.06)
    else:
        cv.fill([[ox - size_, oy - 0.05], [ox + size_, oy - 0.03], [ox + size_, oy + 0.05],
                 [ox - size_, oy + 0.03]], (60, 70, 80))


def _light_and_sensor(img_u8, pose, scene, rng):
    """Return the final uint8 image: light gradient, colour and gain, camera blur, sensor noise."""
    import cv2

    h, w = img_u8.shape[:2]
    ux, uy = np.cos(scene.light_dir), np.sin(scene.light_dir)
    xs = (np.arange(w, dtype=np.float32) - pose.cx) * (scene.light_k * ux / (0.6 * pose.scale))
    ys = (np.arange(h, dtype=np.float32) - pose.cy) * (scene.light_k * uy / (0.6 * pose.scale))
    grad = np.clip(1.0 + xs[None, :] + ys[:, None], 0.35, 1.7) * scene.gain
    img = img_u8.astype(np.float32)
    img *= grad[..., None] * scene.tint[None, None, :]
    if scene.blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), scene.blur)
    if scene.noise > 0:
        img += noise_field(rng, h, w) * scene.noise
    return np.clip(img, 0, 255).astype(np.uint8)


_NOISE_BANK = {}
_BANK_SIZE, _BANK_PAD = 8, 24


def noise_field(rng, h, w):
    """Unit gaussian sensor noise (h, w, 3), float32, cut at a random offset from a small bank.

    Drawing a fresh field each frame costs more than the rest of the frame; a random window of
    one of 8 larger fields is as good to a classifier and deterministic for ``rng``.
    """
    bank = _NOISE_BANK.get((h, w))
    if bank is None:
        g = np.random.default_rng(20240601)
        bank = g.standard_normal((_BANK_SIZE, h + _BANK_PAD, w + _BANK_PAD, 3), dtype=np.float32)
        _NOISE_BANK[(h, w)] = bank
    k, dy, dx = rng.integers(0, [_BANK_SIZE, _BANK_PAD, _BANK_PAD])
    return bank[k, dy:dy + h, dx:dx + w]
