"""How a run's model file becomes its scorer: the one loader every run kind configures.

Every kind's model holds *units*, each one tensor group of one fold that scores one or more AUs:

- a per-AU estimator (``lda``, ``svm``, ``ridge``, ``svr``): one group per fold and AU, the
  manifest's ``settings["units"]`` a list (one ``{au: group}`` per fold);
- a network (``lstm`` over codes; ``ft``, ``transfer`` over faces): one group per network,
  ``settings["units"][group]`` its entry (fold, AUs in output order, the AUs it trained...).

:func:`load_units` reads either layout (:func:`saved_units`) and puts each trained AU of each
unit, with its fold's threshold, where :class:`classify.infer.RunModel` looks for it. What a
kind adds is one function, ``scorer(unit) -> column``, where ``column(j, threshold)`` returns
the AU's ``(classifier, threshold)`` for the unit's ``j``-th output (a unit's scorer is made
once, when its first AU is loaded: a network is shared by its AUs). The kinds' scorers:

:func:`estimator_scorer`, :func:`regressor_scorer` (``lda``, ``svm``, ``ridge``, ``svr``)
    each AU its rebuilt pipeline or linear regressor;
:func:`lstm_scorer` (``lstm``)
    each AU one output of its unit's LSTM, carried along face tracks
    (:class:`classify.infer.LSTMScorer`);
:func:`face_scorer` (``ft``, ``transfer``, any method over faces: :func:`load_face_run`)
    each unit its network on what its face input reads (:class:`classify.infer.NetworkScores`),
    each AU one column of it (:class:`classify.infer.NetworkOutput`).

This is the inference side: it imports no training module. A network is rebuilt by its own
module (:func:`classify.ft_net.unit_network`, :func:`classify.transfer_net.network_of`,
:func:`classify.lstm_net.network_of`), which a kind names (:mod:`classify.netkinds`).
"""

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from featbench.core.errors import StoreError
from featbench.core.facesource import FaceInput
from featbench.core.identity import WeightsId

from classify.infer import LSTMScorer, NetworkOutput, NetworkScores, RunModel
from classify.task import get_task


@dataclass(frozen=True)
class SavedUnit:
    """One unit of a model file: its tensor group, fold, AUs (in its outputs' order) and the
    manifest's entry of it (empty for a per-AU estimator's group)."""

    group: str
    fold: int
    aus: tuple
    entry: dict = field(default_factory=dict)

    @property
    def trained(self):
        """The AUs the unit has a model of (an entry's ``trainable``; all of them else)."""
        return self.entry.get("trainable", self.aus)


def saved_units(model_file):
    """Every unit of ``model_file`` that holds tensors (see the module docstring's layouts)."""
    units = model_file.manifest["settings"]["units"]
    if isinstance(units, list):  # one model per fold and AU
        return [SavedUnit(group, fi, (au,)) for fi, per in enumerate(units) for au, group in per.items()]
    return [SavedUnit(name, int(e.get("fold", 0)), tuple(e["aus"]), e)
            for name, e in units.items() if name in model_file.groups]  # else: no network trained


def load_units(model_file, scorer, *, noun="trained network", info=None):
    """Return the :class:`~classify.infer.RunModel` of a model file from its units.

    Parameters
    ----------
    model_file : featbench.core.modelfile.ModelFile
    scorer : callable
        ``scorer(unit)`` (a :class:`SavedUnit`) -> ``column(j, threshold)`` -> ``(classifier,
        threshold)`` of the unit's ``j``-th AU.
    noun : str
        What a unit holds, for the message of a run with none ("no fitted classifier for any AU").
    info : dict, optional
        Kind-specific provenance (:meth:`RunModel.from_model_file`).

    Raises
    ------
    StoreError
        No AU of any fold has a model.
    """
    m = model_file.manifest
    folds = [{} for _ in m["folds"]]
    for unit in saved_units(model_file):
        thresholds, column = m["folds"][unit.fold]["thresholds"], None
        for j, au in enumerate(unit.aus):
            if au in unit.trained and au in thresholds:
                column = column or scorer(unit)
                folds[unit.fold][au] = column(j, float(thresholds[au]))
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {m['run']} has no {noun} for any AU")
    return RunModel.from_model_file(model_file, folds, info=info)


# --- per-AU estimators ------------------------------------------------------------------------
def estimator_scorer(model_file, classes):
    """``lda`` / ``svm`` (any per-AU estimator kind): each AU's pipeline rebuilt from its arrays,
    only into the ``classes`` its kind allows (never unpickled)."""
    from classify.estimators import estimator_from_arrays

    models = model_file.manifest["settings"]["models"]

    def scorer(unit):
        return lambda j, thr: (estimator_from_arrays(models[unit.group], model_file.tensors(unit.group),
                                                     thr, classes), thr)

    return scorer


def regressor_scorer(model_file):
    """``ridge`` / ``svr``: each AU a :class:`~classify.intensity.LinearIntensity` (its weight
    vector and bias)."""
    from classify.intensity import LinearIntensity

    def scorer(unit):
        arrays = model_file.tensors(unit.group)
        return lambda j, thr: (LinearIntensity(np.asarray(arrays["weight"]), float(arrays["bias"][0])),
                               thr)

    return scorer


# --- networks ---------------------------------------------------------------------------------
def lstm_scorer(model_file, network):
    """``lstm``: each AU one output of its unit's network (``network(entry, state)``: the LSTM
    of a unit's entry with its state loaded), carried along face tracks."""
    def scorer(unit):
        build, bidirectional = partial(network, unit.entry), bool(unit.entry.get("bidirectional"))
        return lambda j, thr: (LSTMScorer(model_file.tensors(unit.group), j, build=build,
                                          bidirectional=bidirectional), thr)

    return scorer


def load_face_run(model_file, *, network, to_scores_of=None, probabilities=False):
    """The ``load`` of a kind over faces (``ft``, ``transfer``, a test's toy method).

    Parameters
    ----------
    network : callable
        ``network(settings, unit, state)``: the unit's network rebuilt from the model's settings
        (with ``aus`` and ``weights``), its trained ``state`` loaded.
    to_scores_of : callable, optional
        ``to_scores_of(settings)`` -> how the network's outputs become its scores (None: they
        are; fine-tuning's per-AU heads: the logit difference).
    probabilities : bool
        The run reports its scores and thresholds as probabilities (transfer), when its task
        has them (occurrence: logits; an intensity run's scores are intensities).
    """
    m = model_file.manifest
    settings = {**m["settings"], "aus": list(m["aus"]), "weights": m["weights"]}
    prob = probabilities and get_task(m.get("task") or "occurrence").probability is not None
    scorer = face_scorer(model_file, settings, network=network, prob=prob,
                         to_scores=to_scores_of(settings) if to_scores_of is not None else None)
    return load_units(model_file, scorer, info={
        "head": (settings.get("config") or {}).get("head"),
        **({"scores": "probabilities"} if prob else {})})


def face_scorer(model_file, settings, *, network, to_scores, prob):
    """Each unit its network on what its face input reads (the model's ``face_input`` of the
    unit's base name), its weights ``finetuned:<run>/<unit> sha256:<its group's>``; each AU one
    column (``prob``: its sigmoid, the threshold a probability too)."""
    m = model_file.manifest
    model = (m.get("preprocessing") or {}).get("model", m["kind"])
    start = WeightsId.parse(settings.get("start_weights") or m["weights"])  # the manifest's string

    def scorer(unit):
        net = NetworkScores(partial(model_file.tensors, unit.group),
                            sha256=m["tensors"][unit.group].get("sha256", ""),
                            build=partial(network, settings, unit.group),
                            face_input=FaceInput.from_json(settings["face_input"][unit.entry["base"]]),
                            to_scores=to_scores, start_weights=start)
        wid = WeightsId.finetuned(f"{m['run']}/{unit.group}", sha256=net.sha256)
        region = unit.entry["region"]
        return lambda j, thr: (NetworkOutput(net, model, wid, region, j, probability=prob),
                               _sigmoid(thr) if prob else thr)

    return scorer


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))
