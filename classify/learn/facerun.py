"""A run of a method over aligned faces, from the data set to the written run.

:func:`face_run` is what ``featbench finetune`` (and any method over faces: a test's toy
method) runs once its method is built: the aligned-face cache checked against the frame table,
the protocol's folds (``featbench.core.splits``), one job per (fold, unit), every unit trained by
the shared loop (:func:`classify.learn.loop.run_units`), the run written by the one writer
(:func:`classify.learn.writer.write_outputs`) and its model through
:mod:`featbench.core.modelfile` (:func:`classify.learn.loop.write_model`), a failure recorded as
the run's summary row.

What a method adds to :class:`~classify.learn.method.Method` for it (defaults in parentheses):

``settings_json()``
    Its settings as JSON, part of every unit's identity (checkpoints, finished units).
``model_settings(aus, splits, info)``
    The kind's own part of the manifest: what rebuilds a unit's network and says what it reads
    (its ``face_input`` per unit: :meth:`featbench.core.facesource.FaceInput.to_json`).
``preprocessing(aus, info)``
    The manifest's preprocessing (model, regions, input size, mean / std); alignment is added.
``row_extra(record)`` (none)
    The method's own per-AU columns of the run's table (``record``: the first fold's).
``record(info)`` (none)
    More of settings.json.
``prediction_attrs`` (model, region, clf, weights, protocol, dataset)
    The summary columns the predictions file records.
"""

import shutil
import sys
import time

import numpy as np

from featbench.core.align import AlignedFaces
from featbench.core.errors import DataError, StoreError
from featbench.core.splits import make_splits

from classify.learn import store
from classify.learn.loop import fold_entries, per_au, run_units, save_units, write_model
from classify.learn.method import Job
from classify.learn.writer import fold_record, recording_failure, versions, write_outputs


def face_run(method, workspace, dataset, table, *, run, aus, protocol, seed, meta, info=None,
             progress=True, t0=None):
    """Train ``method`` on the aligned faces of ``table`` and write run ``run``; return its dict.

    Parameters
    ----------
    method : Method
        Built on ``aligned_path`` (``method.aligned_path``).
    meta : dict
        The summary row's columns (``model``, ``region``, ``clf``, ``weights``...); a failure
        from here on becomes the run's row.
    info : dict, optional
        What the method's network says of itself (:meth:`model_settings` gets it).

    Returns
    -------
    dict
        :func:`classify.learn.writer.write_outputs`'s, plus ``units`` (each unit's record).
    """
    t0 = time.time() if t0 is None else t0
    with recording_failure(workspace, dataset, run, meta):
        faces = check_cache(method.aligned_path, table, dataset)
        labels = method.task.targets(table, aus)
        splits = make_splits(table, protocol, seed=seed)
        identity = {**method.settings_json(), "task": method.task.name, "aus": aus,
                    "table": table.fingerprint(), "faces": faces["fingerprint"]}
        jobs, test_rows, missing = face_jobs(method, table, splits, labels, aus, faces["valid"],
                                             identity)
        if not any(r.size for r in test_rows):
            raise DataError(f"{method.aligned_path}: no test frame of {dataset} has an aligned face")
        work = workspace.models_dir(dataset, run).with_name(f".{run}.partial")
        results = run_units(method, jobs, work=work, done=workspace.models_dir(dataset, run),
                            progress=progress, say=_say(method, run, len(splits), progress))
        by = per_au(results, aus)
        meta.update(n_test=int(sum(r.size for r in test_rows)), seconds=round(time.time() - t0, 1))

        def fill(tmp, rows_out, thresholds):
            return _fill(tmp, work, method, run, meta, info or {}, splits, results, by, aus, faces)

        out = write_outputs(workspace, dataset, run, table=table, au_list=aus, splits=splits,
                            test_rows=test_rows, by=by, labels=labels, meta=meta, fill_models=fill,
                            task=method.task, extra=lambda au: method.row_extra(by[(0, au)]),
                            attrs=method.prediction_attrs)
    if missing:
        out["notes"].append(f"{missing} labelled validation/test frames have no aligned face and "
                            "were left out")
    out["units"] = {r.name: r.record() for r in results}
    return out


def check_cache(path, table, dataset):
    """Return the cache's ``valid``, ``fingerprint`` and alignment ``settings``; StoreError when
    it does not list the frames of ``table`` in its order."""
    with AlignedFaces(path) as f:
        out = {"valid": f.valid.copy(), "fingerprint": str(f.fingerprint or ""),
               "settings": f.settings}
        keys = f.keys
    if len(out["valid"]) != len(table) or not np.array_equal(keys, table.keys()):
        raise StoreError(f"{path}: the aligned-face cache does not list the frames of "
                         f"{dataset} in its order (rerun featbench align)")
    return out


def face_jobs(method, table, splits, labels, aus, valid, identity):
    """Every (fold, unit) job over the frames with a face; each fold's test rows; the labelled
    validation and test frames left out for want of a face."""
    labelled = (labels >= 0).any(axis=1)
    jobs, test_rows, missing = [], [], 0
    units = method.units(aus)
    for fi, split in enumerate(splits):
        rows = {}
        for part in ("train", "validation", "test"):
            m = split.mask(table, part)
            if part != "train":
                missing += int((m & labelled & ~valid).sum())
            rows[part] = np.flatnonzero(m & valid)
        test_rows.append(rows["test"])
        for u in units:
            cols = [aus.index(a) for a in u.aus]
            name = u.name if len(splits) == 1 else f"{u.name}-{split.name}"
            jobs.append(Job(fi, split.name, u, rows, labels[:, cols], name, identity))
    return jobs, test_rows, missing


def _say(method, run, n_folds, progress):
    def say(job):
        if progress:
            print(f"{method.kind} {run}: {job.unit.name} ({', '.join(job.unit.aus)}; "
                  f"{job.unit.region})" + (f", fold {job.fold_name}" if n_folds > 1 else ""),
                  file=sys.stderr)

    return say


def _fill(tmp, work, method, run, meta, info, splits, results, by, aus, faces):
    """The run's folder: its model (one tensor group per unit), each unit's log and curves,
    settings.json; the work folder goes."""
    units = save_units(tmp, work, results)
    write_model(tmp, method, run, aus, splits, results, units, weights=meta["weights"],
                dataset=meta["dataset"],
                preprocessing={**method.preprocessing(aus, info), "alignment": faces["settings"]},
                faces=faces["fingerprint"], folds=[s.name for s in splits] if len(splits) > 1 else [],
                **method.model_settings(aus, splits, info))
    folds = [fold_record(s, per) for s, per in zip(splits, fold_entries(by, splits, aus))]
    store.write_json(tmp / "settings.json", {
        "run": run, **{k: v for k, v in meta.items() if k != "seconds"},
        **method.record(info), "aus": aus, "units": units, "folds": folds,
        "default_threshold": 0.0, "versions": versions(**method.versions()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    shutil.rmtree(work, ignore_errors=True)
    return folds
