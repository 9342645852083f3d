"""One intensity run: stored codes + frame table -> ICC / r / MAE per AU, predictions, models.

:func:`intensity_run` is what ``featbench classify --task intensity`` calls. For every fold of
the protocol (``featbench.core.splits``) and every AU it

1. optionally calibrates the codes per person (``featbench.core.calibrate``: each subject's
   video is one person, as a face track is at predict time; from the codes alone, never a label);
2. takes the training subjects' frames with codes and a known intensity (every frame by
   default: a regression learns the scale from the frames as they come; ``balance`` keeps all
   frames with intensity >= the label threshold and as many random others, as occurrence runs);
3. fits the AU's regressor (:mod:`classify.intensity`), choosing its hyper-parameter by ICC on
   all of the validation subjects' frames (unbalanced, as test);
4. predicts every test frame (clipped to 0-5) and scores it: ICC(3,1), Pearson r, MAE, and F1
   of rounded intensity >= 2 against the occurrence labels (``featbench.core.metrics``).

Outputs, named and written as an occurrence run's (``classify.run``) with the task's columns::

    results/<ds>/<run>.csv                au,icc,pearson,mae,f1,support,frames, then accuracy,
                                          precision, recall, the chosen parameter, n_train, note
    results/<ds>/summary.csv              the run's row: task = intensity; mean_f1 / mean_accuracy
                                          of rounded intensity >= 2; mean_icc, mean_pearson,
                                          mean_mae and icc_AUnn per AU
    results/<ds>/predictions/<run>.h5     scores = predicted intensity, decisions = rounded >= 2,
                                          labels = occurrence, /intensities = true intensities
    results/<ds>/models/<run>/            the model (featbench.core.modelfile) and settings.json

Multi-fold protocols average each metric over folds, as occurrence runs do.
"""

import json
import os
import shutil
import sys
import time

import numpy as np

from featbench.core.aus import AU_REGION
from featbench.core.calibrate import CALIBRATIONS, calibrate_codes, check_calibration
from featbench.core.errors import FeatbenchError, MissingRunError, StoreError, UsageError
from featbench.core.identity import RunKey
from featbench.core.metrics import PRESENT_AT, intensity_decisions, intensity_metrics, nanmean
from featbench.core.results import run_table, write_predictions, write_run
from featbench.core.splits import make_splits
from featbench.core.workspace import Workspace, atomic_write_text, run_lock, temp_sibling

from classify.estimators import balance_indices
from classify.intensity import get_regressor, fit_intensity
from classify.run import (REGION_CHOICES, check_features, join_codes, load_codes,
                          record_run_failure, resolve_aus, run_tag)
from extract.store import store_info

TASKS = ("occurrence", "intensity")


def check_task(task):
    """Return ``task`` (None -> occurrence); UsageError listing the tasks if unknown."""
    task = task or "occurrence"
    if task not in TASKS:
        from featbench.core.errors import did_you_mean

        raise UsageError(did_you_mean(str(task), TASKS, what="task"))
    return task


def _fold_rows(table, split, has_code, ints):
    """Return the table rows of a fold's parts that have codes and a known intensity for some AU."""
    known = (ints >= 0).any(axis=1)
    return {part: np.flatnonzero(split.mask(table, part) & has_code & known)
            for part in ("train", "validation", "test")}


def _train_groups(rows, ints, au_list, region, *, balance, seed, fi, threshold):
    """Group the AUs that share their training rows (one fit serves them); report the untrainable.

    Returns ``({(region, rows bytes): (rows, [AU index])}, {AU index: error})``.
    """
    groups, errors = {}, {}
    for ai, au in enumerate(au_list):
        r = rows["train"][ints[rows["train"], ai] >= 0]
        if balance:
            r = r[balance_indices(ints[r, ai] >= threshold,
                                  np.random.default_rng([seed, fi, int(au[2:])]))]
        y = ints[r, ai]
        if not r.size or np.all(y == y[0]):
            errors[ai] = (f"every training frame has intensity {int(y[0])}: no regressor"
                          if r.size else "no training frame with a known intensity: no regressor")
            continue
        reg = AU_REGION[au] if region == "auto" else region
        groups.setdefault((reg, r.tobytes()), (reg, r, []))[2].append(ai)
    return groups, errors


def _fit_fold(spec, fi, rows, *, codes, pos, ints, au_list, region, balance, seed, threshold):
    """Fit every AU of one fold; return ``({AU index: IntensityFit or error str}, test preds (n, k))``."""
    groups, fits = _train_groups(rows, ints, au_list, region, balance=balance, seed=seed, fi=fi,
                                 threshold=threshold)
    test = rows["test"]
    preds = np.full((test.size, len(au_list)), np.nan, dtype=np.float32)
    val = rows["validation"]
    for reg, r, members in groups.values():
        X = codes[reg]
        out = fit_intensity(spec, X[pos[r]], ints[np.ix_(r, members)], X[pos[val]],
                            ints[np.ix_(val, members)], seed=seed)
        for ai, fit in zip(members, out):
            fit.n_train = int(r.size)
            fits[ai] = fit
            if test.size:
                preds[:, ai] = fit.model.predict(X[pos[test]])
    return fits, preds


def _au_rows(spec, au_list, fold_fits, fold_preds, fold_rows, ints, occ, splits, threshold):
    """Return the run's per-AU rows (metrics averaged over folds) and the notes."""
    rows, notes = [], []
    for ai, au in enumerate(au_list):
        per_fold, au_notes, params, n_train = [], [], [], []
        for fi, split in enumerate(splits):
            te, fit = fold_rows[fi]["test"], fold_fits[fi][ai]
            tag = f" ({split.name})" if len(splits) > 1 else ""
            per_fold.append(intensity_metrics(ints[te, ai], fold_preds[fi][:, ai], occ[te, ai],
                                              threshold=threshold))
            if isinstance(fit, str):
                au_notes.append(fit + tag)
                continue
            au_notes += [n + tag for n in fit.notes]
            params.append(fit.params[spec.param])
            n_train.append(fit.n_train)
        row = {"au": au}
        for key in ("icc", "pearson", "mae", "f1", "accuracy", "precision", "recall", "auc"):
            row[key] = nanmean(m[key] for m in per_fold)
        row["support"] = int(sum(m["support"] for m in per_fold))
        row["frames"] = int(sum(m["frames"] for m in per_fold))
        row[spec.param] = float(np.median(params)) if params else float("nan")
        row["n_train"] = int(round(np.mean(n_train))) if n_train else 0
        au_notes = list(dict.fromkeys(au_notes))
        row["note"] = "; ".join(au_notes)
        rows.append(row)
        notes += [f"{au}: {n}" for n in au_notes]
    return rows, notes


def intensity_run(workspace, dataset, *, model, clf="ridge", region="full", protocol="paper",
                  balance=False, seed=0, table=None, aus=None, calibrate="none", progress=True):
    """Train and score one per-AU intensity run; write its tables, predictions and models.

    Parameters
    ----------
    workspace : Workspace or path
    dataset : str
    model : str
        The network whose codes are regressed (``data/features/<dataset>/<model>.h5``).
    clf : {"ridge", "svr"}
    region : {"full", "upper", "middle", "lower", "auto"}
    protocol : str
        ``paper``, ``literature``, ``kfold:K`` or ``own``.
    balance : bool
        Train on all frames with intensity >= the label threshold plus as many random others
        (default: every frame).
    seed : int
    table : FrameTable, optional
        Default: ``featbench.core.datasets.load_dataset(dataset)``.
    aus : list of str or "AU01,AU02", optional
    calibrate : {"none", "median", "neutral"}
        Person-specific calibration of the codes (:mod:`featbench.core.calibrate`).
    progress : bool

    Returns
    -------
    dict
        ``run``, ``dataset``, ``task``, ``rows``, ``mean``, ``notes``, ``meta``, ``csv``,
        ``predictions``, ``models_dir``, ``seconds``.

    Raises
    ------
    UsageError
        A data set without intensities, an unknown regressor, region or calibration.
    MissingRunError, StoreError
        No codes; a failure once the codes are found is also the run's row in summary.csv.
    """
    t0 = time.time()
    spec, method = get_regressor(clf), check_calibration(calibrate)
    if region not in REGION_CHOICES:
        raise UsageError(f"unknown region {region!r} (choices: {', '.join(REGION_CHOICES)})")
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if table is None:
        from featbench.core.datasets import load_dataset

        table = load_dataset(dataset, workspace=workspace, progress=progress)
    table.require_intensity()
    au_list = resolve_aus(table, protocol, aus)
    run = str(RunKey(model, region, clf, run_tag(
        protocol=protocol, seed=seed, aus=au_list, default_aus=resolve_aus(table, protocol),
        extra="bal" if balance else None, label_threshold=table.label_threshold,
        calibrate=method) or ()))
    regions = sorted({AU_REGION[a] for a in au_list}) if region == "auto" else [region]
    path = check_features(workspace, dataset, model, regions, table)
    meta = {"model": model, "region": region, "clf": clf, "task": "intensity", "weights": "",
            "protocol": protocol, "dataset": dataset, "balance": bool(balance), "seed": seed,
            "calibrate": method, "label_threshold": table.label_threshold or PRESENT_AT}
    with run_lock(workspace.models_dir(dataset, run)):  # one process makes a run at a time
        try:
            meta["weights"] = str(store_info(path)["attrs"].get("weights", ""))
            keys, codes, attrs = load_codes(workspace, dataset, model, regions)
            return _run(workspace, dataset, run, spec, table, au_list, keys, codes, attrs, meta,
                        progress=progress, t0=t0)
        except FeatbenchError as exc:
            record_run_failure(workspace, dataset, run, exc, meta)
            raise


def _run(workspace, dataset, run, spec, table, au_list, keys, codes, attrs, meta, *, progress, t0):
    """Fit every fold, score, and write the run's outputs (see the module docstring)."""
    from tqdm import tqdm

    codes = calibrate_codes(codes, keys, meta["calibrate"])
    pos = join_codes(table, keys)
    ints = table.intensities(au_list)
    occ = table.labels(au_list)
    splits = make_splits(table, meta["protocol"], seed=meta["seed"])
    fold_rows = [_fold_rows(table, s, pos >= 0, ints) for s in splits]
    if not any(r["test"].size for r in fold_rows):
        raise MissingRunError(f"no test frame of {dataset} has codes of {meta['model']} "
                              f"(the feature file's frames do not match the data set's)")
    fold_fits, fold_preds = [], []
    for fi in tqdm(range(len(splits)), desc=f"{spec.name} ({meta['task']})", unit="fold",
                   file=sys.stderr, disable=not progress or len(splits) == 1, leave=False):
        fits, preds = _fit_fold(spec, fi, fold_rows[fi], codes=codes, pos=pos, ints=ints,
                                au_list=au_list, region=meta["region"], balance=meta["balance"],
                                seed=meta["seed"], threshold=meta["label_threshold"])
        fold_fits.append(fits)
        fold_preds.append(preds)
    rows, notes = _au_rows(spec, au_list, fold_fits, fold_preds, fold_rows, ints, occ, splits,
                           meta["label_threshold"])
    meta = {**meta, "n_train": int(round(np.mean([(s.mask(table, "train") & (pos >= 0)).sum()
                                                  for s in splits]))),
            "n_test": int(sum(r["test"].size for r in fold_rows))}
    try:
        pred_path = _write_predictions(workspace, dataset, run, table, au_list, fold_rows,
                                       fold_preds, ints, occ, splits, meta)
        models_dir = _write_models(workspace, dataset, run, spec, au_list, splits, fold_fits,
                                   fold_rows, meta, attrs)
        meta["seconds"] = round(time.time() - t0, 1)
        csv = write_run(workspace, dataset, run, rows, meta=meta)
    except OSError as exc:
        from featbench.core.errors import describe_os_error

        raise StoreError(f"{getattr(exc, 'filename', None) or workspace.results_dir(dataset)}: "
                         f"{describe_os_error(exc)} while writing the results of {run}") from None
    return {"run": run, "dataset": dataset, "task": "intensity", "rows": rows,
            "mean": run_table(rows, task="intensity")[0][-1], "notes": notes, "meta": meta,
            "csv": csv, "predictions": pred_path, "models_dir": models_dir,
            "seconds": meta["seconds"]}


def _write_predictions(workspace, dataset, run, table, au_list, fold_rows, fold_preds, ints, occ,
                       splits, meta):
    """Write the test frames' predicted intensities and decisions (the predictions format)."""
    rows = np.concatenate([r["test"] for r in fold_rows])
    if np.unique(rows).size != rows.size:
        raise UsageError(f"protocol {meta['protocol']} tests some frames in two folds")
    scores = np.concatenate(fold_preds).astype(np.float32)
    fold = np.concatenate([np.full(r["test"].size, fi, dtype=np.int8) for fi, r in enumerate(fold_rows)])
    thr = float(meta["label_threshold"]) - 0.5  # decisions: rounded intensity >= threshold
    return write_predictions(
        workspace.predictions_path(dataset, run), frames=table.keys()[rows], labels=occ[rows],
        scores=scores, decisions=intensity_decisions(scores, meta["label_threshold"]), fold=fold,
        aus=au_list, thresholds=np.full(len(au_list), thr),
        fold_thresholds=np.full((len(splits), len(au_list)), thr), intensities=ints[rows],
        run=run, folds=[s.name for s in splits], task="intensity", calibrate=meta["calibrate"],
        label_threshold=meta["label_threshold"],
        **{key: meta[key] for key in ("model", "region", "clf", "weights", "protocol", "dataset")})


def _write_models(workspace, dataset, run, spec, au_list, splits, fold_fits, fold_rows, meta, attrs):
    """Replace the run's model folder: the fitted arrays per fold and AU, and settings.json."""
    from classify.intensity_model import save_intensity_model

    final = workspace.models_dir(dataset, run)
    tmp = temp_sibling(final)  # unique; a dead writer's leftovers are removed
    tmp.mkdir(parents=True)
    try:
        save_intensity_model(tmp, run=run, spec=spec, au_list=au_list, splits=splits,
                             fold_fits=fold_fits, meta=meta)
        folds = [{"name": s.name, "train": list(s.train), "validation": list(s.validation),
                  "test": list(s.test), "n_test_frames": int(fold_rows[fi]["test"].size),
                  "aus": {au: ({"error": f} if isinstance(f, str) else
                               {**f.params, "val_icc": f.val_icc, "n_train": f.n_train,
                                f"val_icc_by_{spec.param}": {f"{k:g}": v for k, v in f.grid.items()},
                                "notes": f.notes})
                          for au, f in ((au, fold_fits[fi][ai]) for ai, au in enumerate(au_list))}}
                 for fi, s in enumerate(splits)]
        settings = {"run": run, **meta, "aus": au_list, "grid": {spec.param: list(spec.grid)},
                    "features": {"path": str(workspace.features_path(dataset, meta["model"])),
                                 "attrs": {k: (v.tolist() if hasattr(v, "tolist") else v)
                                           for k, v in attrs.items()}},
                    "folds": folds, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(tmp / "settings.json", json.dumps(settings, indent=2, default=str) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_intensity_result(result):
    """Return the one-screen text of an intensity run: per-AU table, mean, notes, CSV path."""
    cols = ("icc", "pearson", "mae", "f1", "support")
    lines = [f"{result['run']} on {result['dataset']} (intensity, {result['meta']['protocol']} "
             f"protocol, calibration {result['meta']['calibrate']}, {result['meta']['n_train']} "
             f"training / {result['meta']['n_test']} test frames)",
             f"{'au':<6}" + "".join(f"{c:>10}" for c in cols)]

    def cell(v):
        if isinstance(v, (int, np.integer)):
            return f"{v:>10d}"
        return f"{'nan':>10}" if v is None or not np.isfinite(v) else f"{v:>10.3f}"

    for r in result["rows"] + [result["mean"]]:
        lines.append(f"{r['au']:<6}" + "".join(cell(r.get(c, float("nan"))) for c in cols))
    lines += [f"note: {n}" for n in result["notes"]]
    m = result["mean"]
    lines.append(f"mean ICC {m['icc']:.3f}, r {m['pearson']:.3f}, MAE {m['mae']:.3f}, "
                 f"F1 (>= {result['meta']['label_threshold']}) {m['f1']:.3f} in "
                 f"{result['seconds']:.0f} s -> {result['csv']}")
    return "\n".join(lines)


__all__ = ["intensity_run", "format_intensity_result", "check_task", "TASKS", "CALIBRATIONS"]
