"""What happens over a subject's video: AU episodes, head motion, light, occlusion.

AU intensities come from *events*: an event is one facial action (a smile, a frown, talking...)
with onset, apex and offset phases; each of its AUs ramps to its own peak. Overlapping events
combine by taking the maximum. Event kinds and their rates are tuned so that the share of
frames with intensity >= 2 follows DISFA's per-AU positive counts (PROTOCOL.md), and AUs
co-occur as they do in real faces (6 with 12, 1 with 2, 25 with 26, 4 with 7, 9 with 10...).
"""

import numpy as np

from featbench.core.synth._face import AU_INDEX

#: DISFA's positives per AU (intensity >= 2) out of 130,814 frames; the target base rates
DISFA_POSITIVES = {"AU01": 6506, "AU02": 5644, "AU04": 19933, "AU05": 1150, "AU06": 10327,
                   "AU09": 5473, "AU12": 16851, "AU15": 2682, "AU17": 6588, "AU20": 2941,
                   "AU25": 36247, "AU26": 11533}
DISFA_FRAMES = 130814

# kind: (events per 100 frames, {AU: (relative peak, probability of taking part)}, apex frames)
EVENTS = {
    "smile":     (0.55, {"AU12": (1.0, 1.0), "AU06": (0.85, 0.45), "AU25": (0.6, 0.45),
                         "AU26": (0.5, 0.15), "AU10": (0.4, 0.15)}, (6, 30)),
    "laugh":     (0.12, {"AU12": (1.0, 1.0), "AU06": (1.0, 1.0), "AU25": (1.0, 1.0),
                         "AU26": (0.9, 0.9), "AU07": (0.6, 0.5), "AU10": (0.5, 0.3)}, (4, 16)),
    "brows_up":  (0.33, {"AU01": (1.0, 1.0), "AU02": (1.05, 0.95), "AU05": (0.7, 0.15),
                         "AU25": (0.5, 0.25), "AU26": (0.5, 0.15)}, (3, 14)),
    "sad":       (0.12, {"AU01": (1.0, 1.0), "AU04": (0.8, 0.7), "AU15": (1.0, 0.8),
                         "AU17": (0.8, 0.6)}, (4, 18)),
    "frown":     (0.7, {"AU04": (1.0, 1.0), "AU07": (0.8, 0.6), "AU17": (0.6, 0.2),
                         "AU24": (0.6, 0.15)}, (6, 30)),
    "disgust":   (0.36, {"AU09": (1.0, 1.0), "AU10": (0.8, 0.7), "AU04": (0.7, 0.6),
                         "AU17": (0.6, 0.35), "AU25": (0.5, 0.3), "AU15": (0.5, 0.2)}, (3, 14)),
    "fear":      (0.04, {"AU01": (1.0, 1.0), "AU02": (0.8, 0.8), "AU04": (0.7, 0.7),
                         "AU05": (0.9, 0.8), "AU20": (1.0, 0.9), "AU25": (0.8, 0.9),
                         "AU26": (0.6, 0.5)}, (3, 10)),
    "talk":      (1.25, {"AU25": (1.0, 1.0), "AU26": (0.75, 0.4), "AU10": (0.4, 0.15),
                        "AU20": (0.4, 0.1)}, (8, 30)),
    "press":     (0.2, {"AU24": (1.0, 1.0), "AU23": (0.7, 0.6), "AU17": (0.8, 0.6)}, (4, 16)),
    "stretch":   (0.22, {"AU20": (1.0, 1.0), "AU25": (0.6, 0.5), "AU15": (0.4, 0.2)}, (2, 6)),
    "squint":    (0.3, {"AU07": (1.0, 1.0), "AU06": (0.9, 0.8), "AU04": (0.5, 0.3)}, (4, 20)),
    "tight":     (0.12, {"AU23": (1.0, 1.0), "AU17": (0.7, 0.4), "AU24": (0.5, 0.3)}, (3, 12)),
    "chin":      (0.12, {"AU17": (1.0, 1.0), "AU15": (0.6, 0.35)}, (3, 12)),
    "lid_up":    (0.15, {"AU05": (1.0, 1.0)}, (1, 3)),
}


#: BP4D's extra kind of action: the dimpler (AU14), frequent in its tasks (embarrassment,
#: suppressed smiles), with the lip pressor and a weak smile
BP4D_EVENTS = {
    "dimple":    (0.5, {"AU14": (1.0, 1.0), "AU12": (0.5, 0.3), "AU24": (0.5, 0.25),
                        "AU17": (0.5, 0.2)}, (6, 30)),
}
#: what BP4D's eight tasks elicit (Zhang et al. 2014): multipliers of the event rates
BP4D_TASK_RATES = {
    1: {"smile": 2.0, "laugh": 3.0, "talk": 1.5},                       # interview, a joke
    2: {"sad": 4.0, "chin": 2.0},                                       # a sad film
    3: {"brows_up": 3.0, "fear": 2.0, "lid_up": 2.0},                   # a startle
    4: {"smile": 1.5, "press": 2.0, "dimple": 2.5},                     # embarrassment
    5: {"fear": 4.0, "brows_up": 1.5, "stretch": 2.0},                  # a threat
    6: {"frown": 2.0, "squint": 3.0, "tight": 2.0},                     # pain (cold water)
    7: {"frown": 2.5, "press": 2.0, "tight": 2.0},                      # anger (an insult)
    8: {"disgust": 4.0},                                                # a smell
}


def _events(rng, n_frames, expressive, index, phase, *, kinds=EVENTS, rates=None):
    """Yield (start, onset, apex, offset, {au: peak}) for subject ``index``.

    Three quarters of each kind's events are spread evenly over the subjects (subject ``i``
    gets ``floor(m (i + 1) + phase) - floor(m i + phase)`` of them): with short videos, Poisson
    counts alone would leave a rare AU in one or two subjects only, and a 12-subject training
    split often without a single positive. The last quarter is Poisson, scaled by how
    expressive the subject is for that kind of action.
    """
    # Short videos get shorter, more frequent actions at the same base rates: more subjects
    # then show each AU (a 120-frame video would otherwise hold one or two events in all).
    squeeze = float(np.clip(n_frames / 400.0, 0.3, 1.0))
    for kind, (rate, members, (a0, a1)) in kinds.items():
        if rates:
            rate = rate * rates.get(kind, 1.0)
        b0, b1 = max(1, int(round(a0 * squeeze))), max(1, int(round(a1 * squeeze)))
        more = (5.0 + 0.5 * (a0 + a1)) / (5.0 + 0.5 * (b0 + b1))  # ramps ~ 5 frames of the event
        a0, a1 = b0, b1
        m = more * rate / 100.0 * (n_frames + 30)  # + 30: events that start before frame 0 or run past the end
        ph, order = phase[kind]
        slot = int(order[index % SPREAD_SLOTS])
        spread = int(np.floor(0.75 * m * (slot + 1) + ph) - np.floor(0.75 * m * slot + ph))
        n = spread + rng.poisson(0.25 * m * expressive[kind])
        for _ in range(n):
            start = int(rng.integers(-10, n_frames + 5))
            onset, offset = int(rng.integers(2, 8)), int(rng.integers(2, 10))
            apex = int(rng.integers(a0, a1 + 1))
            # Peak intensity: many events are weak (a trace, 1-2), few reach 5.
            peak = float(np.clip(rng.gamma(3.0, 0.9), 0.6, 5.0))
            aus = {}
            for au, (rel, p) in members.items():
                if au == next(iter(members)) or rng.random() < p:
                    aus[au] = float(np.clip(peak * rel * rng.uniform(0.8, 1.2), 0, 5))
            yield start, onset, apex, offset, aus


#: subjects' slots in the even spread of events are a random permutation of this many
SPREAD_SLOTS = 64


def event_phases(rng):
    """Per event kind, the phase and subject order of the even spread of events (one per data set).

    The order is random so that which subjects show a rare action does not follow subject ids
    (a fixed split of ids would otherwise alias with the spread's period).
    """
    return {k: (float(rng.random()), rng.permutation(SPREAD_SLOTS)) for k in EVENTS}


def au_timeline(rng, n_frames, *, index=0, phase=None, rates=None, extra=None):
    """Return continuous AU intensities, shape (n_frames, len(AU_INDEX)), float32 in 0-5.

    ``index`` is the subject's position and ``phase`` the data set's :func:`event_phases`.
    ``rates`` multiplies the rate of some kinds of event (``{"smile": 2.0}``: a task that
    elicits smiles). ``extra`` = ``(rng, kinds)`` adds event kinds shaped as :data:`EVENTS`
    (BP4D's AU14: :data:`BP4D_EVENTS`), drawn from their own ``rng`` so that the other
    events are drawn exactly as without them.
    """
    out = np.zeros((n_frames, len(AU_INDEX)), np.float32)
    phase = phase or {k: (0.5, np.arange(SPREAD_SLOTS)) for k in EVENTS}
    # Subjects differ in how much they show of each kind of action (DISFA: some never smile).
    expressive = {k: float(rng.lognormal(0.0, 0.6)) for k in EVENTS}
    _add_events(out, _events(rng, n_frames, expressive, index, phase, rates=rates))
    if extra:
        xrng, kinds = extra
        expressive = {k: float(xrng.lognormal(0.0, 0.6)) for k in kinds}
        phase = {k: (0.5, np.arange(SPREAD_SLOTS)) for k in kinds}
        _add_events(out, _events(xrng, n_frames, expressive, index, phase, kinds=kinds, rates=rates))
    return out


def _add_events(out, events):
    """Add each event's AU envelopes to ``out`` (frames, AUs), combining overlaps by maximum."""
    t = np.arange(len(out), dtype=np.float32)
    for start, onset, apex, offset, aus in events:
        up = np.clip((t - start) / onset, 0, 1)
        down = np.clip((start + onset + apex + offset - t) / offset, 0, 1)
        env = np.minimum(up, down)
        env = env * env * (3 - 2 * env)  # smooth onset and offset
        if not env.any():
            continue
        for au, peak in aus.items():
            j = AU_INDEX[au]
            np.maximum(out[:, j], peak * env, out=out[:, j])


def intensity_labels(intensity):
    """Integer intensity labels 0-5 from continuous intensities (what the label files hold)."""
    return np.clip(np.floor(np.asarray(intensity) + 0.5), 0, 5).astype(np.int8)


def smooth_noise(rng, n_frames, *, period=(20, 120), parts=3):
    """A smooth random signal in about [-1, 1]: a sum of sinusoids with random periods and phases."""
    t = np.arange(n_frames, dtype=np.float64)
    out = np.zeros(n_frames)
    for _ in range(parts):
        out += np.sin(2 * np.pi * t / rng.uniform(*period) + rng.uniform(0, 2 * np.pi))
    return (out / np.sqrt(parts / 2.0)).clip(-1.5, 1.5) / 1.5
