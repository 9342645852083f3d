"""An intensity run's saved model: per fold and AU a weight vector and a bias, plus how to calibrate.

Written in featbench's one model format (a JSON manifest beside safetensors tensors): group
``<fold>`` holds ``<AU>.weight`` (dims,) float64 and ``<AU>.bias`` (1,) float64 per trained AU;
the manifest's ``task`` is ``intensity`` and its ``settings`` hold the calibration
(``calibrate``: none / median / neutral, per person = one face track), the regions each AU
reads, the clip range and the label threshold of the ``_c`` decisions.
:func:`load_intensity_model` gives a :class:`IntensityModel` whose :meth:`~IntensityModel.predict`
reproduces the run's test predictions from the same codes.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench.core.aus import AU_REGION
from featbench.core.calibrate import calibrate, check_calibration
from featbench.core.errors import MissingRunError, StoreError
from featbench.core.metrics import INTENSITY_MAX, INTENSITY_MIN, PRESENT_AT, intensity_decisions
from featbench.core.modelfile import create_manifest, open_model, write_model

from classify.intensity import LinearIntensity


def _regions(au_list, region):
    return {au: (AU_REGION[au] if region == "auto" else region) for au in au_list}


def save_intensity_model(folder, *, run, spec, au_list, splits, fold_fits, meta):
    """Write the fitted AUs of every fold into ``folder`` (manifest + one safetensors file per fold)."""
    folds, tensors = [], {}
    for fi, split in enumerate(splits):
        arrays = {}
        for ai, au in enumerate(au_list):
            fit = fold_fits[fi][ai]
            if isinstance(fit, str):
                continue
            arrays[f"{au}.weight"] = np.asarray(fit.model.weight, dtype=np.float64)
            arrays[f"{au}.bias"] = np.array([fit.model.bias], dtype=np.float64)
        tensors[split.name] = arrays
        folds.append({"name": split.name,
                      "thresholds": {au: float(meta["label_threshold"]) - 0.5
                                     for au in au_list if f"{au}.weight" in arrays}})
    manifest = create_manifest(
        run=run, kind=spec.name, task="intensity", aus=au_list, folds=folds,
        weights=meta.get("weights", ""),
        preprocessing={"model": meta["model"], "regions": _regions(au_list, meta["region"])},
        training_data={"dataset": meta["dataset"],
                       "synthetic": str(meta["dataset"]).startswith("synth")},
        settings={"calibrate": meta["calibrate"], "person": "face track (subject/video)",
                  "clip": [INTENSITY_MIN, INTENSITY_MAX], "label_threshold": meta["label_threshold"],
                  "param": spec.param})
    return write_model(folder, manifest, tensors)


@dataclass
class IntensityModel:
    """A loaded intensity run: ``models[fold][au]`` are :class:`LinearIntensity`."""

    run: str
    aus: list
    regions: dict
    calibrate: str
    label_threshold: int
    models: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def predict(self, codes, persons=None, *, fold=None):
        """Return (n, k) clipped intensities (nan for an AU without a model) of ``codes``.

        Parameters
        ----------
        codes : dict of region -> array of shape (n, dims)
            Raw codes of the network the run read, before calibration.
        persons : array of shape (n,), optional
            The person (face track) of each row: needed when the run calibrates.
        fold : str, optional
            Default: the first fold (the paper protocol has one).
        """
        fold = fold or next(iter(self.models))
        if self.calibrate != "none":
            if persons is None:
                raise StoreError(f"run {self.run} calibrates per person ({self.calibrate}): "
                                 "the codes need their face tracks")
            codes = {r: calibrate(c, persons, self.calibrate) for r, c in codes.items()}
        n = len(next(iter(codes.values())))
        out = np.full((n, len(self.aus)), np.nan, dtype=np.float32)
        for ai, au in enumerate(self.aus):
            m = self.models[fold].get(au)
            if m is not None:
                out[:, ai] = m.predict(codes[self.regions[au]])
        return out

    def decide(self, intensities):
        """Return the ``_c`` decisions of intensities: rounded >= the label threshold."""
        return intensity_decisions(intensities, self.label_threshold)


def load_intensity_model(folder):
    """Load an intensity run's folder or export (:func:`save_intensity_model`).

    Raises
    ------
    MissingRunError
        Nothing at ``folder``.
    StoreError
        Not an intensity run, not a featbench model (a pickle is refused unopened), unreadable.
    """
    model = open_model(_checked(folder))
    manifest = model.manifest
    if manifest.get("task") != "intensity":
        raise StoreError(f"{folder}: run {manifest.get('run')} is a {manifest.get('task')} run, "
                         "not an intensity run")
    settings = manifest["settings"]
    models = {}
    for fold in manifest["folds"]:
        arrays = model.tensors(fold["name"])
        models[fold["name"]] = {au: LinearIntensity(arrays[f"{au}.weight"], float(arrays[f"{au}.bias"][0]))
                                for au in fold["thresholds"]}
    return IntensityModel(manifest["run"], list(manifest["aus"]),
                          dict(manifest["preprocessing"]["regions"]),
                          check_calibration(settings["calibrate"]),
                          int(settings.get("label_threshold", PRESENT_AT)), models, manifest)


def _checked(folder):
    """``folder`` as a Path; MissingRunError naming the command when nothing is there."""
    folder = Path(folder)
    if not folder.exists():
        raise MissingRunError(f"{folder}: no saved intensity model (train it with featbench "
                              "classify --task intensity)")
    return folder
