"""Domains of the synthetic renderer: the studio, camera and people a data set was recorded with.

A domain changes how faces look, never what they do: the AU process (``_timeline``) is the
same in every domain, so a classifier trained in one domain and tested in another meets the
same actions under other conditions, which is what a cross-data-set evaluation measures.

========= ====================================================================================
domain    what differs
========= ====================================================================================
``a``     the default (every embedded set so far): a near-frontal camera, soft light, faces
          about 110-135 px wide in a 320 x 256 frame
``b``     a second studio: a camera 12 degrees to the subject's right and above (yaw and
          pitch offsets, head turns 1.6x wider), a strong warm side light and a darker room,
          a farther, softer camera (faces about 0.65x the size, more blur and sensor noise),
          and another pool of people (other identities, darker skin tones on average, more
          glasses and beards, older)
========= ====================================================================================

Domain ``a`` draws exactly what the generator drew before domains existed (same seed, same
bytes); domain ``b`` changes the drawn values afterwards, with its own random stream.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from featbench.core.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Domain:
    """How a domain changes a subject's drawn scene and identity (module docstring).

    Attributes
    ----------
    name : str
    identity_offset : int
        Added to the subject index of the identity's random stream: another pool of people.
    yaw_offset, pitch_offset : float
        Where the camera stands (degrees).
    pose_gain : float
        Scales head turns (yaw, pitch, roll) around the offsets.
    scale_gain : float
        Scales the face's size in the frame (a farther camera).
    light_k_add : float
        Added to the strength of the light gradient across the face.
    gain_scale : float
        Scales the overall brightness.
    tint : tuple of float
        Multiplies the light's colour (BGR).
    blur_add : float
        Added to the camera blur (pixels).
    noise_scale : float
        Scales the sensor noise.
    skin_shift : float
        Moves skin tones toward the darker end (0: unchanged, 1: the darkest).
    glasses, beard : float
        Probability that a person wears glasses, has a beard.
    age_power : float
        A person's age is ``u ** age_power`` (smaller: older).
    """

    name: str
    identity_offset: int = 0
    yaw_offset: float = 0.0
    pitch_offset: float = 0.0
    pose_gain: float = 1.0
    scale_gain: float = 1.0
    light_k_add: float = 0.0
    gain_scale: float = 1.0
    tint: tuple = (1.0, 1.0, 1.0)
    blur_add: float = 0.0
    noise_scale: float = 1.0
    skin_shift: float = 0.0
    glasses: "float | None" = None
    beard: "float | None" = None
    age_power: "float | None" = None

    @property
    def is_default(self):
        """Whether this domain leaves every draw as it is (``a``)."""
        return self == DOMAINS["a"]

    def scene(self, video, rng):
        """Change ``video``'s drawn pose, light and camera (a ``SubjectVideo``) in place."""
        if self.is_default:
            return
        video.yaw = self.yaw_offset + self.pose_gain * video.yaw
        video.pitch = self.pitch_offset + self.pose_gain * video.pitch
        video.roll = self.pose_gain * video.roll
        video.scale = self.scale_gain * video.scale
        video.light_k = np.clip(video.light_k + self.light_k_add, 0, 0.95)
        # the side light comes from the camera's side, turning a little over the video
        video.light_dir = np.pi + 0.3 * (video.light_dir - video.light_dir.mean()) + rng.uniform(-0.3, 0.3)
        video.gain = np.clip(video.gain * self.gain_scale, 0.3, 1.4)
        video.tint = (video.tint * np.asarray(self.tint, np.float32)).astype(np.float32)
        video.blur = video.blur + self.blur_add
        video.noise = video.noise * self.noise_scale

    def identity(self, idt, rng):
        """Return identity ``idt`` as this domain's pool of people draws it."""
        if self.is_default:
            return idt
        from featbench.core.synth._face import _SKIN

        changes = {}
        if self.skin_shift:
            w = self.skin_shift * rng.uniform(0.3, 1.0)  # toward the darkest tone
            changes["skin"] = (idt.skin * (1 - w) + _SKIN[-1] * w).astype(np.float32)
            changes["lip"] = (changes["skin"] * np.array([0.62, 0.55, 0.92])
                              + np.array([20, 10, 25])).astype(np.float32)
        if self.glasses is not None:
            changes["glasses"] = bool(rng.random() < self.glasses)
        if self.beard is not None:
            changes["beard"] = float(rng.uniform(0.3, 0.7)) if rng.random() < self.beard else 0.0
        if self.age_power is not None:
            changes["age"] = float(rng.random() ** self.age_power)
        return dataclasses.replace(idt, **changes)


#: the renderer's domains, by name (module docstring)
DOMAINS = {
    "a": Domain("a"),
    "b": Domain("b", identity_offset=1000, yaw_offset=-12.0, pitch_offset=6.0, pose_gain=1.6,
                scale_gain=0.65, light_k_add=0.3, gain_scale=0.8, tint=(0.82, 0.97, 1.12),
                blur_add=0.6, noise_scale=1.6, skin_shift=0.35, glasses=0.35, beard=0.35,
                age_power=0.7),
}


def get_domain(name):
    """Return the :class:`Domain` called ``name``; UsageError listing the choices otherwise."""
    if name not in DOMAINS:
        raise UsageError(did_you_mean(str(name), tuple(DOMAINS), what="domain",
                                      hint="choices: " + ", ".join(DOMAINS)))
    return DOMAINS[name]
