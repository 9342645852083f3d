"""The run kinds whose classifier is a trained network: ``lstm``, ``ft`` and ``transfer``.

Each is a :class:`classify.kinds.RunKind` (the registry's entries point here). They are learned
methods of :mod:`classify.learn` (:class:`classify.lstm.LSTMMethod`,
:class:`classify.finetune.FinetuneMethod`, :class:`classify.transfer.TransferMethod`); their
runs are written by the one learned-run writer, :func:`classify.learn.loop.write_model` (a
manifest + one safetensors tensor group per unit: ``AU01`` / ``multilabel`` for the LSTM,
``model`` / ``AU01`` / ``upper``... for fine-tuning, ``model`` (+ ``backbone``) for transfer;
``-<fold>`` after the unit's name per fold). The ``load`` functions here build a
:class:`classify.scorer.RunModel` from a model file (a run folder or its export); networks are
read when first used, a unit at a time.

``lstm``
    trained by ``featbench classify --clf lstm`` (:func:`classify.run.classify_run`, the kind's
    ``fit_jobs``), saved by :func:`classify.lstm.save_fits`; each AU is one output of its unit,
    carried along face tracks by :class:`classify.scorer.LSTMScorer`.
``ft``
    each unit rebuilt by :func:`classify.finetune.unit_network` on what its
    :class:`~featbench.core.facesource.FaceInput` reads; the score is ``logit(present) -
    logit(absent)`` (per-AU heads) or the AU's logit (multilabel).
``transfer``
    stage 2's network rebuilt by :func:`classify.transfer.network_of`; the score is the AU's
    probability (as the run's predictions file stores it), thresholds as probabilities.
"""

from functools import partial

from featbench.core.errors import StoreError
from featbench.core.facesource import FaceInput
from featbench.core.identity import WeightsId

from classify.finetune import make_units, unit_network
from classify.kinds import RunKind
from classify.lstm import options_from, run_jobs, save_fits
from classify.netscorer import NetworkOutput, NetworkScores
from classify.scorer import LSTMScorer, RunModel
from classify.transfer import network_of


def _checked(model_file, folds):
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {model_file.manifest['run']} has no trained "
                         "network for any AU")
    return folds


def _fold_units(manifest):
    """Per fold of a learned run, the names of its units (``<unit>``, or ``<unit>-<fold>``)."""
    names, folds = list(manifest["settings"]["units"]), manifest["folds"]
    if len(folds) <= 1:
        return [names]
    return [[n for n in names if n.endswith(f"-{f['name']}")] for f in folds]


# --- lstm -------------------------------------------------------------------------------------
def load_lstm(model_file):
    """Each AU: one output of its unit's network, carried along tracks (:class:`LSTMScorer`)."""
    m = model_file.manifest
    units, folds = m["settings"]["units"], []
    for fold, names in zip(m["folds"], _fold_units(m)):
        scorers = {}
        for name in (n for n in names if n in model_file.groups):
            e = units[name]
            for j, au in enumerate(e["aus"]):
                if au in e.get("trainable", e["aus"]) and au in fold["thresholds"]:
                    scorers[au] = (LSTMScorer(e, model_file.tensors(name), j),
                                   float(fold["thresholds"][au]))
        folds.append(scorers)
    return RunModel.from_model_file(model_file, _checked(model_file, folds))


#: the ``lstm`` kind: an LSTM over each subject's sequence of codes (``featbench classify --clf lstm``)
LSTM = RunKind(name="lstm", load=load_lstm, save=save_fits, train="classify.run:classify_run",
               command="featbench classify --clf lstm", fit_jobs=run_jobs, options=options_from,
               help="LSTM over each subject's code sequence, epoch chosen on validation")


# --- ft ---------------------------------------------------------------------------------------
def _ft_unit(model_file, settings, unit, name):
    """The :class:`NetworkScores` of one trained unit of a fine-tuning run."""
    m = model_file.manifest
    return NetworkScores(partial(model_file.tensors, name), sha256=m["tensors"][name].get("sha256", ""),
                         build=partial(unit_network, settings, name),
                         face_input=FaceInput.from_json(settings["face_input"][unit.name]),
                         start_weights=m["weights"], per_au=settings["config"]["head"] == "per-au")


def load_ft(model_file):
    """Each unit: its network on what its face input reads; each AU: one column of its scores."""
    m = model_file.manifest
    settings, run = m["settings"], m["run"]
    cfg = settings["config"]
    units = make_units(list(m["aus"]), cfg["head"], cfg["region"])
    folds = []
    for fi, fname in enumerate(settings.get("folds") or [""]):
        fold = {}
        for u in units:
            name = f"{u.name}-{fname}" if fname else u.name
            if name not in model_file.groups:
                continue  # no network: the run scored none of the unit's AUs
            entry, net = settings["units"][name], _ft_unit(model_file, settings, u, name)
            wid = str(WeightsId.finetuned(f"{run}/{name}", sha256=net.sha256))
            for j, au in enumerate(u.aus):
                if au in entry.get("trainable", u.aus):
                    out = NetworkOutput(net, cfg["model"], wid, u.region, 0 if net.per_au else j)
                    fold[au] = (out, float(entry["thresholds"][j]))
        folds.append(fold)
    return RunModel.from_model_file(model_file, _checked(model_file, folds),
                                    info={"head": cfg["head"], "protocol": cfg.get("protocol")})


#: the ``ft`` kind: a fine-tuned CNN maps faces to AU scores (``featbench finetune``)
FT = RunKind(name="ft", load=load_ft, writer="classify.learn.loop:write_model",
             train="classify.finetune:finetune_run", command="featbench finetune", inputs="faces",
             help="a CNN fine-tuned for AU occurrence (per-AU or multilabel heads)")


# --- transfer -----------------------------------------------------------------------------------
def load_transfer(model_file):
    """Stage 2's network on full faces; each AU: the sigmoid of its logit (a probability)."""
    m = model_file.manifest
    settings = {**m["settings"], "aus": m["aus"]}
    unit, aus = settings["units"]["model"], list(m["aus"])
    net = NetworkScores(partial(model_file.tensors, "model"),
                        sha256=m["tensors"]["model"].get("sha256", ""),
                        build=partial(network_of, settings),
                        face_input=FaceInput.from_json(settings["face_input"]),
                        start_weights=settings.get("start_weights"))
    wid = str(WeightsId.finetuned(m["run"], sha256=net.sha256))
    fold = {au: (NetworkOutput(net, settings["backbone"], wid, "full", j, probability=True),
                 float(settings["thresholds"][j]))
            for j, au in enumerate(aus) if au in unit.get("trainable", aus)}
    return RunModel.from_model_file(model_file, _checked(model_file, [fold]), info={
        "scores": "probabilities", "stage1_weights": settings.get("start_weights")})


#: the ``transfer`` kind: Method B's expression -> AU network (``featbench transfer``)
TRANSFER = RunKind(name="transfer", load=load_transfer, writer="classify.learn.loop:write_model",
                   train="classify.transfer:transfer_run", command="featbench transfer",
                   inputs="faces", help="an expression-pretrained network fine-tuned for AUs")
