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
import sys
import time

import numpy as np

from featbench.core.aus import AU_REGION
from featbench.core.calibrate import CALIBRATIONS, calibrate_codes, check_calibration
from featbench.core.errors import FeatbenchError, MissingRunError, UsageError
from featbench.core.identity import RunKey
from featbench.core.metrics import PRESENT_AT, decision_threshold
from featbench.core.splits import make_splits, scored_mask
from featbench.core.workspace import Workspace, atomic_write_text, run_lock

from classify.estimators import balance_indices
from classify.intensity import get_regressor, fit_intensity
from classify.learn.intensity import TASKS, check_task
from classify.intensity_model import save_intensity_model
from classify.learn.intensity import Intensity
from classify.learn.writer import fold_record, record_run_failure, versions, write_outputs
from classify.run import (PREDICTION_ATTRS, REGION_CHOICES, check_features, join_codes,
                          load_codes, model_preprocessing, resolve_aus, run_tag)
from extract.store import store_info

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
            fit.n_train, fit.threshold = int(r.size), decision_threshold(threshold)
            fits[ai] = fit
            if test.size:
                preds[:, ai] = fit.model.predict(X[pos[test]])
    return fits, preds


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
    """Fit every fold, score, and write the run's outputs through the one run writer."""
    from tqdm import tqdm

    task = Intensity(meta["label_threshold"])
    ints = task.targets(table, au_list)
    splits = make_splits(table, meta["protocol"], seed=meta["seed"])
    codes = calibrate_codes(codes, keys, meta["calibrate"],  # every person scored has a reference
                            require=table.keys()[(ints >= 0).any(axis=1) & scored_mask(table, splits)])
    pos = join_codes(table, keys)
    fold_rows = [_fold_rows(table, s, pos >= 0, ints) for s in splits]
    if not any(r["test"].size for r in fold_rows):
        raise MissingRunError(f"no test frame of {dataset} has codes of {meta['model']} "
                              f"(the feature file's frames do not match the data set's)")
    fold_fits, by = [], {}
    for fi in tqdm(range(len(splits)), desc=f"{spec.name} ({meta['task']})", unit="fold",
                   file=sys.stderr, disable=not progress or len(splits) == 1, leave=False):
        fits, preds = _fit_fold(spec, fi, fold_rows[fi], codes=codes, pos=pos, ints=ints,
                                au_list=au_list, region=meta["region"], balance=meta["balance"],
                                seed=meta["seed"], threshold=meta["label_threshold"])
        fold_fits.append(fits)
        for ai, au in enumerate(au_list):
            fit = fits[ai]
            by[(fi, au)] = {"fit": None if isinstance(fit, str) else fit, "scores": preds[:, ai],
                            "n_train": 0 if isinstance(fit, str) else fit.n_train,
                            **({"error": fit} if isinstance(fit, str) else {})}
    meta.update(n_train=int(round(np.mean([(s.mask(table, "train") & (pos >= 0)).sum()
                                            for s in splits]))),
                n_test=int(sum(r["test"].size for r in fold_rows)))
    trained = {"kind": spec.name, "splits": splits, "fits": fold_fits, "param": spec.param,
               "label_threshold": meta["label_threshold"]}

    def fill(tmp, rows_out, thresholds):
        return _fill_models(tmp, workspace, dataset, run, spec, au_list, trained, fold_rows,
                            meta, attrs)

    return write_outputs(workspace, dataset, run, table=table, au_list=au_list, splits=splits,
                         test_rows=[r["test"] for r in fold_rows], by=by, labels=ints, meta=meta,
                         fill_models=fill, task=task, params=(spec.param,), t0=t0,
                         attrs=PREDICTION_ATTRS + ("calibrate", "label_threshold"))


def _fill_models(tmp, workspace, dataset, run, spec, au_list, trained, fold_rows, meta, attrs):
    """The run's folder: the model (:mod:`classify.intensity_model`) and settings.json."""
    save_intensity_model(tmp, trained, run=run, aus=au_list, dataset=dataset,
                         weights=str(attrs.get("weights", "")) or meta["weights"],
                         preprocessing=model_preprocessing(meta, attrs, au_list))
    folds = [fold_record(s, {au: ({"error": f} if isinstance(f, str) else
                                  {**f.params, "val_icc": f.val_icc, "n_train": f.n_train,
                                   f"val_icc_by_{spec.param}": {f"{k:g}": v for k, v in f.grid.items()},
                                   "notes": f.notes})
                             for au, f in zip(au_list, (trained["fits"][fi][ai]
                                                        for ai in range(len(au_list))))},
                         n_test_frames=int(fold_rows[fi]["test"].size))
             for fi, s in enumerate(trained["splits"])]
    settings = {"run": run, **{k: v for k, v in meta.items() if k != "seconds"}, "aus": au_list,
                "grid": {spec.param: list(spec.grid)},
                "features": {"path": str(workspace.features_path(dataset, meta["model"])),
                             "attrs": {k: (v.tolist() if hasattr(v, "tolist") else v)
                                       for k, v in attrs.items()}},
                "folds": folds, "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(tmp / "settings.json", json.dumps(settings, indent=2, default=str) + "\n")
    return folds


__all__ = ["intensity_run", "check_task", "TASKS", "CALIBRATIONS"]
