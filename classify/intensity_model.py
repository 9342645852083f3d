"""An intensity run's saved model: per fold and AU a weight vector and a bias, plus how to calibrate.

The ``ridge`` and ``svr`` run kinds (:mod:`classify.kinds`). Written in featbench's one model
format (a JSON manifest beside safetensors tensors): one tensor group per AU (``AU01``;
``AU01-<fold>`` per fold) holding ``weight`` (dims,) float64 and ``bias`` (1,) float64; the
manifest's ``task`` is ``intensity``, its ``preprocessing`` names the network, the region each
AU reads and the calibration (``calibrate``: none / median / neutral, per person = one face
track), its thresholds are the ``_c`` decisions' (``score > 1.5``: rounded intensity >= 2).
:func:`load_intensity` gives the :class:`~classify.infer.RunModel` that ``featbench predict``
applies; it reproduces the run's test predictions from the same codes.
"""

import numpy as np

from featbench.core.calibrate import check_calibration
from featbench.core.errors import StoreError
from featbench.core.metrics import INTENSITY_MAX, INTENSITY_MIN, decision_threshold

from classify.intensity import LinearIntensity
from classify.kinds import RunKind, unit_group, write_run_model
from classify.infer import RunModel
from classify.modelcheck import INTENSITY_SPEC


def save_intensity_model(folder, trained, *, run, aus, weights, preprocessing, dataset,
                         task="intensity"):
    """The ``save`` of ``ridge`` / ``svr``: per fold (and AU) a weight vector and a bias.

    ``trained``: ``{"kind", "splits", "fits": [{AU index: IntensityFit or error}], "param",
    "label_threshold"}`` (what :func:`classify.intensity_run.intensity_run` fits);
    ``preprocessing`` holds the calibration (``calibrate``) with the codes' network and regions.
    """
    splits, fits = trained["splits"], trained["fits"]
    thr = decision_threshold(trained["label_threshold"])
    folds, units, tensors = [], [], {}
    for fi, split in enumerate(splits):
        folds.append({"name": split.name, "thresholds": {}})
        units.append({})
        for ai, au in enumerate(aus):
            fit = fits[fi][ai]
            if isinstance(fit, str):
                continue  # no regressor (its error is in settings.json)
            group = unit_group(au, split.name, len(splits))
            tensors[group] = {"weight": np.asarray(fit.model.weight, dtype=np.float64),
                              "bias": np.array([fit.model.bias], dtype=np.float64)}
            folds[fi]["thresholds"][au] = thr
            units[fi][au] = group
    settings = {"units": units, "param": trained["param"], "clip": [INTENSITY_MIN, INTENSITY_MAX],
                "label_threshold": trained["label_threshold"],
                "calibrate": check_calibration(preprocessing.get("calibrate")),
                "person": "one face track (a subject's video in training)"}
    return write_run_model(folder, trained["kind"], folds, settings, tensors, run=run, aus=aus,
                           weights=weights, preprocessing=preprocessing, dataset=dataset, task=task)


def load_intensity(model_file):
    """The ``load`` of ``ridge`` / ``svr``: a :class:`~classify.infer.RunModel` whose AUs are
    :class:`~classify.intensity.LinearIntensity` (clipped intensities; decisions ``> 1.5``)."""
    m = model_file.manifest
    if m.get("task") != "intensity":
        raise StoreError(f"{model_file.path}: run {m.get('run')} of kind {m.get('kind')} is not "
                         "an intensity run")
    folds = []
    for fold, units in zip(m["folds"], m["settings"]["units"]):
        folds.append({au: (LinearIntensity(np.asarray(model_file.tensors(g)["weight"]),
                                           float(model_file.tensors(g)["bias"][0])),
                           float(fold["thresholds"][au])) for au, g in units.items()})
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {m['run']} has no fitted regressor for any AU")
    return RunModel.from_model_file(model_file, folds)


def _kind(name, help):
    return RunKind(name=name, load=load_intensity, save=save_intensity_model,
                   train="classify.intensity_run:intensity_run",
                   command=f"featbench classify --task intensity --clf {name}", help=help,
                   spec=INTENSITY_SPEC)


#: the ``ridge`` kind: per-AU ridge regression of intensities on codes
RIDGE = _kind("ridge", "ridge regression of AU intensity, alpha chosen by validation ICC")
#: the ``svr`` kind: per-AU linear SVR of intensities on codes
SVR = _kind("svr", "linear SVR of AU intensity, C chosen by validation ICC")
