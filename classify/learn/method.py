"""The method contract: what a learned method says (it scores through :mod:`classify.infer`).

A method (fine-tuning: :class:`classify.finetune.FinetuneMethod`, transfer's stage 2:
:class:`classify.transfer.TransferMethod`, the LSTM: :class:`classify.lstm.LSTMMethod`) is one
class with the hooks below; :mod:`classify.learn.loop` trains its units fold by fold through
:func:`classify.training.fit`, the task (:mod:`classify.learn.task`) supplies loss, metric and
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

Attributes: ``kind`` (the run kind, ``RunKey.clf``), ``task``, ``reduction`` (the loss over a
batch: ``"mean"``, or ``"sum"`` for the paper's LSTM), ``tune`` (thresholds tuned on
validation), ``workers`` (units trained at once, in processes).
"""

from dataclasses import dataclass, field

import numpy as np

from classify.learn.task import OCCURRENCE
from classify.training import TrainConfig


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


class Method:
    """The base of every learned method (see the module docstring)."""

    kind = ""
    reduction = "mean"
    tune = False
    workers = 1
    #: the summary columns a predictions file records (:mod:`classify.learn.facerun`)
    prediction_attrs = ("model", "region", "clf", "weights", "protocol", "dataset")
    #: scores and thresholds are reported as probabilities (:mod:`classify.learn.facekind`)
    probabilities = False

    def __init__(self, task=OCCURRENCE):
        self.task = task

    def units(self, aus):
        return [Unit("model", tuple(aus))]

    def unit_data(self, job):
        raise NotImplementedError

    def build(self, job, data):
        raise NotImplementedError

    def train_config(self, job):
        return TrainConfig()

    def train_batches(self, job, data):
        raise NotImplementedError

    def forward(self, net, x):
        return net(x)

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

    def row_extra(self, record):
        """The method's own per-AU columns of the run's table."""
        return {}

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


def counts(y, rows, task=OCCURRENCE):
    """Per column of ``y``: ``(n_train, n_train_pos, n_val, n_val_pos)`` over labelled rows
    (positives: what ``task`` counts as present)."""
    out = []
    for j in range(y.shape[1]):
        c = []
        for part in ("train", "validation"):
            v = y[rows[part], j]
            c += [int((v >= 0).sum()), int(task.positive(v).sum())]
        out.append(tuple(c))
    return out


def trainable(counts_):
    """Indices of the columns with positives and negatives among the training rows."""
    return [j for j, (n, p, _, _) in enumerate(counts_) if 0 < p < n]
