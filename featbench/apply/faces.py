"""Faces in frames, for ``featbench predict``: detect, align, track.

Per decoded frame (:mod:`featbench.core.footage`): dlib finds the faces and fits 68 landmarks
(``hog`` or the MMOD ``cnn`` detector), and each face is aligned and cut into region boxes as
``featbench align`` did for the run's training faces (:func:`featbench.core.faces.align_face`,
:func:`featbench.core.faces.region_boxes`). This runs in worker threads
(:mod:`featbench.apply.pipeline`): dlib and OpenCV release the GIL.

Faces: the largest face of each frame (``face_id`` 0), or with ``all_faces`` every face, each
with a ``face_id`` that follows it from frame to frame (:class:`Tracker`: boxes matched by
overlap).
"""

from dataclasses import dataclass, field

from featbench.core import faces as F
from featbench.core.errors import UsageError

#: a face keeps its face_id when its box overlaps the previous frame's by at least this IoU
TRACK_IOU = 0.3


@dataclass
class Face:
    """One detected face: its box in the frame, the detector's score, the aligned face and its
    region boxes (``featbench align``'s), and the ``face_id`` the :class:`Tracker` gives it."""

    box: tuple
    confidence: float
    image: object  # aligned (S, S, 3) uint8
    boxes: object  # (3, 4) region boxes
    face_id: int = 0


@dataclass
class FrameFaces:
    """A decoded frame and the faces found in it (none: the frame's row has ``success = 0``)."""

    frame: object  # footage.Frame, image dropped once detected
    faces: list = field(default_factory=list)


def detect_frame(frame, *, detector, all_faces, size):
    """Faces of one frame, aligned as ``featbench align`` aligns them (runs in a worker thread)."""
    found = []
    if frame.image is not None:
        for box, conf, lm in F.detect_faces(frame.image, detector=detector, all_faces=all_faces):
            try:
                face, M = F.align_face(frame.image, lm, size=size)
                boxes = F.region_boxes(F.transform_points(lm, M), image_size=size)
            except ValueError:  # degenerate landmarks: not a usable face
                continue
            found.append(Face(box, conf, face, boxes))
    frame.image = None  # the frame is not needed any more: keep memory flat
    return FrameFaces(frame, found)


def _iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Give each face a face_id that follows it: greedy matching of boxes by overlap."""

    def __init__(self):
        self.sequence, self.prev, self.next_id = None, [], 0

    def assign(self, item):
        if item.frame.sequence != self.sequence:  # another input: start over
            self.sequence, self.prev, self.next_id = item.frame.sequence, [], 0
        pairs = sorted(((_iou(f.box, box), i, fid) for i, f in enumerate(item.faces)
                        for fid, box in self.prev), reverse=True)
        taken_f, taken_id = set(), set()
        for iou, i, fid in pairs:
            if iou < TRACK_IOU or i in taken_f or fid in taken_id:
                continue
            item.faces[i].face_id = fid
            taken_f.add(i)
            taken_id.add(fid)
        for i, f in enumerate(item.faces):
            if i not in taken_f:
                f.face_id, self.next_id = self.next_id, self.next_id + 1
        self.prev = [(f.face_id, f.box) for f in item.faces]


def check_alignment(model, size):
    """Refuse a run whose faces were aligned by another template version, or at an unusable size.

    Raises
    ------
    UsageError
    """
    al = model.alignment or {}
    tv = al.get("template_version")
    if tv is not None and int(tv) != F.TEMPLATE_VERSION:
        raise UsageError(f"run {model.run} was trained on faces aligned with template version {tv}; "
                         f"this featbench aligns with version {F.TEMPLATE_VERSION}: retrain the run")
    if size < 16:
        raise UsageError(f"run {model.run}: aligned face size {size} is not usable")
