"""The run kinds whose classifier is a trained network: ``lstm``, ``ft`` and ``transfer``.

Each is a :class:`classify.kinds.RunKind` (the registry's entries point here) whose ``save``
turns what its trainer hands over into ``(folds, settings, tensors)`` and whose ``load`` builds a
:class:`classify.scorer.RunModel` from a model file. Tensor groups are one per network: ``AU01``
/ ``multilabel`` (LSTM; ``-<fold>`` per fold), the fine-tuning unit's name (``model``, ``AU01``,
``upper``...), ``model`` (transfer). Networks are read when first used, a group at a time.

``lstm`` (:mod:`classify.lstm`)
    ``trained`` = classify_run's ``{"folds", "aus", "fits"}``; settings ``networks`` (per group:
    ``dims``, ``n_out``, ``hidden``, ``bidirectional``, ``aus``, ``best_epoch``) and ``units``
    (per fold: ``{au: [group, output]}``); scored by :class:`classify.scorer.LSTMScorer`.
``ft`` (:mod:`classify.finetune`)
    ``trained`` = ``{"config", "network", "folds", "units": {name: {"fold", "aus", "region",
    "trainable", "thresholds", "state"}}}`` (``state``: a callable returning the unit's state
    dict); the settings are what :func:`classify.finetune.unit_network` reads.
``transfer`` (:mod:`classify.transfer`)
    ``trained`` = ``{"fold", "state", "settings": {"backbone", "input_size", "hidden",
    "dropout", "aus", "thresholds" (probabilities), "logit_thresholds", "start_weights",
    "weights"}}``.
"""

import json

from featbench.core.errors import StoreError
from featbench.core.identity import WeightsId

from classify.finetune import unit_network
from classify.kinds import RunKind, fold_results, unit_group
from classify.lstm import options_from, run_jobs
from classify.netscorer import NetworkOutput, NetworkScores
from classify.scorer import LSTMScorer, RunModel
from classify.transfer import load_stage2_network
from extract.registry import get_spec


def _plain(value):
    """``value`` as JSON holds it (dataclasses and numpy scalars as their plain forms)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# --- lstm -------------------------------------------------------------------------------------
def save_lstm(trained):
    """One tensor group per trained network (a multilabel network serves several AUs once)."""
    folds = [{"name": f, "thresholds": {}} for f in trained["folds"]]
    units = [{} for _ in trained["folds"]]
    groups, networks, tensors = {}, {}, {}
    for fi, fname, au, view in fold_results(trained):
        fit = getattr(view, "shared", view)
        if id(fit) not in groups:
            group = unit_group(au if len(fit.aus) == 1 else "multilabel", fname, len(folds))
            net = fit.model
            groups[id(fit)] = group
            tensors[group] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            networks[group] = {"dims": int(net.dims), "n_out": int(net.n_out), "hidden": int(net.hidden),
                               "bidirectional": bool(net.bidirectional), "aus": list(fit.aus),
                               "best_epoch": _plain(fit.best_epoch), "options": _plain(fit.options)}
        units[fi][au] = [groups[id(fit)], fit.aus.index(au)]
        folds[fi]["thresholds"][au] = float(view.threshold)
    return folds, {"networks": networks, "units": units}, tensors


def load_lstm(model_file):
    """Each AU: one output of its network, carried along tracks (:class:`LSTMScorer`)."""
    m = model_file.manifest
    nets = m["settings"]["networks"]
    folds = []
    for fold, units in zip(m["folds"], m["settings"]["units"]):
        folds.append({au: (LSTMScorer({**nets[g], "state_dict": model_file.tensors(g)}, out),
                           float(fold["thresholds"][au])) for au, (g, out) in units.items()})
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {m['run']} has no trained network for any AU")
    return RunModel.from_model_file(model_file, folds)


#: the ``lstm`` kind: an LSTM over each subject's sequence of codes (``featbench classify --clf lstm``)
LSTM = RunKind(name="lstm", load=load_lstm, save=save_lstm, train="classify.run:classify_run",
               command="featbench classify --clf lstm", fit_jobs=run_jobs, options=options_from,
               help="LSTM over each subject's code sequence, epoch chosen on validation")


# --- ft ---------------------------------------------------------------------------------------
def save_ft(trained):
    """One tensor group per trained unit, read from its state file only when written."""
    folds = [{"name": f, "thresholds": {}} for f in trained["folds"]]
    units, tensors = {}, {}
    for name, u in trained["units"].items():
        units[name] = {k: _plain(u[k]) for k in ("fold", "aus", "region", "trainable", "thresholds")}
        tensors[name] = u["state"]
        for j, au in enumerate(u["aus"]):
            if au in u["trainable"]:
                folds[u["fold"]]["thresholds"][au] = float(u["thresholds"][j])
    return folds, {"config": _plain(trained["config"]), "network": _plain(trained["network"]),
                   "units": units}, tensors


def _ft_network(model_file, name, settings):
    def build(state):
        return unit_network(settings, name, state)

    return NetworkScores("ft", lambda: model_file.tensors(name),
                         sha256=model_file.manifest["tensors"][name].get("sha256", ""),
                         input_size=settings["network"]["input_size"], crop_to_input=True,
                         start_weights=model_file.manifest["weights"], build=build,
                         head=settings["config"]["head"])


def load_ft(model_file):
    """Each unit: its network on its region's faces; each AU: one column of its outputs."""
    m = model_file.manifest
    s, run = m["settings"], m["run"]
    cfg = s["config"]
    folds = [{} for _ in m["folds"]]
    for name, u in s["units"].items():
        net = _ft_network(model_file, name, s)
        wid = str(WeightsId.finetuned(f"{run}/{name}", sha256=net.sha256))
        for j, au in enumerate(u["aus"]):
            if au in u["trainable"]:
                out = NetworkOutput(net, cfg["model"], wid, u["region"], 0 if cfg["head"] == "per-au" else j)
                folds[u["fold"]][au] = (out, float(m["folds"][u["fold"]]["thresholds"][au]))
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {run} has no trained network for any AU")
    return RunModel.from_model_file(model_file, folds, info={"head": cfg["head"]})


#: the ``ft`` kind: a fine-tuned CNN maps faces to AU scores (``featbench finetune``)
FT = RunKind(name="ft", load=load_ft, save=save_ft, train="classify.finetune:finetune_run",
             command="featbench finetune", inputs="faces",
             help="a CNN fine-tuned for AU occurrence (per-AU or multilabel heads)")


# --- transfer -----------------------------------------------------------------------------------
def save_transfer(trained):
    """The stage-2 network as one tensor group ``model``; thresholds as probabilities."""
    s = trained["settings"]
    folds = [{"name": trained["fold"], "thresholds": dict(zip(s["aus"], s["thresholds"]))}]
    return folds, _plain(s), {"model": trained["state"]}


def load_transfer(model_file):
    """The stage-2 network on full faces; each AU: the sigmoid of its logit (a probability)."""
    m = model_file.manifest
    s = m["settings"]

    def build(state):
        return load_stage2_network(s, state)

    net = NetworkScores("transfer", lambda: model_file.tensors("model"),
                        sha256=m["tensors"]["model"].get("sha256", ""), crop_to_input=False,
                        input_size=s.get("input_size") or get_spec(s["backbone"]).input_size,
                        start_weights=s.get("start_weights"), build=build)
    wid = str(WeightsId.finetuned(m["run"], sha256=net.sha256))
    thresholds = m["folds"][0]["thresholds"]
    fold = {au: (NetworkOutput(net, s["backbone"], wid, "full", j, probability=True),
                 float(thresholds[au])) for j, au in enumerate(s["aus"])}
    return RunModel.from_model_file(model_file, [fold], info={
        "scores": "probabilities", "stage1_weights": s.get("start_weights")})


#: the ``transfer`` kind: Method B's expression -> AU network (``featbench transfer``)
TRANSFER = RunKind(name="transfer", load=load_transfer, save=save_transfer,
                   train="classify.transfer:transfer_run", command="featbench transfer",
                   inputs="faces", help="an expression-pretrained network fine-tuned for AUs")

