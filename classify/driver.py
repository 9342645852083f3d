"""The one driver of every run: a :class:`~classify.plan.RunPlan` in, the written run out.

:func:`execute` is what every training command ends in (``featbench classify`` for every kind on
codes, ``featbench finetune``, ``featbench transfer``'s stage 2, ``featbench run``):

1. the run's lock, then every failure from here on recorded as the run's row in summary.csv;
2. the inputs (:class:`CodeInputs`: a network's feature file, calibrated per person when asked,
   joined to the frame table; :class:`FaceInputs`: the aligned-face cache) and the task's
   targets;
3. the kind's method (``kind.method(plan, inputs)``: :mod:`classify.codemethods` for the
   estimators, the learned methods for networks);
4. one job per fold x unit (:func:`build_jobs`), trained by the one loop
   (:func:`classify.learn.pool.run_units`: this process, local workers, Dask or torchrun);
5. one :class:`~classify.learn.writer.RunRecord`, written by the one writer
   (:func:`classify.learn.writer.write_record`: predictions, the models folder with its
   settings.json inside the atomic swap, the run's table and summary row).

Rows: a fold's part holds the frames of its subjects that have an input (codes, a face); with
``plan.setting("labelled_only")`` (Aff-Wild2's unannotated frames, transfer) only those with a
label for some AU. Labelled frames without an input are counted and reported, never dropped
silently.
"""

import shutil
import sys
import time

import numpy as np

from featbench.core.errors import DataError, MissingRunError, StoreError
from featbench.core.workspace import run_lock

from classify.learn.method import Job
from classify.learn.writer import RunRecord, recording_failure, write_record


# --- inputs --------------------------------------------------------------------------------------
class CodeInputs:
    """A run's inputs when its method reads a network's codes (``data/features/<ds>/<model>.h5``).

    :meth:`open` finds the feature file (MissingRunError naming the extract command), reads the
    codes of the run's regions (left in the file when larger than the memory budget and the
    method streams them), calibrates them per person (:mod:`featbench.core.calibrate`: every
    person scored has a reference) and joins them to the table (``pos``: a row's row of codes).
    """

    kind = "codes"
    missing_parts = ("train", "validation", "test")

    def __init__(self, *, streams=False):
        self.streams = streams
        self.codes = self.keys = self.attrs = self.pos = self.budget = None
        self.path = None

    def check(self, plan):
        """Refuse, before the run's lock and anything written, codes of a network fine-tuned
        on subjects this run tests (:func:`classify.codes.check_finetuned_codes`)."""
        from classify.codes import check_finetuned_codes

        path = plan.workspace.features_path(plan.dataset, plan.model)
        if path.exists():  # absent: open() names the extract command, as the run's failure
            check_finetuned_codes(plan.workspace, plan.dataset, path, lambda: plan.splits)

    def open(self, plan, labels):
        from featbench.core.aus import AU_REGION
        from featbench.core.calibrate import calibrate_codes
        from featbench.core.splits import scored_mask

        from classify.codes import check_features, feature_info, join_codes, read_run_codes

        self.plan = plan
        table, calibrate = plan.table, plan.setting("calibrate", "none")
        regions = (sorted({AU_REGION[a] for a in plan.aus}) if plan.region == "auto"
                   else [plan.region])
        self.path = check_features(plan.workspace, plan.dataset, plan.model, regions, table)
        plan.meta["weights"] = str(feature_info(self.path)["attrs"].get("weights", ""))
        self.keys, codes, self.attrs, self.budget = read_run_codes(
            plan.workspace, plan.dataset, plan.model, regions, self.path,
            lazy_ok=self.streams and calibrate == "none")
        labelled = (labels >= 0).any(axis=1)
        self.codes = calibrate_codes(codes, self.keys, calibrate,
                                     require=table.keys()[labelled & scored_mask(table, plan.splits)])
        self.pos = join_codes(table, self.keys)
        self.has_input = self.pos >= 0

    def no_test_error(self, plan):
        return MissingRunError(f"no test frame of {plan.dataset} has codes of {plan.model} "
                               f"(the feature file's frames do not match the data set's)")

    def notes(self, missing):
        return [f"{n} labelled {part} frames have no codes in the feature file and were left out"
                for part, n in missing.items() if n]

    def meta(self, plan, labels, test_rows, missing):
        """The run's counts in its summary row: training frames (mean over folds), test frames,
        labelled frames without codes."""
        labelled = (labels >= 0).any(axis=1)
        n_train = [int((s.mask(plan.table, "train") & self.has_input & labelled).sum())
                   for s in plan.splits]
        return {"n_train": int(round(np.mean(n_train))), "n_test": int(sum(r.size for r in test_rows)),
                "frames_without_codes": int(sum(missing.values()))}

    def record(self, plan, missing):
        """The inputs' part of settings.json."""
        from classify.codes import plain

        return {"frames_without_codes_by_part": missing,
                "features": {"path": str(self.path), "attrs": {k: plain(v) for k, v in self.attrs.items()}}}

    def fold_counts(self, plan, labels, fi, test_rows):
        labelled = (labels >= 0).any(axis=1)
        s = plan.splits[fi]
        return {"n_train_frames": int((s.mask(plan.table, "train") & self.has_input & labelled).sum()),
                "n_test_frames": int(test_rows[fi].size)}

    def preprocessing(self, plan):
        from classify.codes import model_preprocessing

        return model_preprocessing(plan.meta, self.attrs, plan.aus)


class FaceInputs:
    """A run's inputs when its method reads aligned faces (the workspace's aligned-face cache,
    checked to list the table's frames in its order)."""

    kind = "faces"
    missing_parts = ("validation", "test")

    def __init__(self, path):
        self.path, self.faces = path, None

    def check(self, plan):
        """Nothing to check before the run's lock: faces carry no network's training."""

    def open(self, plan, labels):
        self.plan = plan
        self.faces = check_cache(self.path, plan.table, plan.dataset)
        self.has_input = self.faces["valid"]

    def no_test_error(self, plan):
        return DataError(f"{self.path}: no test frame of {plan.dataset} has an aligned face")

    def notes(self, missing):
        n = sum(missing.values())
        return [f"{n} labelled validation/test frames have no aligned face and were left out"] if n else []

    def meta(self, plan, labels, test_rows, missing):
        return {"n_test": int(sum(r.size for r in test_rows))}

    def record(self, plan, missing):
        return {}

    def fold_counts(self, plan, labels, fi, test_rows):
        return {}

    def preprocessing(self, plan):
        return {"alignment": self.faces["settings"]}


def check_cache(path, table, dataset):
    """Return the cache's ``valid``, ``fingerprint`` and alignment ``settings``; StoreError when
    it does not list the frames of ``table`` in its order."""
    from featbench.core.align import AlignedFaces

    with AlignedFaces(path) as f:
        out = {"valid": f.valid.copy(), "fingerprint": str(f.fingerprint or ""),
               "settings": f.settings}
        keys = f.keys
    if len(out["valid"]) != len(table) or not np.array_equal(keys, table.keys()):
        raise StoreError(f"{path}: the aligned-face cache does not list the frames of "
                         f"{dataset} in its order (rerun featbench align)")
    return out


# --- jobs ----------------------------------------------------------------------------------------
def build_jobs(plan, method, usable, labels, *, identity=None, missing_parts=("train", "validation", "test")):
    """Return every (fold, unit) :class:`Job`, each fold's test rows and, per part, the labelled
    frames left out for want of an input (see the module docstring)."""
    labelled = (labels >= 0).any(axis=1)
    has = usable & labelled if plan.setting("labelled_only") else usable
    jobs, test_rows, missing = [], [], {p: 0 for p in missing_parts}
    units = method.units(list(plan.aus))
    n_folds = len(plan.splits)
    for fi, split in enumerate(plan.splits):
        rows = {}
        for part in ("train", "validation", "test"):
            m = split.mask(plan.table, part)
            if part in missing:
                missing[part] += int((m & labelled & ~usable).sum())
            rows[part] = np.flatnonzero(m & has)
        test_rows.append(rows["test"])
        for u in units:
            cols = [list(plan.aus).index(a) for a in u.aus]
            name = u.name if n_folds == 1 else f"{u.name}-{split.name}"
            jobs.append(Job(fi, split.name, u, rows, labels[:, cols], name, identity or {}))
    return jobs, test_rows, missing


def _say(method, run, n_folds, progress):
    def say(job):
        if progress:
            print(f"{method.kind} {run}: {job.unit.name} ({', '.join(job.unit.aus)}; "
                  f"{job.unit.region})" + (f", fold {job.fold_name}" if n_folds > 1 else ""),
                  file=sys.stderr)

    return say


# --- the run -------------------------------------------------------------------------------------
def execute(plan, inputs, make_method, *, identity=None, talk=False):
    """Train and write the run ``plan`` describes; return its result dict (None on a torchrun
    rank other than 0, which trains its share of the jobs and leaves the writing to rank 0).

    Parameters
    ----------
    plan : RunPlan
    inputs : CodeInputs or FaceInputs
    make_method : callable
        ``make_method(plan, inputs) -> Method`` (the kind's method, over the opened inputs).
    identity : callable, optional
        ``identity(method, inputs) -> dict``: what a trained unit's identity holds beside its
        own settings (networks: a finished unit with the same identity is reused by a rerun).
    talk : bool
        A line per unit as it starts training (networks), instead of one bar over the jobs.

    Returns
    -------
    dict
        :func:`classify.learn.writer.write_record`'s: ``run``, ``rows``, ``mean``, ``notes``,
        ``meta``, ``csv``, ``predictions``, ``models_dir``, ``folds``, ``record``...
    """
    t0 = time.time()
    ws, ds, run = plan.workspace, plan.dataset, plan.run
    models_dir = ws.models_dir(ds, run)
    inputs.check(plan)  # a refusal of the inputs themselves is no run's failure: nothing written
    # one process makes a run at a time (the lock first: a busy run is not this run's failure);
    # from here on a failure is this run's: it becomes the run's row in summary.csv
    with run_lock(models_dir), recording_failure(ws, ds, run, plan.meta):
        labels = plan.task.targets(plan.table, list(plan.aus))
        inputs.open(plan, labels)
        method = make_method(plan, inputs)
        jobs, test_rows, missing = build_jobs(
            plan, method, inputs.has_input, labels, missing_parts=inputs.missing_parts,
            identity=None if identity is None else identity(method, inputs))
        if not any(r.size for r in test_rows):
            raise inputs.no_test_error(plan)
        work = models_dir.with_name(f".{run}.partial") if method.resumable else None
        results = _train(method, jobs, plan, work, models_dir, talk)
        if results is None:
            return None
        record = RunRecord(plan=plan, method=method, inputs=inputs, jobs=jobs, results=results,
                           labels=labels, test_rows=test_rows, missing=missing, t0=t0)
        out = write_record(record)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)  # the finished units are in the run's folder now
    out["notes"] += inputs.notes(missing)
    return out


def _train(method, jobs, plan, work, models_dir, talk):
    from classify.learn.pool import run_units

    say = _say(method, plan.run, len(plan.splits), plan.progress) if talk else None
    return run_units(method, jobs, work=work, done=models_dir if work is not None else None,
                     progress=plan.progress, say=say, scheduler=plan.scheduler)
