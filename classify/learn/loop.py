"""The one fold x unit loop of every learned method.

:func:`classify.learn.pool.run_units` trains every :class:`~classify.learn.method.Job` (one
unit of one fold) of a run through :func:`train_unit` (here, in local workers, on Dask or on
torchrun's ranks):

1. the method's rows and targets (:meth:`Method.unit_data`); a unit none of whose AUs has
   positives and negatives in training gets no network, and says so;
2. a fresh network (:meth:`Method.build`) trained by :func:`classify.training.fit` on the
   method's batches with the task's loss, the epoch chosen by the task's validation metric on the
   validation subjects (never test), a checkpoint per epoch under ``<work>/<unit>/`` that a
   rerun resumes, the per-epoch log and curves beside it;
3. the decision rule settled on validation rows only (:meth:`Task.settle`);
4. the finished unit saved in ``<work>`` (``<unit>.safetensors`` + ``<unit>.json``), so a rerun
   with the same settings skips it; then its test scores.

Units train one after another, in ``method.workers`` local processes (compute threads = cores
// workers), on a Dask cluster or on torchrun's ranks (:mod:`classify.learn.pool`). :func:`per_au` turns the units' results into the per-(fold,
AU) records the run writer (:mod:`classify.learn.writer`) takes, as ``featbench classify``'s
per-AU fits are.
"""

import json
import os
from functools import partial
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from featbench.core import modelfile
from featbench.core.errors import FeatbenchError
from featbench.core.workspace import atomic_write_text

from classify.estimators import AUFit
from classify.learn import store


@dataclass
class UnitResult:
    """One trained unit of one fold (what :func:`train_unit` returns)."""

    name: str
    fold: int
    aus: list
    region: str
    counts: list
    trainable: list = field(default_factory=list)
    thresholds: list = field(default_factory=list)
    values: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    fit: dict = field(default_factory=dict)
    test_scores: object = None
    net: object = None
    info: dict = field(default_factory=dict)
    error: str = ""
    identity: dict = field(default_factory=dict)
    n_test: int = 0
    base: str = ""
    #: per AU index, the method's own fit record (an estimator's AUFit with its chosen parameters)
    aufits: dict = field(default_factory=dict)
    #: per AU index, why it got no model (the method's words)
    errors: dict = field(default_factory=dict)
    noun: str = "network"

    def record(self):
        """JSON-ready: what the run's settings keep of the unit."""
        return {"unit": self.name, "base": self.base or self.name, "fold": self.fold,
                "aus": list(self.aus), "region": self.region,
                "trainable": [self.aus[j] for j in self.trainable], **self.fit,
                "thresholds": self.thresholds, **({"error": self.error} if self.error else {})}

    def saved(self):
        """What a rerun with the same identity takes instead of training again."""
        return {"identity": self.identity, "result": {
            "thresholds": self.thresholds, "values": self.values, "notes": self.notes,
            "fit": self.fit}}


def train_unit(method, job, *, work, done=None, progress=False):
    """Train (or load, when finished before with the same identity) one unit; see the module
    docstring. Returns a :class:`UnitResult` with the model and its test scores.

    ``done``: the run's folder of an earlier run, whose manifest's units are taken when their
    identity is this one's (a rerun of a finished run trains nothing).
    """
    data = method.unit_data(job)
    res = UnitResult(job.name, job.fold, list(job.unit.aus), job.unit.region, data.counts,
                     trainable=list(data.trainable), n_test=int(job.rows["test"].size),
                     base=job.unit.name, errors=dict(data.errors), noun=method.model_noun)
    if not data.trainable:
        res.error = (data.errors.get(0) if len(job.unit.aus) == 1 and data.errors else
                     f"no positive (or no negative) frame in training: no {method.model_noun}")
        return res
    fit_unit = getattr(method, "fit_unit", None) or partial(fit_network, method)
    fit_unit(job, data, res, work=work, done=done, progress=progress)
    res.test_scores = method.task.output(method.scores(res.net, job, data, "test")[1])
    res.fit.update(data.info)
    res.notes = list(dict.fromkeys(res.notes + data.notes))
    return res


def fit_network(method, job, data, res, *, work, done=None, progress=False):
    """A network method's :meth:`~classify.learn.method.Method.fit_unit`: a fresh network
    (:meth:`Method.build`) trained by :func:`_fit`, or the finished unit an earlier run left
    with the same identity; the finished unit is saved in ``work`` for a rerun."""
    net, info = method.build(job, data)
    res.info = info
    res.identity = json.loads(json.dumps({"settings": job.identity, "unit": job.name,
                                          "fold": job.fold, "weights": info.get("weights", "")},
                                         default=_plain))
    if not _load_finished(method, net, res, work, done):
        _fit(method, job, data, net, res, work, res.identity, progress)
        store.write_tensors(work / f"{job.name}.safetensors", method.state(net))
        atomic_write_text(work / f"{job.name}.json", json.dumps(res.saved(), default=_plain))
        shutil.rmtree(work / job.name, ignore_errors=True)  # last.pt: no longer needed
    res.net = net


def _fit(method, job, data, net, res, work, identity, progress):
    """Train ``net`` through :func:`classify.training.fit`; settle its decision rule."""
    from classify.training import fit, plot_history  # torch: only when a network trains

    task, cols = method.task, list(data.trainable)
    t0 = time.time()

    def evaluate(m):
        return task.validate(*task.select(*method.scores(m, job, data, "validation"), cols))

    fr = fit(net, train_batches=method.train_batches(job, data), step_loss=method.step_loss(job, data),
             evaluate=evaluate, config=method.train_config(job), checkpoint_dir=work / job.name,
             identity=identity, log_path=work / f"{job.name}.log.csv", progress=progress)
    if fr.history:
        plot_history(fr.history, work / f"{job.name}.png",
                     title=f"{job.name} ({method.kind}, {identity['weights']})")
    settled = task.settle(*task.select(*method.scores(net, job, data, "threshold"), cols),
                          tune=method.tune)
    res.thresholds = [float("nan")] * len(job.unit.aus)
    res.values = [float("nan")] * len(job.unit.aus)
    for c, j in enumerate(cols):
        res.thresholds[j], res.values[j] = settled.thresholds[c], settled.values[c]
    res.notes = settled.notes
    if not (fr.best and np.isfinite(fr.best.get("val_score", np.nan))):
        res.notes.append("no validation score (no positive in validation): last epoch kept")
    res.fit = {"best_epoch": int(fr.best_epoch), "val_score": float(fr.best.get("val_score", np.nan)),
               "epochs_run": len(fr.history), "stopped_early": bool(fr.stopped_early),
               "resumed_from": int(fr.resumed_from), "train_seconds": round(time.time() - t0, 1),
               "device": str(fr.device), "precision": fr.precision, "history": fr.history}


def _load_finished(method, net, res, work, done):
    """Load the unit when an earlier (killed or finished) run left it with the same identity:
    in ``work`` (``<unit>.json``) or in the finished run's folder ``done`` (its manifest)."""
    found = []
    if (work / f"{res.name}.json").is_file():
        found.append((work, json.loads((work / f"{res.name}.json").read_text())))
    model = _finished_run(done)
    if model is not None:
        found.append((done, model.manifest["settings"].get("units", {}).get(res.name) or {}))
    for folder, saved in found:
        if saved.get("identity") != res.identity:
            continue
        if folder is done:
            state = unit_state(model, res.name)
            for suffix in (".log.csv", ".png"):  # kept for this run's folder, which replaces that one
                if (done / f"{res.name}{suffix}").is_file():
                    work.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(done / f"{res.name}{suffix}", work / f"{res.name}{suffix}")
        elif (folder / f"{res.name}.safetensors").is_file():
            state = store.read_tensors(folder / f"{res.name}.safetensors")
        else:
            continue
        method.load_state(net, state)
        for key, value in saved["result"].items():
            setattr(res, key, value)
        res.fit["resumed_from"] = res.fit.get("epochs_run", 0)
        return True
    return False


def _finished_run(folder):
    """The model of a finished run in ``folder``, or None (none there, or not readable)."""
    if folder is None or not (folder / modelfile.MANIFEST).is_file():
        return None
    try:
        model = modelfile.open_model(folder)
    except FeatbenchError:
        return None
    return model if "units" in (model.manifest.get("settings") or {}) else None


def _plain(v):
    return v.item() if hasattr(v, "item") else str(v)


def per_au(results, au_list):
    """Return ``{(fold, au): record}``: the per-AU view of the units' results.

    A record holds ``fold``, ``au``, ``n_train``, ``n_train_pos``, ``n_val``, ``n_val_pos``,
    ``scores`` (the AU's test scores), ``unit`` (its :class:`UnitResult`) and ``fit`` (an
    :class:`classify.estimators.AUFit` with the threshold, the validation metric at it and the
    notes; None with an ``error`` when the AU got no network).
    """
    by = {}
    for res in results:
        for j, au in enumerate(res.aus):
            if au not in au_list:
                continue
            n_tr, p_tr, n_va, p_va = res.counts[j]
            rec = {"fold": res.fold, "au": au, "n_train": n_tr, "n_train_pos": p_tr, "n_val": n_va,
                   "n_val_pos": p_va, "unit": res, "fit": None,
                   "scores": np.full(res.n_test, np.nan, np.float32)}
            if j in res.trainable:
                rec["fit"] = res.aufits.get(j) or AUFit(model=res.net, threshold=res.thresholds[j],
                                                        val_f1=res.values[j], notes=list(res.notes))
                rec["scores"] = res.test_scores[:, j]
            else:
                what = "positive" if p_tr == 0 else "negative"
                rec["error"] = (res.errors.get(j) or res.error
                                or f"no {what} frame in training: no {res.noun}")
            by[(res.fold, au)] = rec
    return by


def save_units(folder, work, results):
    """Move each unit's log and curves from ``work`` into the run ``folder``.

    Returns ``{unit: record}`` (:meth:`UnitResult.record`, the file names, and what a rerun
    with the same identity reuses) for settings.json and the manifest.
    """
    units = {}
    for res in results:
        entry = res.record()
        for suffix, key in ((".log.csv", "log"), (".png", "curves")):
            src = work / f"{res.name}{suffix}"
            if src.exists():
                os.replace(src, folder / src.name)
                entry[key] = src.name
        if res.net is not None:
            entry["model_file"] = f"{res.name}{modelfile.SUFFIX}"
        units[res.name] = {**entry, **res.saved()}
    return units


def write_model(folder, record, *, preprocessing, units=None, extra=None, **settings):
    """Write a learned run's model (``record``: its :class:`~classify.learn.writer.RunRecord`)
    through :func:`classify.kinds.write_run_model`: one tensor group per unit that has a network
    (``AU01``, ``model``, ``AU01-<fold>``...) plus ``extra`` groups, the manifest (per-fold
    thresholds, the kind's ``preprocessing``; ``settings``: the kind's own JSON with the task
    and each unit's entry, ``units`` or else ``record.units``)."""
    from classify.kinds import record_fields, write_run_model

    method, results, aus = record.method, record.results, record.aus
    folds = []
    for fi, split in enumerate(record.splits):
        thr = {au: float(r.thresholds[j]) for r in results if r.fold == fi and r.net is not None
               for j, au in enumerate(r.aus) if j in r.trainable and au in aus}
        folds.append({"name": split.name, "thresholds": thr})
    groups = {r.name: method.state(r.net) for r in results if r.net is not None}
    units = {n: {k: v for k, v in e.items() if k != "history"}
             for n, e in (record.units if units is None else units).items()}
    settings = json.loads(json.dumps({**settings, "task": method.task.to_json(), "units": units},
                                     default=_plain))
    return write_run_model(folder, method.kind, folds, settings, {**groups, **(extra or {})},
                           record_fields(record, preprocessing=preprocessing))


def unit_state(model, unit):
    """The tensors of ``unit`` of an opened model (:func:`featbench.core.modelfile.open_model`)
    as torch tensors."""
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in model.tensors(unit).items()}
