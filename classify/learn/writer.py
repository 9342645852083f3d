"""The one run writer: what every classifier run leaves behind, written once.

Every run of the one driver (:func:`classify.driver.execute`: ``featbench classify`` for every
kind on codes, ``featbench finetune``, ``featbench transfer``'s stage 2) ends here with one
:class:`RunRecord`: the plan, the method, the inputs, the units' results and, per (fold, AU),
a record (``by[(fold, au)]``: ``n_train``, ``n_train_pos``, ``n_val``, ``n_val_pos``,
``scores`` of the fold's test rows, ``fit`` with its ``threshold``, ``val_f1`` and ``notes``,
or None and an ``error``). :func:`write_record` writes, in this order and only once
everything is computed::

    results/<ds>/predictions/<run>.h5   test frames' scores and decisions (every frame once)
    results/<ds>/models/<run>/          the model (the kind's ``save``) and settings.json
    results/<ds>/<run>.csv              per-AU metrics averaged over folds + the mean row
                                        (these three written as temporary siblings first,
                                        then renamed in together)
    results/<ds>/summary.csv            the run's row (other runs' rows are kept), last

A failure once the run's name is known becomes the run's row in ``summary.csv``
(:func:`recording_failure`); a failure while writing leaves the previous outputs of the run
whole (predictions, models folder, table and summary row are replaced together), so no run is
half-written.
"""

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from featbench.core.errors import FeatbenchError, StoreError, UsageError, describe_os_error
from featbench.core.metrics import METRICS, nanmean
from featbench.core.results import (record_failure, run_outputs, run_table, upsert_summary,
                                    write_predictions)
from featbench.core.workspace import remove_path, replace_together, temp_sibling

from classify.learn import store
from classify.learn.method import Method


@contextmanager
def recording_failure(workspace, dataset, run, meta):
    """A :class:`FeatbenchError` raised inside becomes ``run``'s row in summary.csv, then rises."""
    try:
        yield
    except FeatbenchError as exc:
        if not getattr(exc, "previous_kept", False):  # the writer's: the last results stand
            record_run_failure(workspace, dataset, run, exc, meta)
        raise


def record_run_failure(workspace, dataset, run, exc, meta):
    """Record ``exc`` as the run's row in ``summary.csv``, as far as the disk lets us."""
    try:
        record_failure(workspace, dataset, run, exc, meta=meta)
    except (OSError, FeatbenchError):
        pass  # a full disk or a damaged summary cannot take the row: the error is said anyway


def au_row(record, ai, au, thresholds, *, params=()):
    """Return one AU's row of the run's table (metrics averaged over folds) and its notes.

    ``record``: the run's :class:`RunRecord` (its task, per-(fold, AU) results, targets, test
    rows and folds). Fills ``thresholds[fold, ai]``; ``params``: per-AU chosen values to report
    (median over folds), such as the SVM's ``C``.
    """
    task, by, labels, test_rows, splits = (record.plan.task, record.by, record.labels,
                                           record.test_rows, record.splits)
    n_folds = len(splits)
    per_fold, au_notes = [], []
    for fi in range(n_folds):
        r, te = by[(fi, au)], test_rows[fi]
        y = labels[te, ai]
        tag = f" ({splits[fi].name})" if n_folds > 1 else ""
        if r["fit"] is None:
            au_notes.append(r["error"] + tag)
            m = {key: float("nan") for key in (*METRICS, *task.METRICS)}
            m["support"], m["frames"] = int((y == 1).sum()), int((y >= 0).sum())
        else:
            thresholds[fi, ai] = r["fit"].threshold
            m = task.metrics(y, task.decide(r["scores"], r["fit"].threshold), r["scores"])
            au_notes += [n + tag for n in r["fit"].notes]
            if m["support"] == 0:
                au_notes.append("no positive in test: F1 undefined (nan)" + tag)
        per_fold.append(m)
    row = {"au": au}
    for key in task.METRICS:
        row[key] = nanmean(m[key] for m in per_fold)
    row["support"] = int(sum(m["support"] for m in per_fold))
    row["threshold"] = nanmean(thresholds[:, ai])
    row["auc"] = nanmean(m["auc"] for m in per_fold)
    row["frames"] = int(sum(m["frames"] for m in per_fold))
    if n_folds > 1:
        f1s = np.array([m["f1"] for m in per_fold], dtype=float)
        row["f1_std"] = float(np.nanstd(f1s)) if np.isfinite(f1s).sum() > 1 else float("nan")
    for param in params:  # the chosen value (median over folds)
        vals = [by[(fi, au)]["fit"].params[param] for fi in range(n_folds) if by[(fi, au)]["fit"]]
        row[param] = float(np.median(vals)) if vals else float("nan")
    row["n_train"] = int(round(np.mean([by[(fi, au)]["n_train"] for fi in range(n_folds)])))
    au_notes = list(dict.fromkeys(au_notes))
    row["note"] = "; ".join(au_notes)
    return row, au_notes


def run_rows(record, *, params=(), extra=None):
    """Return ``(rows, notes, thresholds (folds, k))`` of the table of the run ``record``
    (a :class:`RunRecord`).

    ``extra(au) -> dict``: a method's own per-AU columns, placed before ``n_train``.
    """
    au_list = record.aus
    thresholds = np.full((len(record.splits), len(au_list)), np.nan)
    rows, notes = [], []
    for ai, au in enumerate(au_list):
        row, au_notes = au_row(record, ai, au, thresholds, params=params)
        if extra is not None:
            tail = {k: row.pop(k) for k in ("n_train", "note")}
            row.update(extra(au), **tail)
        rows.append(row)
        notes += [f"{au}: {n}" for n in au_notes]
    return rows, notes, thresholds


def test_scores(record):
    """Return the stacked test ``(scores, decisions, fold)`` of every fold of the run ``record``
    (a :class:`RunRecord`), in test-row order."""
    task, au_list, by, test_rows = record.plan.task, record.aus, record.by, record.test_rows
    rows = np.concatenate(test_rows)
    k = len(au_list)
    scores = np.full((rows.size, k), np.nan, dtype=np.float32)
    decisions = np.zeros((rows.size, k), dtype=np.int8)
    fold = np.concatenate([np.full(r.size, fi, dtype=np.int8) for fi, r in enumerate(test_rows)])
    start = 0
    for fi, r in enumerate(test_rows):
        for ai, au in enumerate(au_list):
            res = by[(fi, au)]
            if res["fit"] is not None:
                scores[start:start + r.size, ai] = res["scores"]
                decisions[start:start + r.size, ai] = task.decide(res["scores"], res["fit"].threshold)
        start += r.size
    return scores, decisions, fold


def replace_folder(final, fill):
    """Fill a temporary folder beside ``final`` with ``fill(tmp)``, then rename it over ``final``
    (the old one renamed aside first, deleted once the new one is in)."""
    tmp = temp_sibling(final)  # unique; a dead writer's leftovers are removed
    tmp.mkdir(parents=True)
    try:
        out = fill(tmp)
        replace_together([(tmp, final)])
        return out
    finally:
        remove_path(tmp)  # renamed onto final, or half-written: gone


def fold_record(split, per_au, **more):
    """One fold of a run's settings.json: its subjects and ``per_au`` entries."""
    return {"name": split.name, "train": list(split.train), "validation": list(split.validation),
            "test": list(split.test), **more, "aus": per_au}


def versions(**more):
    """The library versions a run records."""
    import featbench

    return {"featbench": featbench.__version__, **more, "numpy": np.__version__,
            "python": sys.version.split()[0]}


@dataclass
class RunRecord:
    """What the one loop made of a run (:func:`classify.driver.execute`): the plan, the method,
    the opened inputs, the jobs and their results, the task's targets by table row, each fold's
    test rows, the labelled frames without an input (per part) and the start time."""

    plan: object
    method: object
    inputs: object
    jobs: list
    results: list
    labels: np.ndarray
    test_rows: list
    missing: dict
    t0: float
    by: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    #: each unit's record once the kind's ``save`` moved its files into the run's folder
    units: dict = field(default_factory=dict)
    #: the run's per-AU table rows, once computed by the writer
    rows: list = field(default_factory=list)

    def __post_init__(self):
        from classify.learn.loop import per_au

        self.by = per_au(self.results, list(self.plan.aus))
        self.meta = {**self.plan.meta, **self.inputs.meta(self.plan, self.labels, self.test_rows,
                                                          self.missing)}
        self.meta.update(self.method.result_meta(self))

    @property
    def aus(self):
        return list(self.plan.aus)

    @property
    def splits(self):
        return list(self.plan.splits)

    @property
    def run(self):
        return self.plan.run

    def fold_entries(self, saved):
        """Per fold, settings.json's record: subjects, counts, per AU what the kind's ``save``
        said (``saved[(fold, au)]``) or the method's entry (:meth:`Method.fold_entry`)."""
        plan = self.plan
        return [fold_record(split, {au: saved.get((fi, au)) or self.method.fold_entry(self.by[(fi, au)])
                                    for au in self.aus},
                            **self.inputs.fold_counts(plan, self.labels, fi, self.test_rows))
                for fi, split in enumerate(plan.splits)]

    def settings(self, saved, folds):
        """The run's settings.json: its summary columns, the method's own record, the inputs',
        the folds, versions and date."""
        return {"run": self.run, **{k: v for k, v in self.meta.items() if k != "seconds"},
                "aus": self.aus, **self.method.record_settings(self),
                **self.inputs.record(self.plan, self.missing), "folds": folds,
                "versions": versions(**self.method.versions()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_record(record):
    """Write a run's predictions, models folder, table and summary row; return the run's dict.

    As one unit: the test frames' predictions, the models folder (the kind's ``save`` and
    settings.json) and the per-AU table are written into temporary siblings, the intervals
    computed from the new predictions, and only then are the three renamed in together
    (:func:`featbench.core.workspace.replace_together`: the old ones set aside, deleted once the
    new ones and the summary row are in). Any failure (a disk error, a kind's ``save``) leaves
    an earlier run of this name whole, its summary row included (the error says so and is not
    recorded over it), and no temporary file. The table's columns, how scores become decisions
    (and, for a method that reports them so, probabilities) and the summary's own fields are
    the task's.

    Returns
    -------
    dict
        ``run``, ``dataset``, ``rows``, ``mean``, ``task``, ``notes``, ``meta``, ``csv``,
        ``predictions``, ``models_dir``, ``folds``, ``seconds``, ``record``.
    """
    plan, method, task = record.plan, record.method, record.plan.task
    ws, dataset, run = plan.workspace, plan.dataset, plan.run
    extra = None
    if type(method).row_extra is not Method.row_extra:
        extra = lambda au: method.row_extra(record, au)  # noqa: E731
    rows_out, notes, thresholds = run_rows(record, params=method.params, extra=extra)
    record.rows, meta = rows_out, record.meta
    meta.update(task=task.name)
    present = task.probability if method.probabilities else None
    if present is not None:
        for r in rows_out:
            r["threshold"] = float(present(r["threshold"]))
    pred_path, models_dir = ws.predictions_path(dataset, run), ws.models_dir(dataset, run)
    csv = ws.run_csv(dataset, run)
    previous = csv.exists()  # a finished earlier run of this name: kept whole if this one fails
    temps = []
    try:
        folds = _write_temps(record, thresholds, present, temps, pred_path, models_dir)
        text, row = run_outputs(dataset, run, rows_out, meta=meta, columns=task.COLUMNS,
                                fields=task.summary_fields, predictions=temps[0])
        temps.append(temp_sibling(csv))
        temps[-1].write_text(text)
        # all computed: now swapped in together, the summary row last (any failure: undone)
        replace_together(list(zip(temps, (pred_path, models_dir, csv))),
                         then=lambda: upsert_summary(ws, dataset, row))
    except OSError as exc:  # disk full, permissions: the earlier results stay, none of these
        finals = dict(zip(map(str, temps), (pred_path, models_dir, csv)))
        where = getattr(exc, "filename", None) or ws.results_dir(dataset)
        where = finals.get(str(where), where)  # the file the user knows, not its temporary one
        kept = f"the previous results of {run} kept" if previous else "none of them kept"
        err = StoreError(f"{where}: {describe_os_error(exc)} while writing the results of "
                         f"{run} ({kept}; rerun when fixed)")
        err.previous_kept = previous
        raise err from None
    except FeatbenchError as exc:  # a kind's save, the intervals: as a disk error
        exc.previous_kept = previous
        raise
    finally:
        for tmp in temps:  # renamed in, or half-written: gone
            remove_path(tmp)
    return {"run": run, "dataset": dataset, "rows": rows_out,
            "mean": run_table(rows_out, columns=task.COLUMNS)[0][-1], "task": task.name,
            "notes": notes, "meta": meta, "csv": csv, "predictions": pred_path,
            "models_dir": models_dir, "folds": folds, "seconds": meta.get("seconds"),
            "record": record}


def _fill(tmp, record):
    """The run's folder: the kind's model, then settings.json (inside the swap)."""
    saved = record.plan.kind.save(tmp, record) or {}
    folds = record.fold_entries(saved)
    record.meta["seconds"] = round(time.time() - record.t0, 1)
    store.write_json(tmp / "settings.json", record.settings(saved, folds))
    return folds


def _write_temps(record, thresholds, present, temps, pred_path, models_dir):
    """Write the run's predictions and models folder into temporary siblings of ``pred_path``
    and ``models_dir``, appended to ``temps`` (removed by the caller unless swapped in); return
    the folds' records."""
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    temps.append(temp_sibling(pred_path))
    _write_predictions(record, thresholds, present, temps[-1])
    models_dir.parent.mkdir(parents=True, exist_ok=True)
    temps.append(temp_sibling(models_dir))
    temps[-1].mkdir()
    return _fill(temps[-1], record)


def _write_predictions(record, thresholds, present, path):
    """Write the test frames' scores and decisions (team contract 3) to ``path``, atomically."""
    plan, task, rows_out = record.plan, record.plan.task, record.rows
    rows = np.concatenate(record.test_rows)
    if np.unique(rows).size != rows.size:
        raise UsageError(f"protocol {plan.protocol} tests some frames in two folds")
    scores, decisions, fold = test_scores(record)
    kw = {}
    if present is not None:
        scores, thresholds = present(scores), present(thresholds)
        kw["scores_are"] = "probabilities"
    return write_predictions(
        path, frames=plan.table.keys()[rows],
        **task.stored(record.labels[rows]), scores=scores, decisions=decisions, fold=fold,
        aus=record.aus, thresholds=[r["threshold"] for r in rows_out],
        fold_thresholds=thresholds,  # (folds, k): the threshold each fold used
        run=plan.run, folds=[s.name for s in record.splits],
        failed_aus=[r["au"] for r in rows_out if not np.isfinite(r["threshold"])],
        task=task.name, **{key: record.meta[key] for key in record.method.prediction_attrs}, **kw)
