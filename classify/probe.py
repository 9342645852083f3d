"""How much identity a network's codes carry: a linear probe that predicts the subject.

A network trained to recognise people (``dlib_face``: face recognition; VGG-Face) may encode
who a face is more than what it does; identity in the codes is a shortcut a per-AU classifier
can learn instead of the action, which hurts generalisation to new people (FMAE-IAT, FG 2025).
:func:`identity_probe` measures it on a data set's stored codes:

1. every video of every subject is split in time: its first ``train_share`` of frames train,
   its last frames test, and ``gap_share`` of its frames between the two are dropped, so the
   same (and neighbouring, nearly identical) frames never train and test;
2. a linear classifier (``StandardScaler`` then multinomial logistic regression, C = 1) fitted
   on the training frames predicts the subject of every test frame;
3. the accuracy is reported against chance (1 / subjects; and the share of the commonest
   subject among the test frames, what always answering that subject scores), with a 95 %
   interval from a subject-level (cluster) bootstrap: subjects are resampled with their test
   frames (scipy.stats.bootstrap, percentile, 2000 resamples, seeded). The balanced accuracy
   (mean per-subject recall; chance 1 / subjects) is reported beside it.

A high accuracy says the codes tell people apart after a change of time (and of expression);
it does not say the AU classifiers use identity, only that they could.

Output: one row per (model, region) in ``results/<dataset>/probe_identity.csv`` (a rerun
replaces its row): ``model, region, weights, accuracy, accuracy_lo, accuracy_hi,
balanced_accuracy, chance, majority, subjects, train_frames, test_frames, dims, train_share,
gap_share, seed, created``.
"""

import datetime as _dt

import numpy as np

from featbench.core.errors import MissingRunError, StoreError, UsageError

#: the file of the probe's results, beside summary.csv
PROBE_CSV = "probe_identity.csv"
PROBE_COLUMNS = ("model", "region", "weights", "accuracy", "accuracy_lo", "accuracy_hi",
                 "balanced_accuracy", "chance", "majority", "subjects", "train_frames",
                 "test_frames", "dims", "train_share", "gap_share", "seed", "created")
PROBE_REGIONS = ("full", "upper", "middle", "lower")


def time_split(keys, *, train_share=0.5, gap_share=0.1):
    """Split frames in time, per video: return (train mask, test mask) over ``keys``.

    Parameters
    ----------
    keys : structured array of KEY_DTYPE, shape (n,)
        The frames (subject, video, frame).
    train_share : float
        Share of each video's frames, from its start, that train (0-1, exclusive).
    gap_share : float
        Share of each video's frames after the training part that neither trains nor tests.

    Returns
    -------
    train, test : bool arrays of shape (n,)
        Disjoint; within a video every training frame comes before every test frame.
    """
    if not 0 < train_share < 1 or not 0 <= gap_share < 1 - train_share:
        raise UsageError(f"--train-share {train_share} and --gap {gap_share}: need 0 < train "
                         "share < 1 and 0 <= gap < 1 - train share")
    train = np.zeros(len(keys), bool)
    test = np.zeros(len(keys), bool)
    videos = np.char.add(np.char.add(keys["subject"], b"\0"), keys["video"])
    for v in np.unique(videos):
        rows = np.flatnonzero(videos == v)
        rows = rows[np.argsort(keys["frame"][rows], kind="stable")]
        n = len(rows)
        n_train, n_gap = int(n * train_share), int(n * gap_share)
        train[rows[:n_train]] = True
        test[rows[n_train + n_gap:]] = True
    return train, test


def _probe_codes(path, region, table, aligned):
    """Return (keys, codes, attrs) of the feature file; finite rows only."""
    from extract.store import check_source, read_codes

    if not path.exists():
        raise MissingRunError(f"{path}: no codes of model {path.stem!r} (make them with: featbench "
                              f"extract --model {path.stem} --dataset {table.dataset}"
                              f"{'' if region == 'full' else ' --region ' + region})")
    check_source(path, table, aligned)
    keys, codes, attrs = read_codes(path, region)
    codes = np.asarray(codes, dtype=np.float32)
    finite = np.isfinite(codes).all(axis=1)
    # frames of subjects the table no longer has are not probed
    known = np.isin(keys["subject"], np.asarray(table.subjects, dtype="S32"))
    keep = finite & known
    return keys[keep], codes[keep], attrs


def subject_bootstrap(correct, subject, *, seed=0, n_resamples=2000):
    """Return the 95 % (lo, hi) of accuracy with subjects resampled with their frames.

    ``correct`` (n,) bool per test frame, ``subject`` (n,) its subject; each resample draws
    subjects with replacement and pools their frames (scipy.stats.bootstrap, percentile).
    """
    from scipy.stats import bootstrap

    names, inv = np.unique(subject, return_inverse=True)
    if len(names) < 2:
        return float("nan"), float("nan")
    hits = np.bincount(inv, weights=correct.astype(float), minlength=len(names))
    count = np.bincount(inv, minlength=len(names)).astype(float)
    res = bootstrap((hits, count), lambda h, c, axis=-1: h.sum(axis) / c.sum(axis), paired=True,
                    vectorized=True, n_resamples=n_resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def identity_probe(workspace, table, *, model, region="full", train_share=0.5, gap_share=0.1,
                   seed=0):
    """Probe ``model``'s stored codes of ``table`` for identity; write and return its row.

    Parameters
    ----------
    workspace : Workspace
    table : FrameTable
        The data set (its codes: ``data/features/<dataset>/<model>.h5``).
    model : str
        A network with extracted codes.
    region : {"full", "upper", "middle", "lower"}
    train_share, gap_share : float
        How each video is split in time (:func:`time_split`).
    seed : int
        Seeds the bootstrap.

    Returns
    -------
    dict
        The row written to ``probe_identity.csv`` (:data:`PROBE_COLUMNS`), plus ``path``.

    Raises
    ------
    MissingRunError
        No codes of ``model`` (or of ``region``): the message names the extract command.
    UsageError
        Fewer than two subjects with frames on both sides of the split.
    """
    import time

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if region not in PROBE_REGIONS:
        raise UsageError(f"--region {region!r}: one of {', '.join(PROBE_REGIONS)}")
    t0 = time.perf_counter()
    path = workspace.features_path(table.dataset, model)
    keys, codes, attrs = _probe_codes(path, region, table, workspace.aligned_path(table.dataset))
    train, test = time_split(keys, train_share=train_share, gap_share=gap_share)
    subject = keys["subject"].astype(str)
    both = np.intersect1d(subject[train], subject[test])
    if len(both) < 2:
        raise UsageError(f"{path}: {len(both)} subject(s) with frames both before and after the "
                         "time split; the identity probe needs at least 2")
    train &= np.isin(subject, both)
    test &= np.isin(subject, both)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(codes[train], subject[train])
    pred = clf.predict(codes[test])
    correct = pred == subject[test]
    lo, hi = subject_bootstrap(correct, subject[test], seed=seed)
    _, per = np.unique(subject[test], return_counts=True)
    row = {"model": model, "region": region, "weights": str(attrs.get("weights", "")),
           "accuracy": float(correct.mean()), "accuracy_lo": lo, "accuracy_hi": hi,
           "balanced_accuracy": float(balanced_accuracy_score(subject[test], pred)),
           "chance": 1.0 / len(both), "majority": float(per.max() / per.sum()),
           "subjects": int(len(both)), "train_frames": int(train.sum()),
           "test_frames": int(test.sum()), "dims": int(codes.shape[1]),
           "train_share": float(train_share), "gap_share": float(gap_share), "seed": int(seed),
           "created": _dt.datetime.now().isoformat(timespec="seconds")}
    out = write_probe_row(workspace, table.dataset, row)
    return {**row, "path": out, "seconds": time.perf_counter() - t0}


def write_probe_row(workspace, dataset, row):
    """Replace (or add) the row of ``row``'s model and region in ``probe_identity.csv``."""
    import pandas as pd

    from featbench.core.workspace import atomic_write_text

    path = workspace.results_dir(dataset) / PROBE_CSV
    old = read_probe_rows(workspace, dataset)
    if len(old):
        old = old[~((old["model"] == row["model"]) & (old["region"] == row["region"]))]
    new = pd.concat([old, pd.DataFrame([row], columns=PROBE_COLUMNS)], ignore_index=True) \
        if len(old) else pd.DataFrame([row], columns=PROBE_COLUMNS)
    new = new.sort_values(["model", "region"], kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, new.to_csv(index=False, float_format="%.4f"))
    return path


def read_probe_rows(workspace, dataset):
    """Return ``probe_identity.csv`` as a DataFrame (empty when there is none).

    Raises
    ------
    StoreError
        The file exists but is not the probe's table (one line naming it).
    """
    import pandas as pd

    path = workspace.results_dir(dataset) / PROBE_CSV
    if not path.exists():
        return pd.DataFrame(columns=PROBE_COLUMNS)
    try:
        rows = pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise StoreError(f"{path}: not readable as the identity probe's table ({exc})") from None
    missing = [c for c in ("model", "region", "accuracy", "chance") if c not in rows.columns]
    if missing:
        raise StoreError(f"{path}: lacks the column(s) {', '.join(missing)}: not the identity "
                         "probe's table (delete it and rerun featbench probe identity)")
    return rows
