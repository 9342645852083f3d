"""Runs whose trained network *is* the classifier: fine-tuned CNNs (``ft``) and transfer runs.

A ``featbench classify`` run reads codes of a frozen network and applies per-AU classifiers to
them; a ``featbench finetune`` or ``featbench transfer`` run maps aligned faces straight to
per-AU scores. Both fit :class:`featbench.apply.runmodel.RunModel`: the trained network stands where
the encoder stood (:class:`NetworkScores`: crops -> its scores) and each AU's "classifier" is
one column of those scores (:class:`NetworkOutput`), read through the classifier's
``codes_key`` = ``(network, weights, region)``.

What is reproduced, from what each run did to its own test faces, all read from the run's
``manifest.json`` and its safetensors files:

``ft`` (:mod:`classify.finetune`)
    each unit (``model``, ``<AU>`` or ``<region>``; ``<unit>-<fold>`` per fold) rebuilt by
    :func:`classify.finetune.unit_network`; its faces are what the unit's
    :class:`~featbench.core.facesource.FaceInput` (in the manifest) says, as the run's face
    source gave them; the score is the method's (``logit(present) - logit(absent)`` per-au, the
    AU's logit multilabel), the decision ``score > threshold`` with the unit's threshold.
``transfer`` (:mod:`classify.transfer`)
    stage 2's network rebuilt by :func:`classify.transfer.load_model`; full faces as the cache
    stores them (the network's first layer resizes them); the score is the AU's probability
    (sigmoid of the logit, as the run's predictions file stores it), the decision
    ``probability > threshold`` (the thresholds tuned on validation, as probabilities).

Every network scores through the one inference path of training
(:func:`classify.learn.method.score_batches`). The trained weights travel inside the
:class:`NetworkScores` (the safetensors file's bytes; their sha256 is the weights identity
``finetuned:<run>[/<unit>] sha256:...``), so ``featbench export`` writes them into the model
file and ``predict --model`` needs nothing else.
"""

import hashlib

import numpy as np

from featbench.core import modelfile
from featbench.core.align import read_cache_info
from featbench.core.errors import MissingRunError, StoreError
from featbench.core.facesource import FaceInput
from featbench.core.identity import WeightsId

from classify.finetune import make_units
from classify.learn.method import score_batches
from extract.encoders import autocast_dtype, resolve_device


class NetworkScores:
    """A trained network as predict's encoder: aligned uint8 faces -> its (n, outputs) scores.

    Parameters
    ----------
    kind : {"ft", "transfer"}
    blob : bytes
        The network's safetensors file.
    settings : dict
        The run model's settings (the manifest's ``settings``, with its ``aus`` and ``weights``).
    face_input : FaceInput
        What the network reads of the aligned faces.
    unit : str, optional
        ``ft``: the unit's name.
    """

    def __init__(self, kind, blob, *, settings, face_input, unit="model"):
        self.kind, self.blob, self.settings, self.unit = kind, blob, settings, unit
        self.input = face_input
        self.start_weights = str((settings.get("start_weights") if kind == "transfer"
                                  else settings.get("weights")) or "")
        self._net, self.device, self._dtype = None, "cpu", None

    def __getstate__(self):  # the network is rebuilt from its bytes after unpickling
        return {k: v for k, v in self.__dict__.items() if k not in ("_net", "device", "_dtype")}

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._net, self.device, self._dtype = None, "cpu", None

    @property
    def sha256(self):
        return hashlib.sha256(self.blob).hexdigest()

    @property
    def input_size(self):
        return self.input.size

    def face_input(self, region):
        """What the network reads (:class:`FaceInput`; its unit's region)."""
        return self.input

    def open(self, device="auto"):
        """Build the network on ``device`` (``auto``: CUDA when present); return self."""
        from safetensors.torch import load as load_bytes

        self.device = resolve_device(device)
        state = load_bytes(self.blob)
        if self.kind == "ft":
            from classify.finetune import unit_network

            net = unit_network(self.settings, self.unit, state)
        else:
            from classify.transfer import network_of

            net = network_of(self.settings, state)
        self._net = net.to(self.device).eval()
        self._dtype = autocast_dtype(self.device)  # AMP on CUDA, as the run scored its test faces
        return self

    def __call__(self, crops):
        """Return the (n, outputs) float32 scores of ``crops`` (n, S, S, 3) uint8."""
        import torch

        if self._net is None:
            self.open("cpu")
        per_au = self.kind == "ft" and self.settings["config"]["head"] == "per-au"
        return score_batches(self._net, [torch.from_numpy(np.ascontiguousarray(crops))],
                             device=self.device, dtype=self._dtype,
                             to_scores=(lambda o: o[:, 1:2] - o[:, 0:1]) if per_au else None)


class NetworkOutput:
    """One AU's column of a :class:`NetworkScores`' output, as a classifier.

    ``codes_key`` names the output it reads in :meth:`featbench.apply.runmodel.RunModel.score`'s
    ``codes``; ``decision_function`` returns the column (``probability``: its sigmoid).
    """

    def __init__(self, network, model, weights, region, column, *, probability=False):
        self.network = network
        self.codes_key = (str(model), str(weights), str(region))
        self.column, self.probability = int(column), bool(probability)

    def decision_function(self, X):
        x = np.asarray(X, np.float64)[:, self.column]
        return 1.0 / (1.0 + np.exp(-x)) if self.probability else x


def _blob(path, run, kind):
    if not path.is_file():
        raise StoreError(f"{path}: network file of run {run} is missing (rerun featbench "
                         f"{'finetune' if kind == 'ft' else kind})")
    return path.read_bytes()


def _manifest(folder, run, kind):
    """The run's manifest with its kind's settings (and AUs) as ``settings``."""
    path = folder / modelfile.MANIFEST
    if not path.is_file():
        raise MissingRunError(f"{path}: {kind} run {run} has no saved network "
                              f"(rerun featbench {'finetune' if kind == 'ft' else kind})")
    manifest = modelfile.read_manifest(folder)
    return {**manifest, "settings": {**manifest["settings"], "aus": manifest["aus"],
                                     "weights": manifest["weights"]}}


def _cache_alignment(workspace, dataset):
    """The alignment settings of the workspace's aligned-face cache (what ft / transfer read)."""
    import json

    info = read_cache_info(workspace.aligned_path(dataset)) or {}
    try:
        return dict(json.loads(info.get("settings") or "{}"))
    except (TypeError, ValueError):
        return {}


def load_ft_run(workspace, dataset, run):
    """A ``featbench finetune`` run: its manifest + one safetensors network per unit (and fold)."""
    from featbench.apply.runmodel import RunModel

    folder = workspace.models_dir(dataset, run)
    manifest = _manifest(folder, run, "ft")
    settings = manifest["settings"]
    cfg, aus = settings["config"], list(manifest["aus"])
    units = make_units(aus, cfg["head"], cfg["region"])
    folds = []
    for fname in settings.get("folds") or [""]:
        fold = {}
        for u in units:
            name = f"{u.name}-{fname}" if fname else u.name
            entry = settings["units"].get(name, {})
            if "model_file" not in entry:
                continue  # no network: the run scored none of the unit's AUs
            net = NetworkScores("ft", _blob(folder / entry["model_file"], run, "ft"), settings=settings,
                                unit=name, face_input=FaceInput.from_json(settings["face_input"][u.name]))
            wid = str(WeightsId.finetuned(f"{run}/{name}", sha256=net.sha256))
            for j, au in enumerate(u.aus):
                if au in entry.get("trainable", u.aus):
                    out = NetworkOutput(net, cfg["model"], wid, u.region,
                                        0 if cfg["head"] == "per-au" else j)
                    fold[au] = (out, float(entry["thresholds"][j]))
        folds.append(fold)
    if not any(folds):
        raise StoreError(f"{folder}: run {run} has no trained network for any AU")
    return RunModel(run=run, dataset=dataset, clf="ft", model=cfg["model"],
                    weights=str(manifest.get("weights", "")), aus=aus,
                    au_regions={u_au: u.region for u in units for u_au in u.aus}, folds=folds,
                    alignment=_cache_alignment(workspace, dataset),
                    info={"protocol": cfg.get("protocol"), "version": manifest.get("featbench_version"),
                          "head": cfg["head"], "input_size": settings["network"]["input_size"]})


def load_transfer_run(workspace, dataset, run):
    """A ``featbench transfer`` stage-2 run: its manifest + the network (AUs, thresholds)."""
    from featbench.apply.runmodel import RunModel

    folder = workspace.models_dir(dataset, run)
    settings = _manifest(folder, run, "transfer")["settings"]
    aus, thresholds, unit = list(settings["aus"]), settings["thresholds"], settings["units"]["model"]
    net = NetworkScores("transfer", _blob(folder / unit["model_file"], run, "transfer"),
                        settings=settings, face_input=FaceInput.from_json(settings["face_input"]))
    wid = str(WeightsId.finetuned(run, sha256=net.sha256))
    backbone = settings["backbone"]
    fold = {au: (NetworkOutput(net, backbone, wid, "full", j, probability=True), float(thresholds[j]))
            for j, au in enumerate(aus) if au in unit.get("trainable", aus)}
    return RunModel(run=run, dataset=dataset, clf="transfer", model=backbone,
                    weights=str(settings.get("start_weights", "")), aus=aus,
                    au_regions={a: "full" for a in aus}, folds=[fold],
                    alignment=_cache_alignment(workspace, dataset),
                    info={"scores": "probabilities", "stage1_weights": settings.get("start_weights")})
