"""Methods over codes: scikit-learn estimators per AU, wrapped as the learned methods wrap networks.

The one fold x unit loop (:mod:`classify.learn.loop`) trains every kind through the method
contract (:mod:`classify.learn.method`); the estimator kinds are two methods of it:

:class:`ClassifierMethod` (``lda``, ``svm``, any :class:`~classify.estimators.ClassifierSpec`)
    One unit per AU (on its own region's codes with ``--region auto``). Its training and
    validation rows are the fold's labelled frames with codes, balanced (all positives + as
    many random negatives, seeded by ``(seed, fold, AU)``), never test; the estimator's search
    space is chosen by F1 on the balanced validation rows and, with ``tune_threshold``, the
    threshold on all of the validation subjects' frames (unbalanced like test: F1 depends on
    the share of positives). Codes larger than the memory budget stay in the feature file and
    an over-budget training set is fitted out of core (:mod:`classify.scale`).
:class:`RegressorMethod` (``ridge``, ``svr``: :class:`~classify.intensity.RegressorSpec`)
    One unit per region holding its AUs (AUs whose training rows are the same are fitted at
    once: one ridge path serves them); the training rows of an AU are its frames with a known
    intensity (``balance``: those with intensity >= the label threshold and as many others),
    the hyper-parameter is chosen by validation ICC on every validation frame; predictions are
    clipped to 0-5.

Both read the codes through :attr:`codes` (``{region: array, H5Codes or .npy path}``) and
``pos`` (a table row's row of codes); a local pool sends them memory-mapped
(:meth:`for_pool`), a Dask cluster once per worker.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from featbench.core.aus import AU_REGION

from classify.estimators import balance_indices, with_threshold
from classify.learn.method import Method, Unit, UnitData
from classify.task import OCCURRENCE


@dataclass(frozen=True)
class FitSettings:
    """How a run on codes fits its units, from its plan (:meth:`of`): the region whose codes
    they read (``auto``: each AU its own), the seed, balancing, class weights, threshold tuning,
    worker processes (``n_jobs``; None: every core) and the task."""

    region: str = "full"
    seed: int = 0
    balance: bool = True
    class_weight: Optional[str] = None
    tune_threshold: bool = False
    n_jobs: Optional[int] = None
    task: Any = OCCURRENCE

    @classmethod
    def of(cls, plan, *, balance=True):
        """The settings of ``plan`` (a :class:`~classify.plan.RunPlan`); ``balance``: the kind's
        default when the plan does not say."""
        return cls(region=plan.region, seed=plan.seed, balance=plan.setting("balance", balance),
                   class_weight=plan.setting("class_weight"),
                   tune_threshold=plan.setting("tune_threshold", False),
                   n_jobs=plan.setting("n_jobs"), task=plan.task)


class CodesInput:
    """What a method over codes holds and how it travels: ``codes`` (``{region: array, H5Codes
    or .npy path}``) and ``pos`` (a table row's row of codes)."""

    codes = None

    def X(self, region):
        c = self.codes[region]
        return np.load(c, mmap_mode="r") if isinstance(c, str) else c

    def shared(self):
        return self.codes

    def attach(self, codes):
        import copy

        out = copy.copy(self)
        out.codes = codes
        return out

    def for_pool(self, workers, folder):
        """A copy for worker processes: codes in memory become ``.npy`` files they map."""
        from classify.scale import H5Codes

        files = {}
        for region, c in self.codes.items():
            if isinstance(c, (H5Codes, str)):  # read from its file by each worker
                files[region] = c
                continue
            files[region] = os.path.join(folder, f"{region}.npy")
            np.save(files[region], c)
        return self.attach(files)


class CodesMethod(CodesInput, Method):
    """What the estimator methods share: the codes, the units' regions, BLAS threads."""

    resumable = False  # seconds per unit: refitted on a rerun, never checkpointed
    model_noun = "classifier"

    def __init__(self, spec, codes, pos, fit):
        super().__init__(fit.task)
        self.spec, self.codes, self.pos, self.region, self.seed = spec, codes, pos, fit.region, fit.seed
        self.kind = spec.name
        cores = os.cpu_count() or 1
        self.workers = cores if fit.n_jobs in (None, -1) else int(fit.n_jobs)

    def region_of(self, au):
        return AU_REGION[au] if self.region == "auto" else self.region

    @contextmanager
    def limited_threads(self, threads):
        """BLAS held to ``threads`` in a worker (``cores // workers``): numpy's own pool."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            yield

    def state(self, net):
        return {}


class ClassifierMethod(CodesMethod):
    """A per-AU classifier on codes (see the module docstring).

    Parameters
    ----------
    spec : ClassifierSpec
    codes : dict of region -> codes
    pos : array by table row
        The row of a frame's codes.
    fit : FitSettings
        Region, seed, task, workers; ``balance``, ``class_weight``, ``tune_threshold`` as
        ``featbench classify``'s flags.
    budget : int, optional
        Bytes a fit may hold: above it, codes read from HDF5 are fitted out of core.
    """

    def __init__(self, spec, codes, pos, fit, *, budget=None):
        super().__init__(spec, codes, pos, fit)
        self.balance, self.class_weight, self.tune = fit.balance, fit.class_weight, fit.tune_threshold
        self.budget = budget
        self.params = tuple(spec.search_space)

    def units(self, aus):
        return [Unit(au, (au,), self.region_of(au)) for au in aus]

    def for_pool(self, workers, folder):
        out = super().for_pool(workers, folder)
        if out.budget:
            out.budget = max(1, out.budget // workers)  # each worker's share
        return out

    def unit_data(self, job):
        """The AU's training and validation rows (labelled; balanced unless ``balance`` is off)
        and every labelled validation row (the threshold's)."""
        y_all, au = job.y[:, 0], job.unit.aus[0]
        rng = np.random.default_rng([self.seed, job.fold, int(au[2:])])
        parts = {}
        for part in ("train", "validation"):
            r = job.rows[part][y_all[job.rows[part]] >= 0]
            parts[f"all_{part}"] = r
            parts[part] = r[balance_indices(y_all[r], rng)] if self.balance else r
        ytr, yva = y_all[parts["train"]], y_all[parts["validation"]]
        counts = (int(ytr.size), int((ytr == 1).sum()), int(yva.size), int((yva == 1).sum()))
        data = UnitData([], [counts], {"rows": parts, "y": y_all})
        if counts[1] == 0 or counts[1] == ytr.size:
            what = "positive" if counts[1] == 0 else "negative"
            data.errors[0] = f"no {what} frame in training: no classifier"
        else:
            data.trainable.append(0)
        return data

    def fit_unit(self, job, data, res, **_):
        """Fit the AU's estimator (:meth:`ClassifierSpec.fit_au`, or out of core)."""
        from classify.scale import H5Codes, liblinear_bytes, peak_rss_mb

        spec, rows, y_all = self.spec, data.extra["rows"], data.extra["y"]
        X, pos = self.X(job.unit.region), self.pos
        ytr, yva = y_all[rows["train"]], y_all[rows["validation"]]
        thr_rows = rows["all_validation"] if self.tune and self.balance else None
        common = dict(class_weight=self.class_weight, tune_threshold=self.tune, seed=self.seed)
        if (spec.fit_streamed is not None and isinstance(X, H5Codes) and self.budget is not None
                and liblinear_bytes(ytr.size, X.shape[1], 0 if thr_rows is None else thr_rows.size)
                > self.budget):
            res.fit["solver"] = spec.streamed_solver
            fit = spec.fit_streamed(X, pos[rows["train"]], ytr, pos[rows["validation"]], yva,
                                    thr_rows=None if thr_rows is None else pos[thr_rows],
                                    y_thr=None if thr_rows is None else y_all[thr_rows],
                                    budget=self.budget, **common)
        else:
            res.fit["solver"] = spec.solver or spec.name
            thr = {} if thr_rows is None else {"X_thr": X[pos[thr_rows]], "y_thr": y_all[thr_rows]}
            fit = spec.fit_au(X[pos[rows["train"]]], ytr, X[pos[rows["validation"]]], yva,
                              **common, **thr)
        fit = with_threshold(fit)
        res.net, res.aufits = fit.model, {0: fit}
        res.thresholds, res.values, res.notes = [fit.threshold], [fit.val_f1], list(fit.notes)
        res.fit["rss_mb"] = peak_rss_mb()

    def fold_entry(self, rec):
        """One (fold, AU)'s entry of settings.json: counts, threshold, chosen parameters, notes."""
        entry = {k: rec[k] for k in ("n_train", "n_train_pos", "n_val", "n_val_pos")}
        fit = rec["fit"]
        if fit is None:
            return {**entry, "error": rec["error"]}
        entry.update({"threshold": fit.threshold, "val_f1": fit.val_f1, "notes": fit.notes})
        params = getattr(fit, "params", {})
        for param, value in params.items():
            entry[param] = value
            if len(params) == 1:
                entry[f"val_f1_by_{param}"] = {f"{c:g}": v for c, v in fit.grid.items()}
        return entry

    def record_settings(self, record):
        """The search space, and where the fits ran and what they held in memory."""
        from classify.scale import H5Codes, peak_rss_mb, scheduler_address

        space, results = self.spec.search_space, record.results
        scheduler = scheduler_address(record.plan.scheduler)
        return {"c_grid": list(space["C"]) if "C" in space else None,
                "search_space": {k: list(v) for k, v in space.items()}, "default_threshold": 0.0,
                "codes_in_memory": not any(isinstance(c, H5Codes) for c in self.codes.values()),
                "memory_budget_gb": round(self.budget / (1 << 30), 2) if self.budget else None,
                "solver": sorted({r.fit.get("solver", self.spec.name) for r in results}),
                "backend": f"dask {scheduler}" if scheduler else "joblib (local processes)",
                "peak_rss_mb": {"main": peak_rss_mb(),
                                "worker_max": max((r.fit.get("rss_mb", 0.0) for r in results),
                                                  default=0.0)}}

    def versions(self):
        import sklearn

        return {"scikit-learn": sklearn.__version__}

    def scores(self, model, job, data, part):
        from classify.scale import score

        test = job.rows["test"]
        s = np.full((test.size, 1), np.nan, np.float32)
        if test.size:
            s[:, 0] = score(model, self.X(job.unit.region), self.pos[test])
        return None, s


class RegressorMethod(CodesMethod):
    """Per-AU intensity regressors on codes (see the module docstring).

    Parameters
    ----------
    spec : RegressorSpec
    codes, pos
        As :class:`ClassifierMethod`.
    fit : FitSettings
        Region, seed, the task (:class:`~classify.intensity_task.Intensity`); ``balance``: train
        on the frames with intensity >= the label threshold and as many others. One process.
    """

    model_noun = "regressor"
    prediction_attrs = Method.prediction_attrs + ("calibrate", "label_threshold")

    def __init__(self, spec, codes, pos, fit):
        super().__init__(spec, codes, pos, fit)
        self.balance, self.params = fit.balance, (spec.param,)
        # one process: a ridge path is BLAS, whose results follow its thread count
        self.workers = 1

    def units(self, aus):
        regions = list(dict.fromkeys(self.region_of(a) for a in aus))
        return [Unit(r if self.region == "auto" else "model",
                     tuple(a for a in aus if self.region_of(a) == r), r) for r in regions]

    def unit_data(self, job):
        """Per AU its training rows (known intensity; balanced when asked); AUs whose rows are
        the same form one group, fitted at once."""
        y, rows, thr = job.y, job.rows, self.task.threshold
        groups, counts, data = {}, [], UnitData([], [])
        for j, au in enumerate(job.unit.aus):
            r = rows["train"][y[rows["train"], j] >= 0]
            if self.balance:
                r = r[balance_indices(y[r, j] >= thr,
                                      np.random.default_rng([self.seed, job.fold, int(au[2:])]))]
            v = y[r, j]
            if not r.size or np.all(v == v[0]):
                data.errors[j] = (f"every training frame has intensity {int(v[0])}: no regressor"
                                  if r.size else "no training frame with a known intensity: no regressor")
                counts.append((0, 0, 0, 0))
                continue
            counts.append((int(r.size), 0, 0, 0))
            data.trainable.append(j)
            groups.setdefault(r.tobytes(), (r, []))[1].append(j)
        data.counts, data.extra["groups"] = counts, list(groups.values())
        return data

    def fit_unit(self, job, data, res, **_):
        """Fit each group's regressors (:func:`classify.intensity.fit_intensity`)."""
        from featbench.core.metrics import decision_threshold

        from classify.intensity import fit_intensity

        X, pos, y, val = self.X(job.unit.region), self.pos, job.y, job.rows["validation"]
        k = len(job.unit.aus)
        res.aufits, res.thresholds, res.values = {}, [float("nan")] * k, [float("nan")] * k
        for r, members in data.extra["groups"]:
            out = fit_intensity(self.spec, X[pos[r]], y[np.ix_(r, members)], X[pos[val]],
                                y[np.ix_(val, members)], seed=self.seed)
            for j, fit in zip(members, out):
                fit.n_train, fit.threshold = int(r.size), decision_threshold(self.task.threshold)
                res.aufits[j] = fit
                res.thresholds[j], res.values[j] = fit.threshold, fit.val_icc
        res.net = res.aufits

    def fold_entry(self, rec):
        """One (fold, AU)'s entry of settings.json: the chosen parameter, its validation ICC."""
        fit, param = rec["fit"], self.spec.param
        if fit is None:
            return {"error": rec["error"]}
        return {**fit.params, "val_icc": fit.val_icc, "n_train": fit.n_train,
                f"val_icc_by_{param}": {f"{k:g}": v for k, v in fit.grid.items()}, "notes": fit.notes}

    def record_settings(self, record):
        return {"grid": {self.spec.param: list(self.spec.grid)}}

    def versions(self):
        import sklearn

        return {"scikit-learn": sklearn.__version__}

    def scores(self, model, job, data, part):
        test = job.rows["test"]
        s = np.full((test.size, len(job.unit.aus)), np.nan, np.float32)
        if test.size:
            X = self.X(job.unit.region)[self.pos[test]]
            for j, fit in model.items():
                s[:, j] = fit.model.predict(X)
        return None, s


# --- the kinds' methods (RunKind.method: classify.basekinds names them) ----------------------
def classifier_method(plan, inputs):
    """The method of a per-AU classifier kind (``lda``, ``svm``...) on opened codes
    (:class:`classify.driver.CodeInputs`)."""
    return ClassifierMethod(plan.kind.estimator, inputs.codes, inputs.pos, FitSettings.of(plan),
                            budget=inputs.budget)


def regressor_method(plan, inputs):
    """The method of an intensity regressor kind (``ridge``, ``svr``) on opened codes."""
    return RegressorMethod(plan.kind.estimator, inputs.codes, inputs.pos,
                           FitSettings.of(plan, balance=False))


__all__ = ["FitSettings", "ClassifierMethod", "RegressorMethod", "classifier_method",
           "regressor_method"]
