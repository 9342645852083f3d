"""The run kind of any method over aligned faces, from its method class: one registry line.

:func:`face_kind` makes the :class:`classify.kinds.RunKind` of a method whose networks map
aligned faces to per-AU scores (``ft``, ``transfer``, a test's toy method). Its ``load`` builds
the run's :class:`classify.infer.RunModel` from the model file alone (a run folder or its
export), through what the method class says at class level:

``network(settings, unit, state)``
    The unit's network rebuilt from the model's settings, with its trained ``state`` loaded.
``to_scores(settings)`` (None: the outputs)
    How the network's outputs become the scores (fine-tuning's per-AU heads: the logit
    difference).
``probabilities`` (False)
    The run reports its scores and thresholds as probabilities (transfer).

Per fold, each unit (``settings["units"]``: its fold, AUs, region, trainable AUs, base name;
its :class:`~featbench.core.facesource.FaceInput` in ``settings["face_input"][base]``) becomes one
:class:`classify.infer.NetworkScores`, read lazily from the unit's tensor group, and each of
its AUs one column of it (:class:`classify.infer.NetworkOutput`) with the fold's threshold.
The weights identity of a unit is ``finetuned:<run>/<unit> sha256:<its file's>``.
"""

import math
from functools import partial

from featbench.core.errors import StoreError
from featbench.core.facesource import FaceInput
from featbench.core.identity import WeightsId

from classify.kinds import RunKind
from classify.infer import NetworkOutput, NetworkScores, RunModel
from classify.learn.loop import save_units, write_model
from classify.learn.task import get_task


def face_kind(name, method, *, train="", command="", help="", save=None, spec=None):
    """Return the :class:`RunKind` of runs of ``method`` (a Method class) over faces (``save``:
    how its run folder's model is written, default :func:`save_face_run`; ``spec``: what its
    model files hold, :func:`classify.modelcheck.network_spec`)."""
    return RunKind(name=name, load=partial(load_face_run, method=method), save=save or save_face_run,
                   train=train, command=command, inputs="faces", help=help, spec=spec)


def load_face_run(model_file, *, method):
    """Each unit: its network on what its face input reads; each AU: one column of its scores."""
    m = model_file.manifest
    settings = {**m["settings"], "aus": list(m["aus"]), "weights": m["weights"]}
    model = (m.get("preprocessing") or {}).get("model", m["kind"])
    to_scores = method.to_scores_of(settings)
    # logits as probabilities: an occurrence run's; an intensity run's scores are intensities
    prob = method.probabilities and get_task(m.get("task") or "occurrence").probability is not None
    start = WeightsId.parse(settings.get("start_weights") or m["weights"])  # the manifest's string
    folds = []
    for fi, fold in enumerate(m["folds"]):
        outputs = {}
        for name, e in settings["units"].items():
            if e.get("fold", 0) != fi or name not in model_file.groups:
                continue  # another fold's unit, or one the run trained no network for
            net = NetworkScores(partial(model_file.tensors, name),
                                sha256=m["tensors"][name].get("sha256", ""),
                                build=partial(method.network, settings, name),
                                face_input=_face_input(settings, e), to_scores=to_scores,
                                start_weights=start)
            wid = WeightsId.finetuned(f"{m['run']}/{name}", sha256=net.sha256)
            for j, au in enumerate(e["aus"]):
                if au in e.get("trainable", e["aus"]) and au in fold["thresholds"]:
                    thr = float(fold["thresholds"][au])
                    outputs[au] = (NetworkOutput(net, model, wid, e["region"], j, probability=prob),
                                   _sigmoid(thr) if prob else thr)
        folds.append(outputs)
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {m['run']} has no trained network for any AU")
    return RunModel.from_model_file(model_file, folds, info={
        "head": (settings.get("config") or {}).get("head"),
        **({"scores": "probabilities"} if prob else {})})


def _face_input(settings, entry):
    """What the unit's network reads (the model's ``face_input`` of the unit's base name)."""
    return FaceInput.from_json(settings["face_input"][entry["base"]])


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def save_face_run(folder, record):
    """The ``save`` of a kind over faces: each unit's log and curves moved in from the work
    folder, and the model (one tensor group per unit, :func:`classify.learn.loop.write_model`)."""
    method, plan = record.method, record.plan
    work = plan.workspace.models_dir(plan.dataset, plan.run).with_name(f".{plan.run}.partial")
    record.units = save_units(folder, work, record.results)
    faces, splits = record.inputs.faces, record.splits
    write_model(folder, method, record.run, record.aus, splits, record.results, record.units,
                weights=record.meta["weights"], dataset=plan.trained_on,
                preprocessing={**method.preprocessing(record.aus, method.info),
                               "alignment": faces["settings"]},
                faces=faces["fingerprint"], folds=[s.name for s in splits] if len(splits) > 1 else [],
                **method.model_settings(record.aus, splits, method.info))
