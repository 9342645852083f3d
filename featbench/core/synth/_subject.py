"""One synthetic subject's video: identity, AU timeline and nuisance, rendered frame by frame.

Everything random about subject ``index`` is drawn from ``SeedSequence([seed, index, stream])``,
so a subject is the same person with the same video whatever the number of subjects, the
process that renders it, or the order in which subjects are made.
"""

import numpy as np

from featbench.core.synth._domain import get_domain
from featbench.core.synth._face import canonical_shape, sample_identity, strength
from featbench.core.synth._render import FRAME_SIZE, Pose, Scene, render_frame
from featbench.core.synth._timeline import au_timeline, event_phases, smooth_noise

# random streams of a subject
_IDENTITY, _TIMELINE, _SCENE, _NOISE, _RIGHT, _DOMAIN, _EXTRA = range(7)
_DATASET = 1 << 20  # the "subject" index of draws shared by the whole data set
#: yaw (degrees) and horizontal shift (pixels) of the right camera relative to the left
RIGHT_CAMERA = (-22.0, -28.0)


def subject_rng(seed, index, stream, *extra):
    """The numpy Generator of one random stream of one subject (``extra``: more of what it is
    drawn for, e.g. a BP4D task)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream),
                                                         *map(int, extra)]))


class SubjectVideo:
    """A subject's AU intensities and per-frame pose and scene, ready to render.

    Parameters
    ----------
    seed, index : int
        The data set's seed and the subject's position (its random streams).
    n_frames : int
    difficulty : float
        Scales every nuisance (pose range, light, blur, noise, occlusion); 1 is the default.
    domain : str
        The renderer's domain (``_domain.DOMAINS``): studio, camera and pool of people.
    task : int, optional
        One of a subject's recordings (BP4D's tasks 1-8): the same person (identity stream),
        its own actions, pose and light (the other streams are drawn per task).
    rates, extra
        Passed to :func:`~featbench.core.synth._timeline.au_timeline`: per-kind multipliers of
        the event rates, and further event kinds (drawn from their own stream).
    """

    def __init__(self, seed, index, n_frames, *, difficulty=1.0, domain="a", task=None,
                 rates=None, extra=None):
        dom = get_domain(domain)
        self.identity = dom.identity(
            sample_identity(subject_rng(seed, index + dom.identity_offset, _IDENTITY)),
            subject_rng(seed, index, _DOMAIN))
        self.seed, self.index, self.task = seed, index, task
        self.intensity = au_timeline(self._rng(_TIMELINE), n_frames, index=index,
                                     phase=event_phases(subject_rng(seed, _DATASET, _TIMELINE)),
                                     rates=rates,
                                     extra=(self._rng(_EXTRA), extra) if extra else None)
        self.n_frames = n_frames
        r = self._rng(_SCENE)
        d = difficulty
        u = r.uniform
        sn = lambda amp, per=(25, 140): amp * smooth_noise(r, n_frames, period=per)  # noqa: E731
        self.yaw = u(-9, 9) * d + sn(9 * d)
        self.pitch = u(-6, 6) * d + sn(6 * d)
        self.roll = u(-6, 6) * d + sn(6 * d)
        self.scale = u(108, 134) * (1 + sn(0.04 * d))
        w, h = FRAME_SIZE
        self.cx = w / 2 + u(-20, 20) * d + sn(6 * d)
        self.cy = h * 0.43 + u(-10, 10) * d + sn(4 * d)
        self.light_dir = u(0, 2 * np.pi) + sn(0.4, (80, 300))
        self.light_k = np.clip(u(0.05, 0.4) * d + sn(0.05), 0, 0.8)
        self.gain = np.clip(u(0.7, 1.15) + sn(0.06 * d, (60, 300)), 0.4, 1.4)
        self.tint = (1 + u(-0.12, 0.12, 3) * d).astype(np.float32)
        self.blur = max(0.0, u(-0.3, 1.3) * d)
        self.noise = u(1.5, 6.0) * d
        self.gaze = np.stack([sn(0.12, (15, 60)), sn(0.08, (15, 60))], 1)
        self.occluder = [()] * n_frames
        if r.random() < 0.35 * d:
            length = int(r.integers(6, 24))
            start = int(r.integers(0, max(1, n_frames - length)))
            kind = "hand" if r.random() < 0.7 else "bar"
            spot = r.integers(3)
            ox, oy, size = [(u(-0.15, 0.15), u(0.5, 0.65), u(0.12, 0.18)),
                            (u(0.2, 0.4) * r.choice([-1, 1]), u(0.25, 0.45), u(0.12, 0.18)),
                            (u(-0.2, 0.2), u(0.3, 0.7), u(0.25, 0.45))][spot]
            for f in range(start, min(n_frames, start + length)):
                self.occluder[f] = (kind, ox, oy, size)
        dom.scene(self, self._rng(_DOMAIN))

    def _rng(self, stream):
        """The Generator of one random stream of this subject (and task: BP4D's T1-T8)."""
        task = () if self.task is None else (100 + int(self.task),)
        return subject_rng(self.seed, self.index, stream, *task)

    def render(self, f, rng, *, camera="left"):
        """Render frame ``f`` (0-based); return (BGR image, (68, 2) landmarks)."""
        dyaw, dx = RIGHT_CAMERA if camera == "right" else (0.0, 0.0)
        pose = Pose(self.yaw[f] + dyaw, self.pitch[f], self.roll[f], self.scale[f],
                    self.cx[f] + dx, self.cy[f])
        scene = Scene(self.light_dir[f] + (0.3 if camera == "right" else 0.0), self.light_k[f], self.gain[f],
                      self.tint, self.blur, self.noise, tuple(self.gaze[f]), self.occluder[f])
        return render_frame(self.identity, strength(self.intensity[f]), pose, scene, rng)

    def frames(self, *, camera="left"):
        """Yield (frame, BGR image, landmarks) for every frame, with the camera's own noise."""
        rng = self._rng(_NOISE if camera == "left" else _RIGHT)
        for f in range(self.n_frames):
            img, lm = self.render(f, rng, camera=camera)
            yield f, img, lm


_TEMPLATE = None


def align_crop(image, landmarks, size):
    """Similarity-align a face to the canonical shape and crop it to ``size`` x ``size``.

    Uses the eye corners, nose and mouth corners (what ``featbench.core.align`` also uses).
    """
    import cv2

    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = canonical_shape()
    idx = [36, 39, 42, 45, 30, 33, 48, 54]
    dst = _TEMPLATE[idx] * (0.7 * size) + np.array([size / 2, 0.36 * size], np.float32)
    M = similarity(landmarks[idx], dst)
    return cv2.warpAffine(image, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def similarity(src, dst):
    """Least-squares similarity transform (2, 3) taking points ``src`` (k, 2) onto ``dst`` (k, 2).

    Closed form (Umeyama without reflection), so it is exact and deterministic, unlike RANSAC.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    den = (a ** 2).sum()
    c = (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]).sum() / den
    s = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum() / den
    R = np.array([[c, -s], [s, c]])
    return np.concatenate([R, (md - R @ ms)[:, None]], 1).astype(np.float32)
