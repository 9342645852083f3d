"""Subject-independent splits: the protocol's 12/6/9, the literature's 3 DISFA or BP4D folds, k-fold, own.

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
BP4D (a table whose subjects are all BP4D-Spontaneous ids, F001-F023 / M001-M018)
    ``paper`` and ``literature`` are both the literature's 3-fold subject-exclusive
    cross-validation, the only protocol BP4D papers report (Method A has no BP4D split), so
    it is what the default ``paper`` runs: train on two of the fixed subject parts
    (:data:`BP4D_PARTS`, ME-GraphAU's ``tool/BP4D_image_label_process.py``), test on the third
    (fold 1 tests part 3, fold 2 part 2, fold 3 part 1, as ME-GraphAU numbers them); 3 of the
    27 training subjects (drawn with ``seed``, at least one) are held out as validation. A
    copy lacking some subjects keeps the others in their parts; a part left empty is an error.
``kfold:K``
    Subjects shuffled with ``seed`` and dealt into K folds; 20% of each fold's training
    subjects (at least one) are held out as validation.
``cross`` and ``within`` (a joined data set ``X+Y``, :mod:`featbench.core.datasets.joined`)
    ``cross``: train on X's subjects, 20 % of them (at least one, drawn with ``seed``) held
    out as validation, so every choice comes from X; test on the test subjects of each fold of
    Y's own default protocol (:func:`default_protocol`: its split, BP4D's 3 folds, DISFA's
    12/6/9). ``within``: Y's own default protocol itself. Both score exactly the same test
    frames, so their F1 side by side is the drop a change of data set costs. Other protocols
    are refused on a joined set (they would mix its sets' subjects at random).
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
#: BP4D-Spontaneous's three subject parts, in the order every paper lists them (PROTOCOL.md)
BP4D_PARTS = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016",
     "M014", "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020",
     "F011", "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017",
     "M015", "F014"),
)
BP4D_SUBJECTS = frozenset(s for part in BP4D_PARTS for s in part)
PROTOCOLS = ("paper", "literature", "kfold:K", "own", "cross", "within")


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


def _part(fold, part):
    """A fold's subjects of ``part``: a :class:`Split` or its settings.json record (a dict)."""
    return tuple(fold.get(part) or ()) if isinstance(fold, dict) else tuple(getattr(fold, part))


def trained_test_subjects(trained, tested):
    """Return the sorted subjects that some fold of ``trained`` fits on (its train or validation
    subjects) and some fold of ``tested`` tests: scores of a network ``trained`` made would be
    read on faces it learned from.

    Parameters
    ----------
    trained, tested : sequence of Split or of settings.json fold records
        ``trained``: the folds of the run that made a network (fine-tuning); ``tested``: the
        folds of a run on its codes. One protocol's several folds give each other's test
        subjects to train on, so ``trained_test_subjects(splits, splits)`` is empty only for a
        protocol that never trains on a subject it tests.
    """
    fitted = {s for fold in trained for part in ("train", "validation") for s in _part(fold, part)}
    return sorted(fitted & {s for fold in tested for s in _part(fold, "test")})


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
    from featbench.core.datasets.joined import joined_parts

    if joined_parts(table):
        return _joined_splits(table, protocol, seed)
    if protocol in ("cross", "within"):
        raise UsageError(f"--protocol {protocol} scores a joined data set, --dataset X+Y "
                         f"(train on X, test on Y); {table.dataset} is one set")
    if protocol in ("paper", "literature") and is_bp4d(table):
        return _bp4d_folds(table, seed)
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


def default_protocol(table):
    """The protocol a data set is scored by when none is named: ``cross`` for a joined set,
    ``own`` for one with a split of its own (Aff-Wild2), else ``paper`` (BP4D: its 3 folds)."""
    from featbench.core.datasets.joined import joined_parts

    if joined_parts(table):
        return "cross"
    return "own" if (table.frames["split"] != "").any() else "paper"


def _joined_splits(table, protocol, seed):
    """``cross`` / ``within`` on a joined table X+Y (module docstring)."""
    from featbench.core.datasets.joined import SUBJECT_SEP, component, joined_parts

    if protocol not in ("cross", "within"):
        raise UsageError(f"{table.dataset} is a joined data set: score it with --protocol cross "
                         "(train on the first set, test on the second) or within (the second "
                         f"set's own protocol), not {protocol}")
    xn, yn = joined_parts(table)
    y = component(table, yn)
    if not len(y):
        raise UsageError(f"{table.dataset}: no frames of {yn} left to test on")
    prefix = lambda names: tuple(f"{yn}{SUBJECT_SEP}{s}" for s in names)  # noqa: E731
    y_splits = make_splits(y, default_protocol(y), seed=seed)
    if protocol == "within":
        return [Split(f"within-{sp.name}", prefix(sp.train), prefix(sp.validation), prefix(sp.test))
                for sp in y_splits]
    x_subjects = component(table, xn).subjects
    if len(x_subjects) < 2:
        raise UsageError(f"{table.dataset}: the cross protocol needs at least 2 subjects of {xn} "
                         f"(training and validation), it has {len(x_subjects)}")
    kept, val = _hold_out(x_subjects, 0.2, np.random.RandomState(seed))
    kept, val = (tuple(f"{xn}{SUBJECT_SEP}{s}" for s in part) for part in (kept, val))
    return [Split(f"cross-{sp.name}", kept, val, prefix(sp.test)) for sp in y_splits]


def is_bp4d(table):
    """Whether every subject of ``table`` is a BP4D-Spontaneous id (its protocol applies)."""
    subjects = set(table.frames["subject"].unique())
    return bool(subjects) and subjects <= BP4D_SUBJECTS


def protocol_aus(table, protocol):
    """Return the AUs ``protocol`` scores on ``table``: its default AUs, those the table labels.

    ``paper`` -> DISFA's 12 (BP4D: its 12); ``literature`` -> the 8 of the 3-fold DISFA
    literature (BP4D: its 12); other protocols -> every AU of the table.

    Raises
    ------
    UsageError
        The table labels none of them.
    """
    from featbench.core.aus import BP4D_AUS, DISFA_AUS, LITERATURE_AUS

    wanted = {"paper": DISFA_AUS, "literature": LITERATURE_AUS}.get(protocol)
    if wanted is not None and is_bp4d(table):
        wanted = BP4D_AUS
    out = [a for a in (wanted or table.aus) if a in table.aus]
    if not out:
        raise UsageError(f"{table.dataset} labels none of the AUs of the {protocol} protocol "
                         f"({', '.join(wanted)}); use --protocol kfold:K or own")
    return out


def _bp4d_folds(table, seed):
    """BP4D's 3 folds (module docstring) over the parts' subjects that ``table`` has."""
    present = set(table.subjects)
    parts = [tuple(sorted(s for s in part if s in present)) for part in BP4D_PARTS]
    for k, part in enumerate(parts):
        if not part:
            raise UsageError(f"the BP4D 3-fold protocol needs subjects of each of its parts; "
                             f"{table.dataset} has none of part {k + 1} "
                             f"({', '.join(BP4D_PARTS[k][:4])} ...): use --protocol kfold:K")
    # ME-GraphAU's numbering: fold 1 tests part 3, fold 2 part 2, fold 3 part 1
    splits = _folds(parts[::-1], seed, fraction=3 / 27, prefix="bp4d")
    return splits


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


def without_repeats(runs):
    """The rows of ``runs`` (summary rows, a DataFrame) that are not a repeated split's rerun
    (``kfold:K:rN``): what the report ranks and ``best`` picks from."""
    if "protocol" not in runs:
        return runs
    return runs[[repeat_of(p) is None for p in runs["protocol"].astype(str)]]


def _folds(folds, seed, *, fraction, prefix):
    """Each fold in turn as test; the others as training, minus held-out validation subjects."""
    out = []
    for i, test in enumerate(folds):
        pool = [s for j, f in enumerate(folds) if j != i for s in f]
        kept, val = _hold_out(pool, fraction, np.random.RandomState(seed + i))
        out.append(Split(f"{prefix}-fold{i + 1}", kept, val, tuple(test)))
    return out
