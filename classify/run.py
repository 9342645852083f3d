"""One classifier run of the protocol: stored codes + frame table -> metrics, predictions, models.

:func:`classify_run` is what ``featbench classify`` calls. For every fold of the protocol
(``featbench.core.splits``) and every AU it

1. takes the fold's training, validation and test subjects' frames that have codes and a
   label for the AU (frames of the table without codes are counted and reported, never
   silently dropped);
2. balances training and validation (all positives + as many random negatives, seeded),
   never test;
3. fits the AU's ``Pipeline(StandardScaler, clf)`` on training rows, chooses the SVM's C on
   the (balanced) validation rows and, with ``tune_threshold``, the decision threshold on all
   of the validation subjects' frames (unbalanced like test: F1 depends on the share of
   positives, so a threshold tuned on balanced rows overcalls);
4. scores every test frame.

AUs train in parallel (joblib worker processes sharing memory-mapped codes; BLAS is held to
``cores // workers`` threads per worker with threadpoolctl).

Outputs (``featbench.core.workspace`` names the paths; a rerun replaces only this run's files)::

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

import json
import os
import shutil
import sys
import time
from dataclasses import asdict

import numpy as np

from featbench.core import interrupt
from featbench.core.aus import AU_REGION, REGIONS, au_name
from featbench.core.calibrate import calibrate_codes, calibration_tag, check_calibration
from featbench.core.datasets import load_dataset
from featbench.core.errors import MissingRunError, StoreError, UsageError, did_you_mean
from featbench.core.frames import KEY_DTYPE
from featbench.core.identity import RunKey
from featbench.core.metrics import PRESENT_AT
from featbench.core.splits import make_splits, protocol_aus, scored_mask
from featbench.core.workspace import Workspace, atomic_write_text, run_lock

from classify.estimators import balance_indices, with_threshold
from classify.learn.intensity import check_task, task_named
from classify.learn.task import OCCURRENCE
from classify.learn.writer import fold_record, recording_failure, versions, write_outputs
from classify.kinds import classifier_kind, get_kind
from classify.scale import (H5Codes, codes_bytes, liblinear_bytes, memory_budget_bytes, peak_rss_mb,
                            run_on_dask, scheduler_address, score)
from extract.store import check_source, read_codes, store_info

REGION_CHOICES = ("full",) + REGIONS + ("auto",)


# --- arguments ---------------------------------------------------------------------------------
def resolve_aus(table, protocol, aus=None):
    """Return the AUs a run scores: ``aus`` if given, else the protocol's AUs the table labels.

    Default: :func:`featbench.core.splits.protocol_aus` (``paper`` -> the table's AUs among
    DISFA's 12, BP4D's 12 on BP4D; ``literature`` -> among the 8 of the 3-fold DISFA
    literature, BP4D's 12 on BP4D; other protocols -> all of the table's AUs).
    """
    if aus:
        names = [au_name(a) for a in (aus.split(",") if isinstance(aus, str) else aus) if str(a).strip()]
        unknown = [a for a in names if a not in table.aus]
        if unknown:
            raise UsageError(f"{table.dataset} does not label {', '.join(unknown)} "
                             f"(it labels {', '.join(table.aus)})")
        return list(dict.fromkeys(names))
    return protocol_aus(table, protocol)


#: the protocol's intensity threshold (PROTOCOL.md: present when intensity >= 2)
DEFAULT_LABEL_THRESHOLD = 2


def run_tag(*, protocol="paper", tune_threshold=False, balance=True, class_weight=None, seed=0,
            aus=None, default_aus=None, extra=None, label_threshold=None, calibrate="none",
            task="occurrence"):
    """Return the run-name tag of the non-default settings (None for the defaults).

    ``literature``, ``kfold5``, ``own``; ``i3`` (labels from another intensity threshold than
    the protocol's 2: ``--threshold 3``); ``thr`` (tuned thresholds); ``nobal``; ``cw``
    (balanced class weights); ``s<seed>``; ``au1+2`` for a subset of AUs; ``extra`` (the
    classifier's own non-default settings, e.g. the LSTM's ``ml``); ``calmed`` / ``calneu``
    (person calibration, ``featbench.core.calibrate``); the task's name when it is not
    occurrence (``intensity``: the LSTM's intensity runs, as fine-tuning names them); joined
    with ``-``.
    """
    parts = []
    if protocol != "paper":
        parts.append(protocol.replace(":", ""))
    if label_threshold not in (None, DEFAULT_LABEL_THRESHOLD):
        parts.append(f"i{int(label_threshold)}")
    if tune_threshold:
        parts.append("thr")
    if not balance:
        parts.append("nobal")
    if class_weight:
        parts.append("cw")
    if seed:
        parts.append(f"s{seed}")
    if aus is not None and default_aus is not None and list(aus) != list(default_aus):
        parts.append("au" + "+".join(str(int(a[2:])) for a in aus))
    if extra:
        parts.append(extra)
    if calibration_tag(calibrate):
        parts.append(calibration_tag(calibrate))
    if task != "occurrence":
        parts.append(task)
    return "-".join(parts) or None


# --- codes -------------------------------------------------------------------------------------
def _feature_info(path):
    """Return ``extract.store.store_info(path)``: attrs (model, weights...) and regions."""
    try:
        return store_info(path)
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 feature file ({exc})") from None


def check_features(workspace, dataset, model, regions=("full",), table=None):
    """Return the feature file of ``model``; MissingRunError naming the extract command if absent.

    With ``table``, codes made from other aligned faces than its inputs give now are refused
    (:func:`extract.store.check_source`), as ``extract`` refuses to reuse them.
    """
    path = workspace.features_path(dataset, model)
    if table is not None and path.exists():
        check_source(path, table, workspace.aligned_path(dataset))
    if not path.exists():
        from extract.registry import get_spec

        get_spec(model)  # an unknown name says so, with the closest one, before "not extracted"
        have = sorted(p.stem for p in path.parent.glob("*.h5")) if path.parent.exists() else []
        raise MissingRunError(
            f"{path}: no codes of model {model!r} for {dataset} (make them with: featbench extract "
            f"--model {model} --dataset {dataset}"
            f"{' --region all' if len(regions) > 1 or regions[0] != 'full' else ''})"
            + (f"; codes exist for: {', '.join(have)}" if have else ""))
    return path


def load_codes(workspace, dataset, model, regions, *, lazy=False):
    """Return ``(keys, {region: codes}, attrs)`` of the feature file of ``model``.

    With ``lazy``, the codes stay in the file: ``{region: classify.scale.H5Codes}``.

    Raises
    ------
    MissingRunError
        No feature file, or it lacks a region: the message names the ``featbench extract``
        command that makes it.
    """
    path = check_features(workspace, dataset, model, regions)
    present = [r for r in _feature_info(path)["regions"] if r in REGION_CHOICES]
    missing = [r for r in regions if r not in present]
    if missing:
        flag = "all" if len(regions) > 1 else missing[0]
        raise MissingRunError(f"{path} has no codes for region {', '.join(missing)} "
                              f"(it has {', '.join(present) or 'none'}; make them with: "
                              f"featbench extract --model {model} --dataset {dataset} --region {flag})")
    if lazy:
        from classify.scale import keys_and_attrs, lazy_codes

        codes = lazy_codes(path, regions)
        keys, attrs = keys_and_attrs(path)
        for r, c in codes.items():
            if len(c) != len(keys):
                raise StoreError(f"{path}: /{r}/codes has {len(c)} rows but /frames has {len(keys)}")
        return keys, codes, attrs
    keys, codes, attrs = None, {}, {}
    for r in regions:
        k, c, attrs = read_codes(path, r)
        if keys is None:
            keys = np.asarray(k).astype(KEY_DTYPE)
        if len(c) != len(keys):
            raise StoreError(f"{path}: /{r}/codes has {len(c)} rows but /frames has {len(keys)}")
        codes[r] = c
    return keys, codes, attrs


def default_model(workspace, dataset):
    """Return the only model with codes for ``dataset``; else a UsageError listing them."""
    folder = workspace.features_path(dataset, "x").parent
    have = sorted(p.stem for p in folder.glob("*.h5")) if folder.exists() else []
    if len(have) == 1:
        from extract.store import store_info

        try:  # the registry name (timm:x), which the file name spells timm-x
            return str(store_info(folder / f"{have[0]}.h5")["attrs"].get("model", have[0]))
        except OSError:
            return have[0]
    if not have:
        raise MissingRunError(f"no codes for {dataset} yet in {folder} (make them with: "
                              f"featbench extract --model NAME --dataset {dataset})")
    raise UsageError(f"pass --model: codes of several networks exist for {dataset} ({', '.join(have)})")


def join_codes(table, keys):
    """Return, per table row, the row of its codes in ``keys``, or -1 when it has none.

    Parameters
    ----------
    table : FrameTable
    keys : structured array of KEY_DTYPE, shape (n_codes,)

    Returns
    -------
    array of shape (len(table),) int64
    """
    import pandas as pd

    def index(k):
        return pd.MultiIndex.from_arrays([k["subject"], k["video"], k["frame"].astype(np.int64)])

    code_index = index(keys)
    if code_index.has_duplicates:
        raise StoreError("the feature file lists some frames twice in /frames")
    return code_index.get_indexer(index(table.keys())).astype(np.int64)


# --- one AU of one fold ------------------------------------------------------------------------
def _au_task(job, *, codes, labels, pos, spec, balance, class_weight, tune_threshold, seed,
             threads=None, budget=None):
    """Fit and score one (fold, AU); pure computation, run in a worker process.

    ``codes`` maps a region to its (n, dims) codes or to a ``.npy`` file opened memory-mapped,
    so that worker processes share the codes instead of copying them.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        out = _fit_score(job, codes=codes, labels=labels, pos=pos, spec=spec, balance=balance,
                         class_weight=class_weight, tune_threshold=tune_threshold, seed=seed,
                         budget=budget)
    out["rss_mb"] = peak_rss_mb()
    return out


def _fit_score(job, *, codes, labels, pos, spec, balance, class_weight, tune_threshold, seed,
               budget=None):
    fi, ai, au, region, rows = job
    y_all = labels[:, ai]
    rng = np.random.default_rng([seed, fi, int(au[2:])])
    parts = {}
    for part in ("train", "validation"):
        r = rows[part][y_all[rows[part]] >= 0]
        parts[f"all_{part}"] = r
        if balance:
            r = r[balance_indices(y_all[r], rng)]
        parts[part] = r
    X = codes[region]
    if isinstance(X, str):
        X = np.load(X, mmap_mode="r")
    ytr, yva = y_all[parts["train"]], y_all[parts["validation"]]
    out = {"fold": fi, "au": au, "n_train": int(ytr.size), "n_train_pos": int((ytr == 1).sum()),
           "n_val": int(yva.size), "n_val_pos": int((yva == 1).sum()), "fit": None,
           "scores": np.full(rows["test"].size, np.nan, dtype=np.float32)}
    if out["n_train_pos"] == 0 or out["n_train_pos"] == ytr.size:
        what = "positive" if out["n_train_pos"] == 0 else "negative"
        out["error"] = f"no {what} frame in training: no classifier"
        return out
    thr_rows = None
    if tune_threshold and balance:  # thresholds on every validation frame, as test is scored
        thr_rows = parts["all_validation"]
    if (spec.fit_streamed is not None and isinstance(X, H5Codes) and budget is not None
            and liblinear_bytes(ytr.size, X.shape[1], 0 if thr_rows is None else thr_rows.size)
            > budget):
        out["solver"] = spec.streamed_solver
        fit = spec.fit_streamed(X, pos[parts["train"]], ytr, pos[parts["validation"]], yva,
                                thr_rows=None if thr_rows is None else pos[thr_rows],
                                y_thr=None if thr_rows is None else y_all[thr_rows],
                                tune_threshold=tune_threshold, class_weight=class_weight,
                                seed=seed, budget=budget)
    else:
        out["solver"] = spec.solver or spec.name
        thr = {} if thr_rows is None else {"X_thr": X[pos[thr_rows]], "y_thr": y_all[thr_rows]}
        fit = spec.fit_au(X[pos[parts["train"]]], ytr, X[pos[parts["validation"]]], yva,
                          class_weight=class_weight, tune_threshold=tune_threshold, seed=seed, **thr)
    out["fit"] = with_threshold(fit)
    if rows["test"].size:
        out["scores"] = score(fit.model, X, pos[rows["test"]])
    return out


def _parallel(jobs, n_jobs, progress, *, codes, scheduler=None, **kw):
    """Run :func:`_au_task` over ``jobs`` in worker processes, BLAS limited to cores // workers.

    Processes, not threads: liblinear draws its coordinate order from one process-global
    random state, so concurrent fits in threads are not reproducible. The codes go to the
    workers as memory-mapped ``.npy`` files written once, not pickled per task.
    """
    import tempfile

    from joblib import Parallel, delayed
    from tqdm import tqdm

    if scheduler:
        return run_on_dask(_au_task, jobs, scheduler, progress, codes=codes, **kw)
    cores = os.cpu_count() or 1
    workers = max(1, min(len(jobs), cores if n_jobs in (None, -1) else int(n_jobs)))
    if kw.get("budget"):
        kw["budget"] = max(1, kw["budget"] // workers)  # each worker's share
    bar = dict(total=len(jobs), desc="classify", unit="AU", file=sys.stderr, disable=not progress,
               leave=False)
    if workers == 1:
        return [_au_task(j, codes=codes, **kw) for j in interrupt.between(tqdm(jobs, **bar))]
    with tempfile.TemporaryDirectory(prefix="featbench-codes-") as tmp:
        files = {}
        for region, c in codes.items():
            if isinstance(c, H5Codes):  # read from the feature file by each worker
                files[region] = c
                continue
            files[region] = os.path.join(tmp, f"{region}.npy")
            np.save(files[region], c)
        gen = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")(
            delayed(_au_task)(j, codes=files, threads=max(1, cores // workers), **kw) for j in jobs)
        return list(tqdm(interrupt.between(gen), **bar))  # Ctrl-C: at the next AU's result


# --- the run -----------------------------------------------------------------------------------
def classify_run_key(table, *, model, region, clf, protocol="paper", tune_threshold=False,
                     balance=True, class_weight=None, seed=0, aus=None, options=None,
                     calibrate="none", task="occurrence"):
    """Return the :class:`~featbench.core.identity.RunKey` of a classify run with these settings.

    The one place a classify run's name is computed: :func:`classify_run` names its outputs
    with it and ``featbench run`` (:mod:`featbench.app.pipeline`) plans and finds runs with it.
    The tags are :func:`run_tag`'s (non-default settings only; ``aus`` other than the
    protocol's, the table's label threshold, the kind's own ``options.tag()``; ``options``
    None: the kind's defaults).
    """
    kind = classifier_kind(clf)
    options = kind.options(options) if kind.options is not None else None
    tag = run_tag(protocol=protocol, tune_threshold=tune_threshold, balance=balance,
                  class_weight=class_weight, seed=seed, calibrate=calibrate, task=task,
                  aus=resolve_aus(table, protocol, aus), default_aus=resolve_aus(table, protocol),
                  extra=options.tag() if options else None, label_threshold=table.label_threshold)
    return RunKey(model, region, clf, tag or ())


def _check_args(clf, region, class_weight, options, calibrate="none", task="occurrence"):
    """Return the run kind of ``clf``, its own settings and the calibration; UsageError for
    bad arguments."""
    spec = classifier_kind(clf)
    calibrate = check_calibration(calibrate)
    if check_task(task) == "intensity" and spec.fit_jobs is None:
        raise UsageError(f"--task intensity takes --clf ridge, svr or lstm, not {clf}")
    if region not in REGION_CHOICES:
        raise UsageError(did_you_mean(str(region), REGION_CHOICES, what="region"))
    if class_weight not in (None, "balanced"):
        raise UsageError(f"class weight must be 'balanced' or none, got {class_weight!r}")
    if spec.options is not None:
        options = spec.options(options)
    elif options is not None:
        raise UsageError(f"LSTM settings apply only to --clf lstm, not {clf}")
    return spec, options, calibrate


def classify_run(workspace, dataset, *, model, clf, region="full", protocol="paper",
                 tune_threshold=False, balance=True, class_weight=None, seed=0, n_jobs=None,
                 table=None, aus=None, progress=True, lstm=None, scheduler=None, calibrate="none",
                 task="occurrence"):
    """Train and score one per-AU classifier run; write its tables, predictions and models.

    Parameters
    ----------
    workspace : Workspace or path
    dataset : str
        The data set's name (features are read from ``data/features/<dataset>/<model>.h5``).
    model : str
        The network whose codes are classified.
    clf : str
        A run kind of :mod:`classify.kinds` that classifies codes (``lda``, ``svm``, ``lstm``).
    region : {"full", "upper", "middle", "lower", "auto"}
        ``auto``: each AU uses the codes of its own region (``featbench.core.aus.AU_REGION``).
    protocol : str
        ``paper``, ``literature``, ``kfold:K`` or ``own`` (``featbench.core.splits``).
    tune_threshold : bool
        Choose each AU's threshold on the validation subjects (default: 0).
    balance : bool
        Balance training and validation per AU (all positives + as many random negatives).
    class_weight : {None, "balanced"}
        SVM class weights (LDA: equal priors); meant for ``balance=False``.
    seed : int
        Seeds splits, balancing and liblinear.
    n_jobs : int, optional
        Worker processes (default: all cores).
    table : FrameTable, optional
        Default: ``featbench.core.datasets.load_dataset(dataset)`` (never generated here).
    aus : list of str or "AU01,AU02", optional
        Default: the protocol's AUs (:func:`resolve_aus`).
    progress : bool
        A tqdm bar on stderr.
    lstm : classify.lstm.LSTMOptions or dict, optional
        ``clf="lstm"`` only: the network's settings (default: the paper's). Balancing means the
        protocol's sequence cutting; ``class_weight="balanced"`` weights positive frames.
    scheduler : str, optional
        LDA / SVM: a Dask scheduler address (default: ``DASK_SCHEDULER_ADDRESS``; none: local
        workers); see :mod:`classify.scale`, also for ``FEATBENCH_MEMORY_GB``.
    calibrate, task : str
        Person calibration ``none|median|neutral`` (:mod:`featbench.core.calibrate`); task
        ``occurrence`` or, ``clf="lstm"`` only, ``intensity`` (:mod:`classify.learn.intensity`).

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
    t0 = time.time()
    spec, options, method = _check_args(clf, region, class_weight, lstm, calibrate, task)
    workspace = Workspace(workspace) if not isinstance(workspace, Workspace) else workspace
    table = table if table is not None else _load_table(workspace, dataset, progress)
    au_list = resolve_aus(table, protocol, aus)
    settings = dict(protocol=protocol, tune_threshold=tune_threshold, balance=balance,
                    class_weight=class_weight, seed=seed, calibrate=method, task=task)
    run = str(classify_run_key(table, model=model, region=region, clf=clf, aus=au_list,
                               options=options, **settings))
    regions = sorted({AU_REGION[a] for a in au_list}) if region == "auto" else [region]
    path = check_features(workspace, dataset, model, regions, table)
    meta = _run_meta(spec, options, table, model=model, region=region, clf=clf, dataset=dataset,
                     **settings)
    # one process makes a run at a time (the lock first: a busy run is not this run's failure);
    # from here on a failure is this run's: it becomes the run's row in summary.csv
    with run_lock(workspace.models_dir(dataset, run)), recording_failure(workspace, dataset, run, meta):
        meta["weights"] = str(_feature_info(path)["attrs"].get("weights", ""))
        keys, codes, attrs, budget = _read_run_codes(spec, workspace, dataset, model, regions, path, method)
        return _classify(workspace, dataset, run, table, au_list, keys, codes, attrs, meta,
                         n_jobs=n_jobs, progress=progress, t0=t0, budget=budget, scheduler=scheduler)


def _run_meta(spec, options, table, *, model, region, clf, dataset, protocol, tune_threshold,
              balance, class_weight, seed, calibrate="none", task="occurrence"):
    """Return the run's settings as its summary row and settings.json record them."""
    return {"model": model, "region": region, "clf": clf, "weights": "",
            "protocol": protocol, "dataset": dataset, "tune_threshold": bool(tune_threshold),
            "balance": bool(balance), "class_weight": class_weight or "", "seed": seed,
            # which intensity made a label positive: runs on other thresholds never mix
            "label_threshold": "" if table.label_threshold is None else table.label_threshold,
            "calibrate": calibrate, "task": task,
            **({spec.name: asdict(options)} if options else {})}


def _load_table(workspace, dataset, progress):
    return load_dataset(dataset, workspace=workspace, progress=progress)


def _read_run_codes(kind, workspace, dataset, model, regions, path, calibrate="none"):
    """Return ``(keys, codes, attrs, memory budget)``; codes over the budget stay on disk,
    unless calibrated (``featbench.core.calibrate``: every row is rewritten, in memory, by
    :func:`_classify`)."""
    budget = memory_budget_bytes()
    lazy = (not kind.needs_sequences and calibrate == "none"
            and codes_bytes(path, regions) > budget)
    return (*load_codes(workspace, dataset, model, regions, lazy=lazy), budget)


def _make_jobs(table, splits, au_list, region, has_code, labelled):
    """Return the (fold, AU) jobs, each fold's test rows and the labelled frames without codes per part."""
    missing = {"train": 0, "validation": 0, "test": 0}
    jobs, test_rows = [], []
    for fi, split in enumerate(splits):
        rows = {}
        for part in ("train", "validation", "test"):
            m = split.mask(table, part)
            missing[part] += int((m & labelled & ~has_code).sum())
            rows[part] = np.flatnonzero(m & has_code)
        test_rows.append(rows["test"])
        for ai, au in enumerate(au_list):
            jobs.append((fi, ai, au, AU_REGION[au] if region == "auto" else region, rows))
    return jobs, test_rows, missing


def _train(kind, jobs, meta, *, workspace, dataset, run, table, splits, codes, labels, pos, n_jobs,
           progress, budget, scheduler, task=OCCURRENCE):
    """Run every job: the kind's own trainer (sequences) or one fit of its estimator per job."""
    common = dict(codes=codes, labels=labels, pos=pos, seed=meta["seed"], balance=meta["balance"],
                  class_weight=meta["class_weight"] or None, tune_threshold=meta["tune_threshold"])
    if kind.fit_jobs is not None:  # sequences of frames, not rows: the kind's own trainer
        ckpt = workspace.models_dir(dataset, run).with_name(f".{run}.train")
        return kind.fit_jobs(jobs, table=table, splits=splits, options=kind.options(meta[kind.name]),
                             n_jobs=n_jobs, checkpoint_root=ckpt, progress=progress, task=task,
                             **common), None
    return _parallel(jobs, n_jobs, progress, spec=kind.estimator, budget=budget, scheduler=scheduler,
                     **common), scheduler


def _classify(workspace, dataset, run, table, au_list, keys, codes, attrs, meta, *, n_jobs, progress, t0,
              budget=None, scheduler=None):

    spec, scheduler = get_kind(meta["clf"]), scheduler_address(scheduler)
    pos = join_codes(table, keys)
    has_code = pos >= 0
    task = task_named(meta.get("task"), threshold=table.label_threshold or PRESENT_AT)
    labels = task.targets(table, au_list)
    labelled = (labels >= 0).any(axis=1)
    splits = make_splits(table, meta["protocol"], seed=meta["seed"])
    codes = calibrate_codes(codes, keys, meta["calibrate"],  # every person scored has a reference
                            require=table.keys()[labelled & scored_mask(table, splits)])
    jobs, test_rows, missing = _make_jobs(table, splits, au_list, meta["region"], has_code, labelled)
    if not any(r.size for r in test_rows):
        raise MissingRunError(f"no test frame of {dataset} has codes of {meta['model']} "
                              f"(the feature file's frames do not match the data set's)")
    results, scheduler = _train(spec, jobs, meta, workspace=workspace, dataset=dataset, run=run,
                                table=table, splits=splits, codes=codes, labels=labels, pos=pos,
                                n_jobs=n_jobs, task=task,
                                progress=progress, budget=budget, scheduler=scheduler)
    by = {(r["fold"], r["au"]): r for r in results}
    scale = {"codes_in_memory": not any(isinstance(c, H5Codes) for c in codes.values()),
             "memory_budget_gb": round(budget / (1 << 30), 2) if budget else None,
             "solver": sorted({r.get("solver", spec.name) for r in results}),
             "backend": f"dask {scheduler}" if scheduler else "joblib (local processes)"}
    n_train = [int((s.mask(table, "train") & has_code & labelled).sum()) for s in splits]
    meta = {**meta, "n_train": int(round(np.mean(n_train))), "n_test": int(sum(r.size for r in test_rows)),
            "frames_without_codes": int(sum(missing.values())),
            "seconds": round(time.time() - t0, 1)}
    scale["peak_rss_mb"] = {"main": peak_rss_mb(),
                            "worker_max": max((r.get("rss_mb", 0.0) for r in results), default=0.0)}

    def fill(tmp, rows_out, thresholds):
        return _fill_models(tmp, workspace, dataset, run, au_list, splits, by, meta, attrs, missing,
                            n_train, test_rows, scale)

    out = write_outputs(workspace, dataset, run, table=table, au_list=au_list, splits=splits,
                        test_rows=test_rows, by=by, labels=labels, meta=meta, fill_models=fill,
                        params=tuple(_search_space(spec)), attrs=PREDICTION_ATTRS, t0=t0, task=task)
    out["notes"] += [f"{n} labelled {part} frames have no codes in the feature file and were left out"
                     for part, n in missing.items() if n]
    out["missing_codes"] = missing
    shutil.rmtree(workspace.models_dir(dataset, run).with_name(f".{run}.train"),
                  ignore_errors=True)  # LSTM checkpoints: done
    return out


#: the summary columns a classifier run's predictions file records
PREDICTION_ATTRS = ("model", "region", "clf", "weights", "protocol", "dataset")


def _search_space(kind):
    return kind.estimator.search_space if kind.estimator is not None else {}


def _fit_record(r):
    """One (fold, AU)'s entry of settings.json: counts, threshold, chosen parameters, notes."""
    entry = {k: r[k] for k in ("n_train", "n_train_pos", "n_val", "n_val_pos")}
    fit = r["fit"]
    if fit is None:
        return {**entry, "error": r["error"]}
    entry.update({"threshold": fit.threshold, "val_f1": fit.val_f1, "notes": fit.notes})
    params = getattr(fit, "params", {})
    for param, value in params.items():
        entry[param] = value
        if len(params) == 1:
            entry[f"val_f1_by_{param}"] = {f"{c:g}": v for c, v in fit.grid.items()}
    return entry


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def model_preprocessing(meta, attrs, au_list):
    """The manifest's ``preprocessing`` of a run on a feature file's codes (``attrs``: its attributes)."""
    prep = attrs.get("preprocessing")
    prep = json.loads(prep) if isinstance(prep, str) else dict(prep or {})
    region = meta["region"]
    return {"model": str(attrs.get("model") or meta["model"]), "layer": _plain(attrs.get("layer")),
            "input_size": _plain(attrs.get("input_size")),
            "regions": {a: AU_REGION[a] if region == "auto" else region for a in au_list},
            **{k: _plain(prep[k]) for k in ("mean", "std", "pixel_scale") if k in prep},
            "alignment": prep.get("aligned_settings") or {},
            "calibrate": meta.get("calibrate") or "none"}  # per person, as predict must too


def _fill_models(tmp, workspace, dataset, run, au_list, splits, by, meta, attrs, missing, n_train,
                 test_rows, scale):
    """Write the run's model through its kind's ``save`` and settings.json into ``tmp``."""
    import sklearn

    kind = get_kind(meta["clf"])
    saved = kind.save(tmp, {"splits": splits, "aus": au_list, "fits": by}, run=run, aus=au_list,
                      weights=str(attrs.get("weights", "")) or meta["weights"], dataset=dataset,
                      preprocessing=model_preprocessing(meta, attrs, au_list),
                      **({"task": meta["task"]} if meta.get("task", "occurrence") != "occurrence"
                         else {})) or {}
    folds = [fold_record(split, {au: saved.get((fi, au)) or _fit_record(by[(fi, au)])
                                 for au in au_list},
                         n_train_frames=n_train[fi], n_test_frames=int(test_rows[fi].size))
             for fi, split in enumerate(splits)]
    space = _search_space(kind)
    settings = {
        "run": run, **{k: v for k, v in meta.items() if k != "seconds"}, "aus": au_list,
        "c_grid": list(space["C"]) if "C" in space else None,
        "search_space": {k: list(v) for k, v in space.items()},
        "default_threshold": 0.0, "frames_without_codes_by_part": missing,
        "features": {"path": str(workspace.features_path(dataset, meta["model"])),
                     "attrs": {k: _plain(v) for k, v in attrs.items()}},
        "folds": folds, "versions": versions(**{"scikit-learn": sklearn.__version__}), **(scale or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(tmp / "settings.json", json.dumps(settings, indent=2, default=str) + "\n")
    return folds


def format_result(result):
    """Return the one-screen text of a run: per-AU table, mean, notes and the CSV path.

    An intensity run (``result["task"]``) shows ICC, r, MAE and the F1 of rounded intensity >= 2.
    """
    meta, mean = result["meta"], result["mean"]
    intensity = result.get("task", meta.get("task")) == "intensity"
    cols = (("icc", "pearson", "mae", "f1", "support") if intensity else
            ("f1", "accuracy", "precision", "recall", "auc", "support", "threshold"))
    cal = meta.get("calibrate", "none")
    lines = [f"{result['run']} on {result['dataset']} ({'intensity, ' if intensity else ''}"
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
    head = (f"mean ICC {mean['icc']:.3f}, r {mean['pearson']:.3f}, MAE {mean['mae']:.3f}, F1 of "
            f"rounded intensity >= {meta.get('label_threshold') or 2} " if intensity else "mean F1 ")
    lines.append(f"{head}{mean['f1']:.3f} over {defined} AUs"
                 f"{f' ({undefined} nan, left out)' if undefined else ''} in "
                 f"{result['seconds']:.0f} s -> {result['csv']}")
    return "\n".join(lines)