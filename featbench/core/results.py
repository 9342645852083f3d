"""Result tables: the per-run CSV and the ``summary.csv`` of a data set (DESIGN.md contract).

``results/<dataset>/<run>.csv``
    one row per AU (``AU01`` ...), then a row ``mean``; columns
    ``au,f1,accuracy,precision,recall,support,threshold`` first, then extras (``auc``,
    ``frames``, per-fold spread ``f1_std``...).
``results/<dataset>/summary.csv``
    one row per run; columns ``run,model,region,clf,mean_f1,mean_accuracy``, then one
    ``f1_AUnn`` column per AU, then provenance (``weights``, ``protocol``, ``dataset``,
    ``mean_auc``, ``created``, ``error``...). Writing a run replaces that run's row and keeps
    every other row; a failed run is a row with its ``error``, never silently dropped.

Intensity runs (``task`` = ``intensity``: the task passes its columns and summary fields) write
the same two files: their per-run CSV starts ``au,icc,pearson,mae,f1,support,frames`` (F1 and the rest of
its family score rounded intensity >= 2 against the occurrence labels, so the tasks compare);
their summary row has ``mean_f1`` / ``mean_accuracy`` of those decisions, ``f1_AUnn``, and
``mean_icc``, ``mean_pearson``, ``mean_mae`` and ``icc_AUnn``. Every row has a ``task`` column
(a row written before it existed is an occurrence run).

Intervals (:mod:`featbench.core.stats`): a run written with its predictions file
(``write_run(..., predictions=path)``) gets, beside each metric, ``<metric>_lo`` and
``<metric>_hi`` in its CSV (every AU row and the mean row: the subject-level bootstrap interval at
the current :func:`featbench.core.stats.current_settings`), and in its summary row
``mean_f1_lo``, ``mean_f1_hi`` (likewise ``mean_accuracy``, ``mean_auc``, and an intensity
run's ``mean_icc``, ``mean_pearson``, ``mean_mae``) with ``ci_level``, ``ci_resamples`` and
``ci_subjects``. :func:`store_intervals` adds them to a run written without (an older
workspace), from its predictions file, without retraining.

Both files are written through a temporary file and renamed, and the summary is updated under
a lock, so parallel runs never lose each other's rows.
"""

import datetime as _dt
import math
import os

from featbench.core.errors import MissingRunError, StoreError
from featbench.core.metrics import nanmean
from featbench.core.workspace import atomic_path, atomic_write_text, file_lock

#: format of results/<dataset>/predictions/<run>.h5 (see :func:`write_predictions`)
PREDICTIONS_FORMAT = 1
RUN_COLUMNS = ("au", "f1", "accuracy", "precision", "recall", "support", "threshold")
#: the first columns of an intensity run's CSV
INTENSITY_COLUMNS = ("au", "icc", "pearson", "mae", "f1", "support", "frames")
SUMMARY_COLUMNS = ("run", "model", "region", "clf", "mean_f1", "mean_accuracy")
#: the mean row averages these over AUs (nan ignored); support is summed
_MEANED = ("f1", "accuracy", "precision", "recall", "auc", "f1_std", "f1_05", "icc", "pearson",
           "mae")
#: summary columns that hold numbers (checked by :func:`read_summary_rows`)
_NUMERIC = ("mean_f1", "mean_accuracy", "mean_auc", "mean_icc", "mean_pearson", "mean_mae",
            "ci_level", "ci_resamples", "ci_subjects")
_NUMERIC_PREFIXES = ("f1_AU", "icc_AU")
_NUMERIC_SUFFIXES = ("_lo", "_hi")
#: the summary's means that carry an interval (``mean_<metric>_lo`` / ``_hi``)
SUMMARY_INTERVALS = ("f1", "accuracy", "auc", "icc", "pearson", "mae")


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return "" if v is None else str(v)


def _csv_text(columns, rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def run_table(rows, *, columns=RUN_COLUMNS):
    """Return the per-AU rows followed by the ``mean`` row, and the column order.

    Parameters
    ----------
    rows : list of dict
        One per AU with at least ``au`` and the metrics of ``columns``.
    columns : tuple of str
        The table's first columns, the task's (``Task.COLUMNS``: :data:`RUN_COLUMNS` for
        occurrence, :data:`INTENSITY_COLUMNS` for intensity); the rows' other keys follow.
    """
    first = tuple(columns)
    extras = []
    for r in rows:
        extras += [k for k in r if k not in first and k not in extras]
    mean = {"au": "mean"}
    for key in first[1:] + tuple(extras):
        vals = [r.get(key) for r in rows]
        if key in ("support", "frames"):
            mean[key] = int(sum(v for v in vals if v is not None))
        elif key in _MEANED:
            mean[key] = nanmean(float(v) for v in vals if v is not None)
    return list(rows) + [mean], list(first) + extras


def run_intervals(predictions, *, clf, aus=None, settings=None):
    """Return the intervals of a run from its predictions file.

    Parameters
    ----------
    predictions : Path
        The run's ``results/<ds>/predictions/<run>.h5``.
    clf : str
        The run's classifier (ensembles pool their folds: :func:`featbench.core.stats.pools_folds`).
    aus : list of str, optional
        Only these AUs (default: the file's).
    settings : CISettings, optional
        Default :func:`featbench.core.stats.current_settings`.

    Returns
    -------
    per_au : dict
        ``{AU: {"f1_lo": .., "f1_hi": .., ...}}``, and ``"mean"``: the mean row's.
    record : dict
        ``ci_level``, ``ci_resamples``, ``ci_subjects``: stored with the run.
    """
    from featbench.core import stats

    settings = settings or stats.current_settings()
    pred = read_predictions(predictions)
    aus = [a for a in (aus or pred["aus"]) if a in pred["aus"]]
    table = stats.subject_table(pred, pooled=stats.pools_folds(clf), aus=aus)
    found = stats.run_intervals(table, settings)
    out = {}
    for i, au in enumerate(table.aus + ["mean"]):
        out[au] = {}
        for metric, (_, lo, hi) in found.items():
            out[au][f"{metric}_lo"], out[au][f"{metric}_hi"] = float(lo[i]), float(hi[i])
    return out, settings.record(len(table.subjects))


def _interval_columns(columns, table, found):
    """Put the ``<metric>_lo`` / ``_hi`` of ``found`` (:func:`run_intervals`) into the rows of
    ``table`` (AUs and mean), after the other columns, for the metrics the table has."""
    names = [f"{m}{end}" for m in columns if any(f"{m}_lo" in v for v in found.values())
             for end in ("_lo", "_hi")]
    nan = float("nan")
    for r in table:
        r.update({c: found.get(r["au"], {}).get(c, nan) for c in names})
    return [c for c in columns if c not in names] + names


def write_run(workspace, dataset, run, rows, *, meta, columns=RUN_COLUMNS, fields=None,
              predictions=None):
    """Write ``results/<dataset>/<run>.csv`` and upsert the run's row in ``summary.csv``.

    Parameters
    ----------
    workspace : Workspace
    dataset : str
    run : str
        The run's name (``str`` of a :class:`featbench.core.identity.RunKey`).
    rows : list of dict
        Per-AU metrics: ``au``, ``f1``, ``accuracy``, ``precision``, ``recall``,
        ``support``, ``threshold``, and any extras (``auc``...).
    meta : dict
        ``model``, ``region``, ``clf`` (required), ``task`` (default ``occurrence``), and
        provenance such as ``weights``, ``protocol``: written to the summary row.
    columns : tuple of str
        The first columns of the run's CSV (its task's, as :func:`run_table`).
    fields : callable, optional
        ``fields(mean, rows) -> dict``: the task's own summary columns after ``task``
        (intensity: ``mean_icc``... and ``icc_AUnn``).
    predictions : Path, optional
        The run's predictions file: its intervals are computed from it and stored (module
        docstring), at :func:`featbench.core.stats.current_settings`.

    Returns
    -------
    Path
        The per-run CSV.
    """
    text, row = run_outputs(dataset, run, rows, meta=meta, columns=columns, fields=fields,
                            predictions=predictions)
    path = workspace.run_csv(dataset, run)
    atomic_write_text(path, text)
    upsert_summary(workspace, dataset, row)
    return path


def run_outputs(dataset, run, rows, *, meta, columns=RUN_COLUMNS, fields=None, predictions=None):
    """Return ``(csv text, summary row)`` of a run, written by nothing: :func:`write_run`'s
    parameters and contents (the intervals computed from ``predictions``), for a writer that
    swaps the run's files in together before it upserts the row."""
    task = meta.get("task") or "occurrence"
    table, columns = run_table(rows, columns=columns)
    ci = {}
    if predictions is not None:
        found, ci = run_intervals(predictions, clf=meta.get("clf"), aus=[r["au"] for r in rows])
        table = [dict(r) for r in table]
        columns = _interval_columns(columns, table, found)
    mean = table[-1]
    row = {"run": run, **{k: meta.get(k) for k in ("model", "region", "clf")},
           "mean_f1": mean["f1"], "mean_accuracy": mean["accuracy"]}
    for r in rows:
        row[f"f1_{r['au']}"] = r["f1"]
    row["mean_auc"] = mean.get("auc", float("nan"))
    row["task"] = task
    if fields is not None:
        row.update(fields(mean, rows))
    if ci:
        row.update(_summary_intervals(mean, row))
        row.update(ci)
    row.update({k: v for k, v in meta.items() if k not in row})
    row.setdefault("dataset", dataset)
    row["created"] = _dt.datetime.now().isoformat(timespec="seconds")
    row["error"] = ""
    return _csv_text(columns, table), row


def _summary_intervals(mean, row):
    """The summary's ``mean_<metric>_lo`` / ``_hi`` of the run's mean row, for the means it has."""
    return {f"mean_{m}{end}": mean.get(f"{m}{end}", float("nan"))
            for m in SUMMARY_INTERVALS if f"mean_{m}" in row for end in ("_lo", "_hi")}


def store_intervals(workspace, dataset, run, *, clf, settings=None):
    """Add (or renew) a finished run's intervals in its CSV and summary row, from its predictions
    file: what an existing workspace gets on ``featbench report``, without retraining.

    Returns
    -------
    bool
        False when the run has no CSV or no predictions file (nothing to compute them from).
    """
    import csv as _csv

    pred, path = workspace.predictions_path(dataset, run), workspace.run_csv(dataset, run)
    if not (pred.exists() and path.exists()):
        return False
    with open(path, newline="", encoding="utf-8") as fh:
        lines = list(_csv.DictReader(fh))
    table = [r for r in lines if r.get("au")]
    found, ci = run_intervals(pred, clf=clf, aus=[r["au"] for r in table if r["au"] != "mean"],
                              settings=settings)
    columns = _interval_columns(list(lines[0].keys()) if lines else [], table, found)
    atomic_write_text(path, _csv_text(columns, table))
    mean = found.get("mean", {})

    def update(row):
        row.update({k: _fmt(v) for k, v in _summary_intervals(mean, row).items()})
        row.update({k: _fmt(v) for k, v in ci.items()})

    update_summary_row(workspace, dataset, run, update)
    return True


def record_failure(workspace, dataset, run, error, *, meta):
    """Record a failed run as a summary row carrying its ``error`` (metrics nan)."""
    row = {"run": run, **{k: meta.get(k) for k in ("model", "region", "clf")},
           "mean_f1": float("nan"), "mean_accuracy": float("nan")}
    row.update({k: v for k, v in meta.items() if k not in row})
    row.setdefault("dataset", dataset)
    row["created"] = _dt.datetime.now().isoformat(timespec="seconds")
    row["error"] = str(error).replace("\n", " ")
    upsert_summary(workspace, dataset, row)


def upsert_summary(workspace, dataset, row):
    """Replace (or add) ``row["run"]``'s row in ``summary.csv``, keeping every other row.

    A damaged summary is refused (:func:`read_summary_rows`), never rewritten with its garbage.
    """
    path = workspace.summary_csv(dataset)
    with file_lock(path, what="updating"):
        rows = [r for r in read_summary_rows(path) if r["run"] != row["run"]] if path.exists() else []
        rows.append({k: v for k, v in row.items()})
        _write_summary_rows(path, rows)


def update_summary_row(workspace, dataset, run, update):
    """Call ``update(row)`` on ``run``'s summary row (a dict of strings) and write it back, under
    the summary's lock; no-op when the run has no row."""
    path = workspace.summary_csv(dataset)
    if not path.exists():
        return
    with file_lock(path, what="updating"):
        rows = read_summary_rows(path)
        mine = [r for r in rows if r["run"] == run]
        if mine:
            update(mine[0])
            _write_summary_rows(path, rows)


def _write_summary_rows(path, rows):
    """Write ``summary.csv``: the contract's columns, the ``f1_AU`` ones, then every other."""
    f1_cols = sorted({k for r in rows for k in r if k.startswith("f1_AU")})
    extra = []
    for r in rows:
        extra += [k for k in r if k not in SUMMARY_COLUMNS and k not in f1_cols and k not in extra]
    rows.sort(key=lambda r: r["run"])
    atomic_write_text(path, _csv_text(list(SUMMARY_COLUMNS) + f1_cols + extra, rows))


def read_summary(workspace, dataset):
    """Return ``summary.csv`` as a pandas DataFrame.

    Raises
    ------
    MissingRunError
        When no run has been recorded for ``dataset`` yet.
    """
    import pandas as pd

    path = workspace.summary_csv(dataset)
    if not path.exists():
        raise MissingRunError(f"{path}: no results yet for {dataset} (run featbench classify first)")
    read_summary_rows(path)  # checked line by line first: a damaged file names its line
    return pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN"])


def read_summary_rows(path, *, header=False):
    """Read and check ``summary.csv``: the one reader of it (classify, ensemble, report, run).

    Returns
    -------
    list of dict
        One per run, every value a string as written.
    list of str
        The header, when ``header`` is true.

    Raises
    ------
    StoreError
        Naming the file and line: no header or not a summary header, a row with more or fewer
        fields than the header, a row without a run name, a run twice, a metric that is not a
        number (``nan`` and empty are numbers here: undefined).
    """
    import csv

    problem = f"{path}: not featbench's summary.csv"
    fix = "(move it away, or fix the line: it is rewritten by the next featbench classify)"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise StoreError(f"{problem}: not UTF-8 text ({exc.reason} at byte {exc.start}) "
                         f"{fix}") from None
    except csv.Error as exc:
        raise StoreError(f"{problem}: {exc} {fix}") from None
    if not lines or lines[0][:len(SUMMARY_COLUMNS)] != list(SUMMARY_COLUMNS):
        got = ",".join(lines[0])[:60] if lines else "an empty file"
        raise StoreError(f"{path}:1: the header must start with {','.join(SUMMARY_COLUMNS)}, got "
                         f"{got!r} {fix}")
    head = lines[0]
    numeric = [i for i, c in enumerate(head)
               if c in _NUMERIC or c.startswith(_NUMERIC_PREFIXES) or c.endswith(_NUMERIC_SUFFIXES)]
    rows, seen = [], set()
    for lineno, fields in enumerate(lines[1:], 2):
        if not fields:
            continue
        if len(fields) != len(head):
            raise StoreError(f"{path}:{lineno}: {len(fields)} fields, the header has {len(head)} "
                             f"{fix}")
        run = fields[0].strip()
        if not run:
            raise StoreError(f"{path}:{lineno}: no run name {fix}")
        if run in seen:
            raise StoreError(f"{path}:{lineno}: run {run!r} listed twice {fix}")
        for i in numeric:
            v = fields[i].strip()
            try:
                float(v or "nan")
            except ValueError:
                raise StoreError(f"{path}:{lineno}: {head[i]} {v[:30]!r} is not a number "
                                 f"{fix}") from None
        seen.add(run)
        rows.append(dict(zip(head, fields)))
    return (rows, head) if header else rows


def read_run(workspace, dataset, run):
    """Return the per-run CSV of ``run`` as a DataFrame (MissingRunError naming the command if absent)."""
    import pandas as pd

    path = workspace.run_csv(dataset, run)
    if not os.path.exists(path):
        raise MissingRunError(f"{path}: run {run!r} not found (make it with featbench classify)")
    return pd.read_csv(path, na_values=["nan"])


def read_au_intervals(workspace, dataset, run, *, metric="f1"):
    """``{AU: (lo, hi)}`` of ``metric`` from ``run``'s CSV (the ``mean`` row too); empty when the
    run has no CSV or no intervals stored."""
    import csv

    path = workspace.run_csv(dataset, run)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    return {r["au"]: (num(r[f"{metric}_lo"]), num(r[f"{metric}_hi"])) for r in rows
            if r.get("au") and f"{metric}_lo" in r and f"{metric}_hi" in r}


def write_predictions(path, *, frames, labels, scores, decisions, fold, aus, thresholds,
                      fold_thresholds=None, intensities=None, **attrs):
    """Write a predictions file (per-frame scores and decisions of one run), atomically.

    Classifier runs and ensembles both write this format; ensembles and users' analyses read it.

    Parameters
    ----------
    path : Path
        ``results/<dataset>/predictions/<run>.h5``.
    frames : array of shape (n,), KEY_DTYPE
        The test frames; with several folds, every test frame once.
    labels, scores, decisions : arrays of shape (n, k)
        Labels (1 / 0 / -1), decision-function scores, binary decisions.
    fold : array of shape (n,)
        Index of the fold that tested each frame.
    aus : list of k str
    thresholds : array of shape (k,)
        The decision threshold reported per AU.
    fold_thresholds : array of shape (folds, k), optional
        The threshold each fold used (stored as the ``/thresholds`` dataset).
    intensities : array of shape (n, k), optional
        An intensity run's true intensities 0-5 (-1 unknown), stored as ``/intensities``; its
        ``scores`` are then the predicted intensities (attr ``task`` = ``intensity``).
    **attrs
        ``run``, ``model``, ``region``, ``clf``, ``weights``, ``protocol``, ``dataset``...
        (lists and dicts are stored as json, everything else as text).
    """
    import json

    import h5py
    import numpy as np

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["frames"] = frames
        f["labels"] = np.asarray(labels, dtype=np.int8)
        f["scores"] = np.asarray(scores, dtype=np.float32)
        f["decisions"] = np.asarray(decisions, dtype=np.int8)
        f["fold"] = np.asarray(fold, dtype=np.int8)
        if fold_thresholds is not None:
            f["thresholds"] = np.asarray(fold_thresholds, dtype=np.float64)
        if intensities is not None:
            f["intensities"] = np.asarray(intensities, dtype=np.int8)
        f.attrs["format_version"] = PREDICTIONS_FORMAT
        f.attrs["aus"] = json.dumps(list(aus))
        f.attrs["thresholds"] = np.asarray(thresholds, dtype=np.float64)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return path


#: the datasets of a predictions file every reader expects
PREDICTION_FIELDS = ("frames", "labels", "scores", "decisions", "fold")


def read_predictions(path):
    """Read a predictions file (:func:`write_predictions`) into a dict of arrays and attrs.

    Returns
    -------
    dict
        ``frames`` (n,) KEY_DTYPE, ``labels`` (n, k) int8, ``scores`` (n, k) float32,
        ``decisions`` (n, k) int8, ``fold`` (n,) int8, ``aus`` list of k str, ``thresholds``
        (k,) float, and the other attrs (``run``, ``model``, ``region``, ``clf``, ``weights``,
        ``protocol``, ``dataset``, ``task``) as str; ``fold_thresholds`` (folds, k) when the
        file has the per-fold thresholds dataset; ``intensities`` (n, k) int8 for an intensity
        run (whose ``scores`` are predicted intensities).
    """
    import json

    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            out = {key: f[key][()] for key in PREDICTION_FIELDS if key in f}
            if "thresholds" in f:  # (folds, k): the threshold each fold used
                out["fold_thresholds"] = np.asarray(f["thresholds"][()], dtype=float)
            if "intensities" in f:  # an intensity run's true 0-5 intensities
                out["intensities"] = f["intensities"][()]
            attrs = dict(f.attrs)
    except OSError as exc:  # permission, a lock, or damage: said as what it is
        from featbench.core.errors import describe_os_error

        raise StoreError(f"{path}: cannot read the predictions file: "
                         f"{describe_os_error(exc)}") from None
    missing = [k for k in ("frames", "labels", "scores", "decisions") if k not in out]
    if missing or "aus" not in attrs:
        raise StoreError(f"{path}: predictions file lacks {', '.join(missing or ['attr aus'])}; "
                         "rerun the classifier run that made it")
    out.setdefault("fold", np.zeros(len(out["frames"]), dtype=np.int8))
    aus = attrs.pop("aus")
    out["aus"] = list(json.loads(aus) if isinstance(aus, (str, bytes)) else aus)
    out["thresholds"] = np.asarray(attrs.pop("thresholds", np.zeros(len(out["aus"]))), dtype=float)
    for key, value in attrs.items():
        out[key] = value.decode() if isinstance(value, bytes) else value
    return out
