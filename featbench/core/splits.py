"""Subject-independent splits: the protocol's 12/6/9, the literature's 3 DISFA folds, k-fold, own.

Every split keeps each subject wholly in one of train, validation or test, so no face seen in
training is scored in test. A protocol gives one :class:`Split` per fold.

``paper``
    Method A's 12 train / 6 validation / 9 test subjects. The paper does not list its subjects;
    featbench fixes this assignment of DISFA's ids (test = the literature's fold 3, so the two
    protocols share a test fold; validation = three subjects from each other fold)::

        train       SN001 SN006 SN009 SN012 SN013 SN016 SN021 SN024 SN027 SN030 SN031 SN032
        validation  SN002 SN010 SN011 SN018 SN026 SN028
        test        SN003 SN004 SN005 SN007 SN008 SN017 SN023 SN025 SN029

    A data set with other subject ids is shuffled with ``seed`` and cut 12:6:9 in proportion.
``literature``
    3-fold DISFA (ME-GraphAU, LibreFace...): train on two folds, test on the third; three
    subjects of the training folds (drawn with ``seed``) are held out as validation.
``kfold:K``
    Subjects shuffled with ``seed`` and dealt into K folds; 20% of each fold's training
    subjects (at least one) are held out as validation.
``kfold:K:rN``
    Repeat N of ``kfold:K`` (``--repeats``): the same, with the subjects shuffled and the
    validation subjects drawn with the split's own seed N instead of ``seed``, so that repeats
    reassign subjects to folds while every other seeded choice (balancing, the solver) stays.
``own``
    The data set's own split (Aff-Wild2: Train_Set / Validation_Set): test = its validation
    set, as the ABAW literature reports; 20% of its training subjects are held out as
    validation for choosing C and thresholds.
"""

from dataclasses import dataclass

import numpy as np

from featbench.core.errors import UsageError

PAPER_SPLIT = {
    "train": ("SN001", "SN006", "SN009", "SN012", "SN013", "SN016",
              "SN021", "SN024", "SN027", "SN030", "SN031", "SN032"),
    "validation": ("SN002", "SN010", "SN011", "SN018", "SN026", "SN028"),
    "test": ("SN003", "SN004", "SN005", "SN007", "SN008", "SN017", "SN023", "SN025", "SN029"),
}
LITERATURE_FOLDS = (
    ("SN001", "SN002", "SN009", "SN010", "SN016", "SN026", "SN027", "SN030", "SN032"),
    ("SN006", "SN011", "SN012", "SN013", "SN018", "SN021", "SN024", "SN028", "SN031"),
    ("SN003", "SN004", "SN005", "SN007", "SN008", "SN017", "SN023", "SN025", "SN029"),
)
PROTOCOLS = ("paper", "literature", "kfold:K", "own")


@dataclass(frozen=True)
class Split:
    """One fold of a protocol: disjoint subject-id tuples for train, validation and test."""

    name: str
    train: tuple
    validation: tuple
    test: tuple

    def mask(self, table, part):
        """Return a bool mask over ``table``'s rows of the subjects in ``part`` ("train"...)."""
        return table.frames["subject"].isin(getattr(self, part)).to_numpy()


def scored_mask(table, splits):
    """Return a bool mask over ``table``'s rows of the subjects some fold trains, validates or tests."""
    subjects = {s for split in splits for part in (split.train, split.validation, split.test)
                for s in part}
    return table.frames["subject"].isin(subjects).to_numpy()


def _hold_out(subjects, fraction, rng):
    """Split ``subjects`` into (kept, held out) with ``fraction`` (at least one) held out."""
    subjects = sorted(subjects)
    n_out = max(1, int(round(len(subjects) * fraction)))
    if n_out >= len(subjects):
        raise UsageError(f"too few training subjects ({len(subjects)}) to hold out validation subjects")
    out = set(rng.choice(subjects, size=n_out, replace=False).tolist())
    return tuple(s for s in subjects if s not in out), tuple(sorted(out))


def make_splits(table, protocol="paper", *, seed=0):
    """Return the list of :class:`Split` of ``protocol`` for the subjects of ``table``.

    Parameters
    ----------
    table : FrameTable
    protocol : str
        ``paper``, ``literature``, ``kfold:K`` (K >= 2) or ``own``.
    seed : int
        Seeds every random assignment, so a protocol is reproducible.

    Raises
    ------
    UsageError
        An unknown protocol, or one that does not fit the data set.
    """
    subjects = table.subjects
    if protocol == "paper":
        if set(subjects) == {s for part in PAPER_SPLIT.values() for s in part}:
            return [Split("paper", *(PAPER_SPLIT[k] for k in ("train", "validation", "test")))]
        if len(subjects) < 3:
            raise UsageError(f"the paper protocol needs at least 3 subjects, {table.dataset} has {len(subjects)}")
        perm = np.random.RandomState(seed).permutation(sorted(subjects))
        n_train = max(1, int(round(len(perm) * 12 / 27)))
        n_val = max(1, int(round(len(perm) * 6 / 27)))
        n_train = min(n_train, len(perm) - n_val - 1)
        parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
        return [Split("paper", *(tuple(sorted(p.tolist())) for p in parts))]
    if protocol == "literature":
        missing = sorted({s for f in LITERATURE_FOLDS for s in f} - set(subjects))
        if missing:
            raise UsageError(f"the literature protocol needs DISFA's 27 subjects; {table.dataset} lacks "
                             f"{', '.join(missing[:5])}{'...' if len(missing) > 5 else ''} (use --protocol kfold:3)")
        return _folds(LITERATURE_FOLDS, seed, fraction=3 / 18, prefix="literature")
    if protocol.startswith("kfold:"):
        k, repeat = _kfold_parts(protocol)
        seed = seed if repeat is None else repeat  # a repeat's split has its own seed
        if k < 2:
            raise UsageError(f"bad protocol {protocol!r}: use kfold:K with an integer K >= 2 "
                             "(kfold:K:rN for repeat N)")
        if k > len(subjects):
            raise UsageError(f"kfold:{k} needs at least {k} subjects, {table.dataset} has {len(subjects)}")
        perm = np.random.RandomState(seed).permutation(sorted(subjects))
        folds = [tuple(sorted(f.tolist())) for f in np.array_split(perm, k)]
        return _folds(folds, seed, fraction=0.2, prefix=f"kfold{k}")
    if protocol == "own":
        split = table.frames.groupby("subject")["split"].first()
        train = sorted(split[split == "train"].index)
        test = sorted(split[split == "validation"].index)
        if not train or not test:
            raise UsageError(f"{table.dataset} has no split of its own (use --protocol paper or kfold:K)")
        kept, val = _hold_out(train, 0.2, np.random.RandomState(seed))
        return [Split("own", kept, val, tuple(test))]
    raise UsageError(f"unknown protocol {protocol!r} (choices: {', '.join(PROTOCOLS)})")


def _kfold_parts(protocol):
    """``(K, N)`` of ``kfold:K`` (N None) or ``kfold:K:rN``; K = 0 when malformed."""
    parts = protocol.split(":")
    try:
        k = int(parts[1])
        repeat = int(parts[2][1:]) if len(parts) == 3 and parts[2][:1] == "r" else None
    except (ValueError, IndexError):
        return 0, None
    if len(parts) > 3 or (len(parts) == 3 and (repeat is None or repeat < 0)):
        return 0, None
    return k, repeat


def repeat_protocols(protocol, repeats):
    """The protocols of ``repeats`` repeated splits of ``protocol`` (``kfold:K``): ``kfold:K:r1``
    ... ``kfold:K:rN``.

    Raises
    ------
    UsageError
        ``protocol`` is not a plain ``kfold:K``, or ``repeats`` < 2.
    """
    k, repeat = _kfold_parts(protocol) if protocol.startswith("kfold:") else (0, None)
    if k < 2 or repeat is not None:
        raise UsageError(f"--repeats needs a k-fold protocol (--protocol kfold:K, e.g. kfold:3), "
                         f"got {protocol!r}: only k-fold splits can be drawn again")
    if int(repeats) < 2:
        raise UsageError(f"--repeats {repeats}: at least 2 (one split is the run itself)")
    return [f"kfold:{k}:r{i}" for i in range(1, int(repeats) + 1)]


def repeat_of(protocol):
    """``(base protocol, N)`` of a repeat's protocol ``kfold:K:rN``, else None."""
    protocol = str(protocol or "")
    k, repeat = _kfold_parts(protocol) if protocol.startswith("kfold:") else (0, None)
    return (f"kfold:{k}", repeat) if k >= 2 and repeat is not None else None


def _folds(folds, seed, *, fraction, prefix):
    """Each fold in turn as test; the others as training, minus held-out validation subjects."""
    out = []
    for i, test in enumerate(folds):
        pool = [s for j, f in enumerate(folds) if j != i for s in f]
        kept, val = _hold_out(pool, fraction, np.random.RandomState(seed + i))
        out.append(Split(f"{prefix}-fold{i + 1}", kept, val, tuple(test)))
    return out
