"""One run on codes: stored codes + frame table -> metrics, predictions, models.

:func:`classify_run` is what ``featbench classify`` calls, for every kind that reads codes
(``lda``, ``svm``, ``lstm``; ``ridge``, ``svr`` for ``--task intensity``; a registered kind). It
makes the run's :class:`~classify.plan.RunPlan` and hands it to the one driver
(:func:`classify.driver.execute`), which for every fold of the protocol
(``featbench.core.splits``) and every unit of the kind's method (an AU; a region's AUs)

1. takes the fold's training, validation and test subjects' frames that have codes (frames of
   the table without codes are counted and reported, never silently dropped);
2. trains the unit through the one loop (:mod:`classify.learn.loop`): the estimators of
   :mod:`classify.codemethods` (balanced training and validation rows, never test; the SVM's C
   on validation; with ``tune_threshold`` the threshold on all of the validation subjects'
   frames) or the LSTM (:mod:`classify.lstm`);
3. scores every test frame.

Units train in parallel (joblib worker processes sharing memory-mapped codes; BLAS is held to
``cores // workers`` threads per worker), on a Dask cluster or on torchrun's ranks
(:mod:`classify.learn.pool`).

Outputs (``featbench.core.workspace`` names the paths; a rerun replaces only this run's files),
written by the one writer (:mod:`classify.learn.writer`)::

    results/<ds>/<run>.csv                 per-AU metrics + mean (featbench.core.results.write_run)
    results/<ds>/summary.csv               this run's row (other runs' rows are kept)
    results/<ds>/predictions/<run>.h5      /frames /labels /scores /decisions /fold /thresholds
    results/<ds>/models/<run>/             the run's model (featbench.core.modelfile): manifest.json
                                           + AU01.safetensors (multi-fold: AU01-<fold>), written by
                                           its kind's save (classify.kinds); settings.json: every
                                           argument, chosen C and threshold per fold and AU, split
                                           subjects, feature-file provenance, versions

Multi-fold protocols average each metric over folds (``f1_std`` is the spread of F1 across
folds, ``support`` the summed test positives) and store every test frame once.
"""

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import numpy as np

from featbench.core.calibrate import check_calibration
from featbench.core.datasets import load_dataset
from featbench.core.errors import UsageError, did_you_mean
from featbench.core.workspace import Workspace

from classify.codes import (check_features, default_model, feature_info, join_codes,  # noqa: F401
                            load_codes, model_preprocessing, plain, read_run_codes)
from classify.kinds import classifier_kind, get_kind, list_kinds
from classify.task import get_task
from classify.plan import (DEFAULT_LABEL_THRESHOLD, REGION_CHOICES, resolve_aus,  # noqa: F401
                           run_key, run_tag)


# --- the run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodesRun:
    """What one run on codes is: :func:`classify_run`'s settings as one object, which names the
    run (:meth:`key`) and is planned by :func:`plan_codes_run`.

    Parameters
    ----------
    model : str
        The network whose codes are classified.
    clf : str
        A run kind of :mod:`classify.kinds` that classifies codes (``lda``, ``svm``, ``lstm``;
        ``ridge``, ``svr`` for intensity).
    region : {"full", "upper", "middle", "lower", "auto"}
        ``auto``: each AU uses the codes of its own region (``featbench.core.aus.AU_REGION``).
    protocol : str
        ``paper``, ``literature``, ``kfold:K`` or ``own`` (``featbench.core.splits``).
    tune_threshold : bool
        Choose each AU's threshold on the validation subjects (default: 0).
    balance : bool, optional
        Balance training and validation per AU (all positives + as many random negatives);
        default: the kind's (``ridge`` / ``svr``: every frame).
    class_weight : {None, "balanced"}
        SVM class weights (LDA: equal priors); meant for ``balance=False``.
    seed : int
        Seeds splits, balancing and liblinear.
    n_jobs : int, optional
        Worker processes (default: all cores).
    aus : list of str or "AU01,AU02", optional
        Default: the protocol's AUs (:func:`resolve_aus`).
    progress : bool
        A tqdm bar on stderr.
    options : classify.lstm.LSTMOptions or dict, optional
        The kind's own settings (``clf="lstm"``: the network's, :func:`classify_run`'s ``lstm``;
        default: the paper's).
    scheduler : str, optional
        A Dask scheduler address (default: ``DASK_SCHEDULER_ADDRESS``; none: local workers);
        see :mod:`classify.learn.pool`, and :mod:`classify.scale` for ``FEATBENCH_MEMORY_GB``.
    calibrate : str
        Person calibration ``none|median|neutral`` (:mod:`featbench.core.calibrate`).
    task : str or Task, optional
        A registered task (:func:`classify.task.get_task`; default: the kind's own,
        ``occurrence``, or ``intensity`` for ``ridge`` / ``svr``).
    """

    model: str
    clf: str
    region: str = "full"
    protocol: str = "paper"
    tune_threshold: bool = False
    balance: Optional[bool] = None
    class_weight: Optional[str] = None
    seed: int = 0
    aus: Any = None
    options: Any = None
    calibrate: str = "none"
    task: Any = None
    n_jobs: Optional[int] = None
    scheduler: Optional[str] = None
    progress: bool = True

    def key(self, table):
        """The :class:`~featbench.core.identity.RunKey` of this run on ``table``: the one place a
        classify run's name is computed (through :func:`classify.plan.run_key`).

        The tags are the non-default settings only (``aus`` other than the protocol's, the
        table's label threshold, the kind's own ``options.tag()``, a task that is not the kind's
        own; ``options`` None: the kind's defaults). A kind balanced by default tags ``nobal``
        when it is not; one that is not (``ridge``, ``svr``) tags ``bal`` when it is.
        """
        kind = classifier_kind(self.clf)
        task = get_task(self.task or kind.task)
        options = kind.options(self.options) if kind.options is not None else None
        balance = kind.balance if self.balance is None else bool(self.balance)
        extra = [options.tag() if options else None, "bal" if balance and not kind.balance else None]
        return run_key(self.model, self.region, self.clf, protocol=self.protocol,
                       tune_threshold=self.tune_threshold, balance=balance or not kind.balance,
                       class_weight=self.class_weight, seed=self.seed, calibrate=self.calibrate,
                       aus=resolve_aus(table, self.protocol, self.aus, task=task),
                       default_aus=resolve_aus(table, self.protocol, task=task),
                       extra="-".join(e for e in extra if e) or None,
                       label_threshold=table.label_threshold, task_tag=kind.task_tag(task))


def classify_run_key(table, **settings):
    """Return the :class:`~featbench.core.identity.RunKey` of a classify run with these settings
    (:class:`CodesRun`'s fields: ``model``, ``clf``, ``region``, ``protocol``...; see
    :meth:`CodesRun.key`): :func:`classify_run` names its outputs so and ``featbench run``
    (:mod:`featbench.app.pipeline`) plans and finds runs with it."""
    return CodesRun(**settings).key(table)


def check_args(clf, region, class_weight, options, calibrate="none", task=None,
                tune_threshold=False):
    """Return the run kind of ``clf``, its own settings, the calibration and the task;
    UsageError for bad arguments."""
    spec = classifier_kind(clf)
    calibrate = check_calibration(calibrate)
    task = get_task(task or spec.task)
    if not spec.learns(task):
        able = [n for n in list_kinds(trained_by="classify") if get_kind(n).learns(task)]
        raise UsageError(f"--task {task.name} takes --clf {', '.join(able)}, not {clf}")
    task.refuse_class_flags((("--tune-threshold", tune_threshold), ("--class-weight", class_weight)),
                            f"--clf {clf}")
    if region not in REGION_CHOICES:
        raise UsageError(did_you_mean(str(region), REGION_CHOICES, what="region"))
    if class_weight not in (None, "balanced"):
        raise UsageError(f"class weight must be 'balanced' or none, got {class_weight!r}")
    if spec.options is not None:
        options = spec.options(options)
    elif options is not None:
        raise UsageError(f"LSTM settings apply only to --clf lstm, not {clf}")
    return spec, options, calibrate, task


def classify_run(workspace, dataset, *, table=None, lstm=None, **fields):
    """Train and score one per-AU run on codes; write its tables, predictions and models.

    Every kind ``featbench classify`` trains (``lda``, ``svm``, ``lstm``, ``ridge``, ``svr``, a
    registered one): its :class:`~classify.plan.RunPlan` is made here and run by the one driver
    (:func:`classify.driver.execute`).

    Parameters
    ----------
    workspace : Workspace or path
    dataset : str
        The data set's name (features are read from ``data/features/<dataset>/<model>.h5``).
    table : FrameTable, optional
        Default: ``featbench.core.datasets.load_dataset(dataset)`` (never generated here).
    lstm : classify.lstm.LSTMOptions or dict, optional
        ``clf="lstm"`` only: the network's settings (:attr:`CodesRun.options`; default: the
        paper's). Balancing means the protocol's sequence cutting; ``class_weight="balanced"``
        weights positive frames.
    **fields
        The run's settings, :class:`CodesRun`'s fields (``model``, ``clf``, ``region``,
        ``protocol``, ``tune_threshold``, ``balance``, ``class_weight``, ``seed``, ``n_jobs``,
        ``aus``, ``progress``, ``scheduler``, ``calibrate``, ``task``).

    Returns
    -------
    dict
        ``run``, ``dataset``, ``rows`` (per-AU dicts as in the CSV), ``mean``, ``notes``,
        ``meta``, ``csv``, ``predictions``, ``models_dir``, ``missing_codes``, ``seconds``.

    Raises
    ------
    UsageError, MissingRunError, StoreError
        Bad arguments; no codes (the message names the extract command). Once the codes are
        found, a failure is also recorded as the run's row in ``summary.csv``.
    """
    from classify.driver import CodeInputs, execute

    plan = plan_codes_run(workspace, dataset, CodesRun(options=lstm, **fields), table=table)
    out = execute(plan, CodeInputs(streams=plan.kind.streams), plan.kind.method,
                  identity=_identity, talk=False)
    if out is not None:
        out["missing_codes"] = out["record"].missing
    return out


def _identity(method, inputs):
    """What a trained unit of a codes run is besides its method's settings: the codes' file."""
    return {**method.identity(), "features": {k: plain(inputs.attrs.get(k))
                                              for k in ("created", "weights", "model")}}


def plan_codes_run(workspace, dataset, settings, *, table=None):
    """Return the :class:`~classify.plan.RunPlan` of a run on codes (``settings``: its
    :class:`CodesRun`; ``table``: default, the data set loaded); UsageError for bad settings,
    before any data is read."""
    from classify.plan import PlanData, RunPlan

    s = settings
    kind, options, calibrate, task = check_args(s.clf, s.region, s.class_weight, s.options,
                                                s.calibrate, s.task, s.tune_threshold)
    workspace = Workspace(workspace) if not isinstance(workspace, Workspace) else workspace
    table = table if table is not None else _load_table(workspace, dataset, s.progress)
    task.check_table(table)
    task = task.at_threshold(table.label_threshold)
    # the settings as checked: what names the run and what its row and settings.json record
    s = replace(s, balance=kind.balance if s.balance is None else bool(s.balance), options=options,
                calibrate=calibrate, task=task,
                aus=resolve_aus(table, s.protocol, s.aus, task=task))
    shared = dict(protocol=s.protocol, tune_threshold=s.tune_threshold, balance=s.balance,
                  class_weight=s.class_weight, seed=s.seed, calibrate=s.calibrate)
    meta = _run_meta(kind, options, table, task, dict(model=s.model, region=s.region, clf=s.clf,
                                                      dataset=dataset), shared)
    return RunPlan(workspace=workspace, data=PlanData(table, protocol=s.protocol, seed=s.seed),
                   kind=kind, task=task, model=s.model, region=s.region, protocol=s.protocol,
                   aus=tuple(s.aus), seed=s.seed, key=s.key(table), meta=meta, options=options,
                   common={**shared, "n_jobs": s.n_jobs}, progress=s.progress, scheduler=s.scheduler)


def _run_meta(kind, options, table, task, what, settings):
    """Return the run's settings as its summary row and settings.json record them (``what``:
    its model, region, clf and data set; ``settings``: the shared settings)."""
    threshold = table.label_threshold if table.label_threshold is not None else getattr(task, "threshold", "")
    s = settings
    return {**{k: what[k] for k in ("model", "region", "clf")}, "weights": "",
            "protocol": s["protocol"], "dataset": what["dataset"],
            "tune_threshold": bool(s["tune_threshold"]), "balance": bool(s["balance"]),
            "class_weight": s["class_weight"] or "", "seed": s["seed"],
            # which intensity made a label positive: runs on other thresholds never mix
            "label_threshold": threshold, "calibrate": s["calibrate"], "task": task.name,
            **({kind.name: asdict(options)} if options else {})}


def _load_table(workspace, dataset, progress):
    return load_dataset(dataset, workspace=workspace, progress=progress)


def format_result(result):
    """Return the one-screen text of a run: per-AU table, mean, notes and the CSV path.

    The run's task says which columns (``Task.SHOWN``) and how its mean reads
    (:meth:`Task.describe`: an intensity run's ICC, r, MAE and F1 of rounded intensity >= 2).
    """
    meta, mean = result["meta"], result["mean"]
    task = get_task(result.get("task", meta.get("task")))
    cols = task.SHOWN
    cal = meta.get("calibrate", "none")
    lines = [f"{result['run']} on {result['dataset']} ({task.title()}"
             f"{meta['protocol']} protocol{'' if cal in (None, 'none') else f', calibration {cal}'}, "
             f"{meta['n_train']} training / {meta['n_test']} test frames)",
             f"{'au':<6}" + "".join(f"{c:>10}" for c in cols)]

    def cell(v):
        if isinstance(v, (int, np.integer)):
            return f"{v:>10d}"
        return f"{'nan':>10}" if v is None or not np.isfinite(v) else f"{v:>10.3f}"

    for r in result["rows"] + [{**mean, "threshold": float("nan")}]:
        lines.append(f"{r['au']:<6}" + "".join(cell(r.get(c, float('nan'))) for c in cols))
    lines += [f"note: {n}" for n in result["notes"]]
    defined = sum(np.isfinite(float(r["f1"])) for r in result["rows"] if r.get("f1") is not None)
    undefined = len(result["rows"]) - defined  # nan F1 (no test positives) is not averaged
    head = task.describe(mean, meta, defined)
    lines.append(f"{head}{mean['f1']:.3f} over {defined} AUs"
                 f"{f' ({undefined} nan, left out)' if undefined else ''} in "
                 f"{result['seconds']:.0f} s -> {result['csv']}")
    return "\n".join(lines)