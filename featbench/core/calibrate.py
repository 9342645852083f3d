"""Person-specific calibration: subtract each person's reference code from the person's codes.

Cross-subject AU recognition is hard mostly because faces differ at rest: a code says as much
about who the face is as about what it does. Subtracting a reference code of the same person
removes much of that identity bias (OpenFace's "dynamic" AU models subtract a running median of
each person's features; one-frame calibration subtracts one neutral frame of the same face).

=========== ==================================================================================
method      reference code of a person
=========== ==================================================================================
``none``    none: codes as extracted
``median``  the per-dimension median of the person's codes
``neutral`` the code of the person's most neutral frame, chosen without labels: the frame whose
            code is closest (Euclidean) to the person's median code. Most frames of a person
            are at rest, so the median is near neutral; unlike the median, the reference is a
            real face
=========== ==================================================================================

A *person* is a subject of a data set (all of the subject's frames with codes, in every split),
or, at predict time, a face track (all of the track's frames: like OpenFace's offline mode,
which re-predicts a video with the median it reached at the end, not the running median of the
first frames). The same rule serves training, validation and test subjects, and predict.

Nothing here reads a label: a reference is a function of the person's codes alone, so a test
subject's reference uses nothing that predict would not have on a user's footage (a poisoning
test checks it through a whole run).
"""

import numpy as np

from featbench.core.errors import UsageError, did_you_mean

CALIBRATIONS = ("none", "median", "neutral")
#: frames of a person a reference needs: from one frame it would be the frame itself (a photo
#: calibrated against itself is all zeros)
MIN_REFERENCE_FRAMES = 2
#: the run-name part of each calibration (``none``: no part)
CALIBRATION_TAGS = {"none": None, "median": "calmed", "neutral": "calneu"}


class CalibrationError(UsageError):
    """A person to calibrate has no frame to take a reference from."""


def check_calibration(method):
    """Return ``method`` (None -> ``"none"``); UsageError listing the choices if unknown."""
    method = "none" if method in (None, "") else str(method)
    if method not in CALIBRATIONS:
        raise UsageError(did_you_mean(method, CALIBRATIONS, what="calibration"))
    return method


def calibration_tag(method):
    """Return the run-name part of a calibration (``calmed``, ``calneu``; None for ``none``)."""
    return CALIBRATION_TAGS[check_calibration(method)]


def reference_code(codes, method):
    """Return the reference code of one person, shape (dims,) float32.

    Parameters
    ----------
    codes : array of shape (n, dims)
        The person's codes, n >= 1.
    method : {"median", "neutral"}

    Returns
    -------
    array of shape (dims,)
        ``median``: the per-dimension median; ``neutral``: the row closest to it (the first
        of equals).
    """
    X = np.asarray(codes, dtype=np.float32)
    if X.ndim != 2 or not len(X):
        raise CalibrationError("a reference code needs at least one frame")
    median = np.median(X, axis=0)
    if method == "median":
        return median.astype(np.float32)
    if method == "neutral":
        return X[neutral_frame(X, median)].copy()
    raise UsageError(did_you_mean(str(method), CALIBRATIONS[1:], what="calibration"))


def neutral_frame(codes, median=None):
    """Return the row index of the frame whose code is closest to the median code (first of equals)."""
    X = np.asarray(codes, dtype=np.float32)
    median = np.median(X, axis=0) if median is None else median
    return int(np.argmin(np.sum((X - median) ** 2, axis=1)))


def person_references(codes, groups, method, *, require=()):
    """Return ``{person: reference code}`` of every person in ``groups``.

    Parameters
    ----------
    codes : array of shape (n, dims)
    groups : array of shape (n,)
        The person (subject, face track) of each row.
    method : {"median", "neutral"}
    require : iterable
        Persons that must have frames among ``groups`` (those a run scores).

    Raises
    ------
    CalibrationError
        A person of ``require`` without a frame, or a person with fewer than
        :data:`MIN_REFERENCE_FRAMES`: the message names them.
    """
    groups = np.asarray(groups)
    people, counts = np.unique(groups, return_counts=True)
    present = dict(zip(people.tolist(), counts.tolist()))
    missing = [p for p in dict.fromkeys(require) if p not in present]
    few = [f"{p} ({n} frame)" for p, n in present.items() if n < MIN_REFERENCE_FRAMES]
    if missing or few:
        what = (f"no frames with codes for {_some(missing)}" if missing else
                f"fewer than {MIN_REFERENCE_FRAMES} frames with codes for {_some(few)}")
        raise CalibrationError(
            f"--calibrate {method}: {what} (a person's reference code comes from the person's "
            "own frames; extract codes for them, leave them out, or use --calibrate none)")
    return {p: reference_code(codes[groups == p], method) for p in sorted(present)}


def _some(names, n=5):
    names = [str(x) for x in names]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def calibrate(codes, groups, method, *, require=()):
    """Return ``codes`` minus each row's person's reference code, float32 (``none``: as float32).

    Parameters
    ----------
    codes : array of shape (n, dims)
    groups : array of shape (n,)
        The person of each row.
    method : {"none", "median", "neutral"}
    require : iterable
        Persons that must have frames (:func:`person_references`).

    Returns
    -------
    array of shape (n, dims) float32
        A new array; ``codes`` is not changed.
    """
    method = check_calibration(method)
    X = np.array(codes, dtype=np.float32, copy=True)
    if method == "none":
        return X
    groups = np.asarray(groups)
    refs = person_references(X, groups, method, require=require)
    for person, ref in refs.items():
        X[groups == person] -= ref
    return X


def persons_of(keys):
    """Return each frame key's person, ``"<subject>/<video>"``: one video of a subject is one
    face track (``keys``: the structured frame keys of :data:`featbench.core.frames.KEY_DTYPE`)."""
    subject = np.char.decode(np.asarray(keys["subject"]).astype("S"), "utf-8")
    video = np.char.decode(np.asarray(keys["video"]).astype("S"), "utf-8")
    return np.char.add(np.char.add(subject, "/"), video)


def calibrate_codes(codes, keys, method, *, require=()):
    """Return ``{region: codes}`` calibrated per person (:func:`persons_of`); ``none``: unchanged.

    Parameters
    ----------
    codes : dict of str -> array of shape (n, dims)
        Every row of a feature file (or of one input at predict time), one per frame key.
    keys : structured array of shape (n,)
    method : {"none", "median", "neutral"}
    require : structured array of frame keys, optional
        Frames to be scored: each one's person must have frames to calibrate with.
    """
    if check_calibration(method) == "none":
        return codes
    persons = persons_of(keys)
    need = np.unique(persons_of(require)).tolist() if len(require) else ()
    return {r: calibrate(c, persons, method, require=need) for r, c in codes.items()}
