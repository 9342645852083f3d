"""Runs whose trained network *is* the classifier: fine-tuned CNNs (``ft``) and transfer runs.

A ``featbench classify`` run reads codes of a frozen network and applies per-AU classifiers to
them; a ``featbench finetune`` or ``featbench transfer`` run maps aligned faces straight to
per-AU scores. Both fit :class:`featbench.apply.runmodel.RunModel`: the trained network stands where
the encoder stood (:class:`NetworkScores`: crops -> its outputs) and each AU's "classifier" is
one column of those outputs (:class:`NetworkOutput`), read through the classifier's
``codes_key`` = ``(network, weights, region)``.

What is reproduced, from what each run did to its own test faces:

``ft`` (:mod:`classify.finetune`)
    each unit (``model.pt``, ``<AU>.pt`` or ``<region>.pt``; ``<unit>-<fold>.pt`` per fold)
    rebuilt by :func:`classify.finetune.unit_network` from ``settings.json``; its faces are the
    unit's region (or the full face) resized to the unit's input size exactly as the run's
    :class:`~classify.finetune.FaceReader` resized them; the score is ``logit(present) -
    logit(absent)`` (per-au head) or the AU's logit (multilabel), the decision ``score >
    threshold`` with the unit's threshold (0, or tuned on validation).
``transfer`` (:mod:`classify.transfer`)
    stage 2's ``model.pt`` rebuilt by :func:`classify.transfer.load_model`; full faces as the
    cache stores them (the network's first layer resizes them); the score is the AU's
    probability (sigmoid of the logit, as the run's predictions file stores it), the decision
    ``probability > threshold`` (the thresholds tuned on validation, as probabilities).

The trained weights travel inside the :class:`NetworkScores` (the saved file's bytes; their
sha256 is the weights identity ``finetuned:<run>[/<unit>] sha256:...``), so ``featbench
export`` writes them into the model file and ``predict --model`` needs nothing else.
"""

import hashlib
import io

import numpy as np

from featbench.core.align import read_cache_info
from featbench.core.errors import MissingRunError, StoreError
from featbench.core.identity import WeightsId

from classify.finetune import make_units, score_faces
from classify.training import autocast_dtype
from extract.encoders import resolve_device
from extract.registry import get_spec


class NetworkScores:
    """A trained network as predict's encoder: aligned uint8 faces -> its (n, outputs) scores.

    Parameters
    ----------
    kind : {"ft", "transfer"}
    blob : bytes
        The saved ``.pt`` file's content.
    input_size : int
        The side the network was trained on.
    crop_to_input : bool
        Resize every crop (the full face too) to ``input_size`` before the network, as a
        fine-tuning run's face reader did; else a full face goes in as aligned (the network's
        first layer resizes it) and a region crop at ``input_size``.
    start_weights : str
        The weights training started from (identity string): random ones are flagged in outputs.
    settings : dict, optional
        ``ft``: the run's settings.json.
    unit : str, optional
        ``ft``: the unit's name.
    """

    def __init__(self, kind, blob, *, input_size, crop_to_input, start_weights, settings=None,
                 unit=None):
        self.kind, self.blob, self.settings, self.unit = kind, blob, settings, unit
        self.input_size, self.crop_to_input = int(input_size), bool(crop_to_input)
        self.start_weights = str(start_weights or "")
        self._net, self.device, self._dtype = None, "cpu", None

    def __getstate__(self):  # the network is rebuilt from its bytes after unpickling
        return {k: v for k, v in self.__dict__.items() if k not in ("_net", "device", "_dtype")}

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._net, self.device, self._dtype = None, "cpu", None

    @property
    def sha256(self):
        return hashlib.sha256(self.blob).hexdigest()

    def crop_size(self, region):
        """The size ``region``'s crops are cut at (None: the aligned face as it is)."""
        return self.input_size if self.crop_to_input or region != "full" else None

    def open(self, device="auto"):
        """Build the network on ``device`` (``auto``: CUDA when present); return self."""
        import torch

        self.device = resolve_device(device)
        if self.kind == "ft":
            from classify.finetune import unit_network

            state = torch.load(io.BytesIO(self.blob), map_location="cpu", weights_only=True)
            net = unit_network(self.settings, self.unit, state)
        else:
            from classify.transfer import load_model

            net, _ = load_model(io.BytesIO(self.blob))
        self._net = net.to(self.device).eval()
        self._dtype = autocast_dtype(self.device)  # AMP on CUDA, as the run scored its test faces
        return self

    def __call__(self, crops):
        """Return the (n, outputs) float32 scores of ``crops`` (n, S, S, 3) uint8."""
        import torch

        if self._net is None:
            self.open("cpu")
        head = self.settings["config"]["head"] if self.kind == "ft" else "multilabel"
        with torch.inference_mode():  # the run's own scoring of its test faces
            return score_faces(self._net, crops, head, device=self.device, dtype=self._dtype)


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


def _blob(path, run):
    if not path.is_file():
        raise StoreError(f"{path}: network file of run {run} is missing (rerun the run)")
    return path.read_bytes()


def _cache_alignment(workspace, dataset):
    """The alignment settings of the workspace's aligned-face cache (what ft / transfer read)."""
    import json

    info = read_cache_info(workspace.aligned_path(dataset)) or {}
    try:
        return dict(json.loads(info.get("settings") or "{}"))
    except (TypeError, ValueError):
        return {}


def load_ft_run(workspace, dataset, run):
    """A ``featbench finetune`` run: settings.json + one saved network per unit (and fold)."""
    from featbench.apply.runmodel import RunModel, read_settings

    folder = workspace.models_dir(dataset, run)
    settings = read_settings(folder, run)
    cfg, aus = settings["config"], list(settings["aus"])
    fold_names = [f["name"] for f in settings.get("folds") or []] or [""]
    units = make_units(aus, cfg["head"], cfg["region"])
    folds = []
    for fname in fold_names:
        fold = {}
        for u in units:
            name = u.name if len(fold_names) == 1 else f"{u.name}-{fname}"
            entry = settings.get("units", {}).get(name, {})
            if "model_file" not in entry:
                continue  # no network: the run scored none of the unit's AUs
            net = NetworkScores("ft", _blob(folder / entry["model_file"], run), settings=settings,
                                unit=name, input_size=settings["network"]["input_size"],
                                crop_to_input=True, start_weights=settings.get("weights"))
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
                    weights=str(settings.get("weights", "")), aus=aus,
                    au_regions={u_au: u.region for u in units for u_au in u.aus}, folds=folds,
                    alignment=_cache_alignment(workspace, dataset),
                    info={"protocol": settings.get("protocol"), "created": settings.get("created"),
                          "versions": settings.get("versions", {}), "head": cfg["head"],
                          "input_size": settings["network"]["input_size"]})


def load_transfer_run(workspace, dataset, run):
    """A ``featbench transfer`` stage-2 run: ``model.pt`` (network, AUs, thresholds)."""
    import torch

    from featbench.apply.runmodel import RunModel

    path = workspace.models_dir(dataset, run) / "model.pt"
    if not path.is_file():
        raise MissingRunError(f"{path}: transfer run {run} has no saved network "
                              "(rerun featbench transfer)")
    blob = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        backbone, aus, thresholds = state["backbone"], list(state["aus"]), state["thresholds"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise StoreError(f"{path}: not a transfer network file ({exc.__class__.__name__}: {exc})") from None
    net = NetworkScores("transfer", blob, crop_to_input=False,
                        input_size=state.get("input_size") or get_spec(backbone).input_size,
                        start_weights=state.get("start_weights"))
    wid = str(WeightsId.finetuned(run, sha256=net.sha256))
    fold = {au: (NetworkOutput(net, backbone, wid, "full", j, probability=True), float(thresholds[j]))
            for j, au in enumerate(aus)}
    return RunModel(run=run, dataset=dataset, clf="transfer", model=backbone,
                    weights=str(state.get("start_weights", "")), aus=aus,
                    au_regions={a: "full" for a in aus}, folds=[fold],
                    alignment=_cache_alignment(workspace, dataset),
                    info={"scores": "probabilities", "stage1_weights": state.get("start_weights")})
