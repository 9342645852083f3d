"""The method contract: what a learned method says (it scores through :mod:`classify.infer`).

A method (fine-tuning: :class:`classify.finetune.FinetuneMethod`, transfer's two stages:
:class:`classify.transfer.TransferMethod`, the LSTM: :class:`classify.lstm.LSTMMethod`; the
per-AU estimators: :mod:`classify.codemethods`) is one class with the hooks below; :mod:`classify.learn.loop` trains its units fold by fold through
:func:`classify.training.fit`, the task (:mod:`classify.task`) supplies loss, metric and
decisions, and :mod:`classify.learn.writer` writes the run. A method never writes files.

``units(aus) -> [Unit]``
    The networks one fold trains (one per AU, one for all, one per region...).
``unit_data(job) -> UnitData``
    The rows and targets the unit trains, validates and tests on (``job``: a :class:`Job`);
    which of its AUs can be trained (positives and negatives in training).
``build(job, data) -> (network, info)``
    A fresh network for the unit (seeded); ``info`` is saved with it.
``train_config(job) -> TrainConfig``
``train_batches(job, data) -> batches(epoch, rng)``
    One epoch's batches ``(x, y, weight)``: inputs, targets, the task's positive weight.
``forward(network, x) -> scores``
    The scores the task's loss compares with ``y`` (the network's outputs, per AU).
``scores(network, job, data, part) -> (y, scores)``
    Inference on ``part`` (``"validation"``: the epoch choice; ``"threshold"``: the validation
    rows the task settles its decision rule on, tuned or not as the task decides; ``"test"``:
    scores in the order of ``job.rows["test"]``, y None), through
    :func:`classify.infer.score_batches`.
``state(network) -> {name: tensor}`` / ``load_state(network, state)``
    What is saved of a trained network (safetensors) and how it is put back.
``fit_unit(job, data, res, *, work, done, progress)`` (optional)
    Train the unit into ``res`` without :func:`classify.training.fit`: the estimator methods of
    :mod:`classify.codemethods` (scikit-learn fits); networks leave it out and train through
    :func:`classify.learn.loop.fit_network`.
``row_extra(record, au)``, ``result_meta(record)``, ``record_settings(record)``, ``fold_entry(rec)``
    What the one writer (:mod:`classify.learn.writer`) records of the method beside the common
    parts: per-AU columns, summary columns, settings.json's own part and per-(fold, AU) entries.
``limited_threads(n)``, ``for_pool(workers, folder)``, ``shared()`` / ``attach(shared)``
    How the method runs in a worker (:mod:`classify.learn.pool`): its threads, its inputs
    memory-mapped, its large inputs sent once to a cluster's workers.

Attributes: ``kind`` (the run kind, ``RunKey.clf``), ``task``, ``reduction`` (the loss over a
batch: ``"mean"``, or ``"sum"`` for the paper's LSTM), ``tune`` (thresholds tuned on
validation), ``workers`` (units trained at once, in processes).
"""

from dataclasses import dataclass, field

import numpy as np

from classify.task import OCCURRENCE, counts, trainable  # noqa: F401 - methods' helpers

#: what a learned run's settings.json keeps per AU of its unit's training
RECORDED = ("best_epoch", "history", "sequences", "seconds", "cpu_seconds")


@dataclass(frozen=True)
class Unit:
    """One network of a fold: its name (file stem), its AUs and the region it sees."""

    name: str
    aus: tuple
    region: str = "full"


@dataclass
class Job:
    """One unit of one fold: the fold's rows by part and the unit's targets by table row.

    ``name`` is the unit's file stem in the run (``<unit>`` or ``<unit>-<fold>``); ``y`` is
    (n_table, len(unit.aus)).
    """

    fold: int
    fold_name: str
    unit: Unit
    rows: dict
    y: np.ndarray
    name: str
    identity: dict = field(default_factory=dict)
    #: the unit's own training settings over the method's (transfer's final stage-1 fit: a
    #: fixed epoch count)
    config: dict = field(default_factory=dict)


@dataclass
class UnitData:
    """What a unit trains on; ``trainable``: indices of its AUs with positives and negatives in
    training. ``counts`` per AU: ``n_train, n_train_pos, n_val, n_val_pos``. ``extra``: the
    method's own (sequences, validation rows...); ``info`` (JSON-ready) and ``notes`` are
    recorded with the unit."""

    trainable: list
    counts: list
    extra: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    #: why an AU of the unit gets no model (by its index), when the method says more than the
    #: loop's "no positive (or no negative) frame in training"
    errors: dict = field(default_factory=dict)


class Method:
    """The base of every method of the one loop (see the module docstring): the learned methods
    train networks; :mod:`classify.codemethods` wraps scikit-learn estimators the same way."""

    kind = ""
    reduction = "mean"
    tune = False
    workers = 1
    #: the summary columns a predictions file records (:mod:`classify.learn.writer`)
    prediction_attrs = ("model", "region", "clf", "weights", "protocol", "dataset")
    #: scores and thresholds are reported as probabilities (the task's, :meth:`Task.probability`)
    probabilities = False
    #: a finished unit is saved in the run's work folder and reused by a rerun (networks)
    resumable = True
    #: what a unit trains, in messages ("no positive frame in training: no network")
    model_noun = "network"
    #: the chosen parameters reported per AU in the run's table (the SVM's ``C``)
    params = ()

    def __init__(self, task=OCCURRENCE):
        self.task = task

    def units(self, aus):
        return [Unit("model", tuple(aus))]

    def unit_data(self, job):
        raise NotImplementedError

    def build(self, job, data):
        raise NotImplementedError

    def train_config(self, job):
        from classify.training import TrainConfig  # torch: only for the methods that train networks

        return TrainConfig()

    def train_batches(self, job, data):
        raise NotImplementedError

    def forward(self, net, x):
        return net(x)

    # --- where the unit trains (classify.learn.pool) -------------------------------------------
    def limited_threads(self, threads):
        """A context holding this process's compute threads to ``threads`` (a worker's share)."""
        from contextlib import nullcontext

        from featbench.core.threads import set_torch_threads

        set_torch_threads(threads)  # this worker's share of the cores: fit's choice leaves it alone
        return nullcontext()

    def for_pool(self, workers, folder):
        """This method as worker processes get it (``folder``: a temporary folder to share
        large inputs through, e.g. memory-mapped codes)."""
        return self

    def shared(self):
        """The large inputs a cluster receives once per worker (None: none)."""
        return None

    def attach(self, shared):
        """This method with :meth:`shared`'s inputs put back (on a cluster's worker)."""
        return self

    def scores(self, net, job, data, part):
        raise NotImplementedError

    def state(self, net):
        return {k: v.detach().cpu() for k, v in net.state_dict().items()}

    def load_state(self, net, state):
        net.load_state_dict(state)
        return net

    # --- a trained unit from its model (classify.learn.facekind) ------------------------------
    @classmethod
    def network(cls, settings, unit, state):
        """The network of ``unit`` rebuilt from a run model's ``settings``, ``state`` loaded."""
        raise NotImplementedError

    @classmethod
    def to_scores_of(cls, settings):
        """How a run's networks' outputs become its scores (None: they are the scores)."""
        return None

    # --- a run over faces (classify.learn.facerun) ---------------------------------------------
    def settings_json(self):
        """The method's settings (JSON), part of every unit's identity."""
        raise NotImplementedError

    def model_settings(self, aus, splits, info):
        """The kind's own part of the run's manifest (what rebuilds a unit's network)."""
        return {}

    def preprocessing(self, aus, info):
        """The manifest's preprocessing: model, regions, input size, mean / std."""
        return {}

    def row_extra(self, record, au):
        """The method's own columns of ``au``'s row of the run's table (``record``: the
        :class:`~classify.learn.writer.RunRecord`)."""
        return {}

    def identity(self):
        """The method's settings as part of every unit's identity (a finished unit with the same
        identity is reused by a rerun)."""
        return {}

    def result_meta(self, record):
        """The method's own columns of the run's summary row, known once it trained."""
        return {}

    def record_settings(self, record):
        """The method's own part of the run's settings.json (networks: :meth:`record` of the
        network's info, each unit's record, the default threshold)."""
        out = {**self.record(getattr(self, "info", None) or {})}
        if record.units:
            out["units"] = record.units
        out["default_threshold"] = 0.0
        return out

    def fold_entry(self, rec):
        """settings.json's entry of one (fold, AU) record (:func:`classify.learn.loop.per_au`):
        counts, then its unit's file, output, threshold, validation metric and notes, or the
        AU's error."""
        e = {k: rec[k] for k in ("n_train", "n_train_pos", "n_val", "n_val_pos")}
        if rec["fit"] is None:
            e["error"] = rec["error"]
            return e
        unit = rec["unit"]
        e.update(unit=unit.name, model_file=f"{unit.name}.safetensors",
                 output=unit.aus.index(rec["au"]), threshold=rec["fit"].threshold,
                 val_f1=rec["fit"].val_f1, notes=rec["fit"].notes,
                 **{k: unit.fit[k] for k in RECORDED if k in unit.fit})
        return e

    def record(self, info):
        """More of the run's settings.json."""
        return {}

    def versions(self):
        """Library versions the run records beside featbench's."""
        import torch

        return {"torch": torch.__version__}

    def pos_weight(self, y):
        """The task's positive weight of targets ``y`` as a tensor (None: the task has none)."""
        import torch

        w = self.task.pos_weight(y)
        return None if w is None else torch.from_numpy(w)

    def step_loss(self, job, data):
        """``fit``'s ``step_loss``: the task's loss of :meth:`forward`'s scores."""
        def step_loss(net, batch):
            x, y, w = batch
            return self.task.loss(self.forward(net, x), y, w, reduction=self.reduction)

        return step_loss
