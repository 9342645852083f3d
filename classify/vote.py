"""The majority vote of several runs' decisions: what an ensemble (``vote``) run does.

Per AU and frame the ensemble says *present* when more than half of its members do. With an even
number of members a tie (as many present as absent votes) is broken by the members' scores: each
member's margin ``score - threshold`` is divided by the standard deviation of that member's scores
for that AU over the test frames (so an SVM's decision values and an LDA's are on one scale), and
the ensemble says *present* when the mean of these standardised margins is > 0. A member with no
classifier for an AU (nan scores: no positive training frame) abstains on that AU; an AU on which
no member votes gets nan metrics, as a classifier run does.

The ensemble's continuous score is ``(present votes - absent votes) + tanh(mean standardised
margin)``: its sign is the decision (its threshold is 0), it orders frames first by votes and then
by how confident the members are, and it gives the ensemble a ROC-AUC like any other run.
"""

import warnings

import numpy as np

from featbench.core.errors import UsageError


def majority_vote(decisions, scores, thresholds, *, scales=None):
    """Combine members' per-AU binary decisions by majority, ties broken by standardised margins.

    Parameters
    ----------
    decisions : array of shape (m, n, k)
        Member ``i``'s decision (1 present, 0 absent) for frame ``j`` and AU ``a``.
    scores : array of shape (m, n, k)
        The members' continuous scores (decision function; higher = more likely present).
    thresholds : array of shape (m, k) or (m, n, k)
        The score above which member ``i`` says present for AU ``a`` (per frame when the
        threshold differs between cross-validation folds).
    scales : array of shape (m, k), optional
        Each member's score scale per AU (default :func:`score_scales` of ``scores``): pass
        the scales of the frames an ensemble was scored on to vote on other frames (``featbench
        predict``) exactly as it voted there.

    Returns
    -------
    decisions : ndarray of int8, shape (n, k)
        1 where more than half the members say present; on a tie (even ``m``), 1 where the mean
        over members of ``(score - threshold) / std(member's scores for that AU)`` is > 0
        A member whose score is nan (it has no classifier for that AU, e.g. no positive
        training frame) abstains: the majority is taken over the members that vote.
    scores : ndarray of float32, shape (n, k)
        ``(present votes - absent votes) + tanh(mean standardised margin)``; ``scores > 0``
        equals ``decisions`` (the ensemble's threshold is 0); nan where no member votes.
    """
    d = np.asarray(decisions)
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 2:
        t = t[:, None, :]
    if d.ndim != 3 or s.shape != d.shape or t.shape not in ((d.shape[0], 1, d.shape[2]), d.shape):
        raise UsageError(f"majority_vote: decisions {d.shape} and scores {s.shape} must be "
                         f"(members, frames, aus) and thresholds {t.shape} (members, aus) or "
                         "(members, frames, aus)")
    voting = ~np.isnan(s)  # a member without a classifier for an AU (nan scores) abstains
    yes = ((d == 1) & voting).sum(axis=0)
    lead = 2 * yes - voting.sum(axis=0)  # present minus absent votes
    std = (score_scales(s) if scales is None else np.asarray(scales, dtype=np.float64))[:, None, :]
    if std.shape != (d.shape[0], 1, d.shape[2]):
        raise UsageError(f"majority_vote: scales {std.shape[::2]} must be (members, aus)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices: handled below
        margin = np.nanmean((s - t) / std, axis=0)
    margin = np.nan_to_num(margin, nan=0.0)
    out_scores = np.where(voting.any(axis=0), lead + np.tanh(margin), np.nan)
    # a tie with a margin of exactly 0 stays absent: "present" needs evidence
    out = (lead > 0) | ((lead == 0) & (margin > 0))
    return out.astype(np.int8), out_scores.astype(np.float32)


def score_scales(scores):
    """Return (m, k): the standard deviation of each member's scores per AU over the frames.

    Nan scores (no classifier) are ignored; a constant or all-nan scorer gets 1, so it keeps its
    raw margin rather than dividing by 0.

    Parameters
    ----------
    scores : array of shape (m, n, k)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices
        std = np.nanstd(np.asarray(scores, dtype=np.float64), axis=1)
    std[~(std > 0)] = 1.0
    return std
