"""What a learned network is asked to predict: the :class:`Task` (targets, loss, metric, decision).

Every learned method (fine-tuning, the transfer stages, the LSTM) trains through the one loop
(:func:`classify.training.fit`) and the one fold x unit loop (:mod:`classify.learn.loop`); what
changes from one *task* to another lives in one class here, so a new task is one new class.

The Task API
------------
A task sees arrays, never files. ``y`` is an (n, k) float array of targets, one column per AU
(or one column of class indices); a negative value means *unlabelled*: it adds no loss, no
gradient, no metric. ``scores`` is the (n, k) array the network gives for the same rows
(occurrence: one logit per AU).

``targets(table, aus) -> y``
    The data set's targets of ``aus`` (occurrence: the 1 / 0 / -1 labels).
``balance(y_col, rng) -> indices``
    The rows of one column that one balanced draw keeps (training batches, validation rows).
``pos_weight(y) -> (k,) float32 or None``
    The weight of a positive target in the loss, from the targets the loss is computed on.
``loss(scores, y, weight=None, *, reduction="mean") -> scalar tensor``
    The training loss (torch tensors; ``reduction="sum"`` sums over labelled entries).
``validate(y, scores) -> {"val_score", "val_loss"}``
    The validation metric that chooses the epoch (higher is better) and the validation loss.
``settle(y, scores, *, tune) -> Settled``
    Per column: how a score becomes a decision (thresholds), chosen on validation rows only,
    the validation metric at it, and notes.
``decide(scores, thresholds) -> int8``
    The decisions of scores (one column or all: thresholds broadcast).
``metrics(y, decisions, scores) -> dict``
    One column's test metrics (the per-AU row of the run's table; ``METRICS`` names the ones
    averaged over folds, the first being the headline).
``positive(y) -> bool``
    Which targets count as *present* (the counts a unit reports; whether it can train).
``output(scores) -> scores``
    A network's scores as the run reports and stores them (intensity: clipped to 0-5).
``stored(y) -> {"labels": ..., ...}``
    What a predictions file keeps of the targets (``labels`` are always occurrence 1 / 0 / -1).

A task is known by its ``name`` (recorded in every run's manifest): :func:`register_task` adds
one, :func:`get_task` finds it (``featbench finetune --task NAME``).

:class:`Occurrence` is the task of every run so far (masked BCE, F1 at a threshold settled by
:func:`classify.estimators.settle_threshold`); :class:`Expression` is transfer's stage 1
(cross-entropy over expression classes, accuracy); :class:`classify.intensity_task.Intensity`
is AU intensity (regression on 0-5, ICC).
"""

from dataclasses import dataclass, field

import numpy as np

from featbench.core.registry import Registry
from featbench.core.metrics import au_metrics, nanmean

from classify.estimators import DEFAULT_THRESHOLD, balance_indices, decide, settle_threshold

#: the positive-class weight rule: negatives / positives of the frames the loss sees, clipped
POS_WEIGHT_RANGE = (0.1, 10.0)


@dataclass
class Settled:
    """What :meth:`Task.settle` chose on validation: per column a threshold, its metric, notes."""

    thresholds: list
    values: list
    notes: list = field(default_factory=list)


class Task:
    """The base of every task: unlabelled targets are negative; see the module docstring."""

    name = "task"
    #: the per-AU metrics averaged over folds in a run's table (the first is the headline)
    METRICS = ()
    #: how a score becomes a decision, in words (saved with every trained network)
    decision = ""

    def labelled(self, y):
        """Boolean mask of the labelled entries of ``y``."""
        return np.asarray(y) >= 0

    def select(self, y, scores, cols):
        """The targets and scores of a unit's trainable columns ``cols`` (per-AU tasks)."""
        return np.asarray(y)[:, cols], np.asarray(scores)[:, cols]

    def unit_counts(self, y, rows):
        """Per column of ``y``: ``(n_train, n_train_pos, n_val, n_val_pos)``, and the columns a
        unit can train (positives and negatives in training)."""
        c = counts(y, rows, self)
        return c, trainable(c)

    def targets(self, table, aus):
        raise NotImplementedError

    def balance(self, y, rng):
        """All rows (a task without a notion of balance)."""
        return np.arange(len(y))

    def positive(self, y):
        return np.asarray(y) == 1

    def output(self, scores):
        return scores

    def stored(self, y):
        return {"labels": y}

    def pos_weight(self, y):
        return None

    def loss(self, scores, y, weight=None, *, reduction="mean"):
        raise NotImplementedError

    def validate(self, y, scores):
        raise NotImplementedError

    def settle(self, y, scores, *, tune):
        raise NotImplementedError

    def decide(self, scores, thresholds):
        raise NotImplementedError

    def metrics(self, y, decisions, scores=None):
        raise NotImplementedError

    def to_json(self):
        """What a manifest records of the task."""
        return {"name": self.name, "decision": self.decision}

    # --- what a run reports and how runs combine (the driver, the writer, votes, predict) ------
    #: the first columns of a run's per-AU table (:func:`featbench.core.results.run_table`)
    COLUMNS = ("au", "f1", "accuracy", "precision", "recall", "support", "threshold")
    #: the columns ``featbench classify`` prints per AU
    SHOWN = ("f1", "accuracy", "precision", "recall", "auc", "support", "threshold")
    #: binary decisions with a threshold of their own: ``--tune-threshold`` and class weights apply
    classes = True
    #: the OpenFace column ``featbench predict`` writes the scores in: ``AUxx_p`` (scores) or
    #: ``AUxx_r`` (an intensity 0-5)
    predict_column = "p"

    def at_threshold(self, threshold):
        """This task for a data set whose labels are present at intensity >= ``threshold``."""
        return self

    #: the task asks more of a data set than AU labels (:meth:`check_table`)
    needs_table = False

    def check_table(self, table):
        """Raise when ``table`` cannot give this task's targets (a UsageError naming what lacks)."""

    def labelled_aus(self, table, aus):
        """The AUs of ``aus`` that ``table`` gives this task's targets for (occurrence: all)."""
        return list(aus)

    def refuse_class_flags(self, flags, learner):
        """Refuse the ``(flag, given)`` pairs given that only a task with classes takes (a
        regression settles no threshold and weighs no class); ``learner``: what regresses
        instead (``--clf svr``, ``the network``). One line, exit 2."""
        from featbench.core.errors import UsageError

        given = [flag for flag, on in flags if on]
        if given and not self.classes:
            raise UsageError(f"{', '.join(given)}: not for --task {self.name} ({learner} "
                             "regresses intensities; --threshold sets its F1's cut)")

    def summary_fields(self, mean, rows):
        """The task's own columns of a run's ``summary.csv`` row, beside ``mean_f1``..."""
        return {}

    def identity(self):
        """What the task adds to a trained unit's identity (nothing for occurrence: the
        identities of runs made before tasks existed stay valid)."""
        return {"task": self.name}

    #: ``probability(scores)``: logits as probabilities (None: the task's scores are not logits)
    probability = None

    def combine(self, decisions, scores, thresholds, *, scales=None):
        """Combine stacked ``(members, n, k)`` decisions and scores of several runs (a vote's
        members, a run's folds) into ``(decisions, scores, thresholds)``."""
        raise NotImplementedError

    def vote_rows(self, first, decisions, scores, aus):
        """The per-AU rows of an ensemble's table from its combined ``decisions`` and ``scores``
        (n, k) (``first``: the first member's aligned predictions: labels, folds...)."""
        raise NotImplementedError

    def vote_meta(self):
        """The task's own columns of an ensemble's summary row."""
        return {}

    def describe(self, mean, meta, defined):
        """The head of the one-line summary of a run's mean row (``featbench classify``)."""
        return "mean F1 "

    def title(self):
        """How the task is named in a run's one-screen text (empty for occurrence)."""
        return f"{self.name}, "


class Occurrence(Task):
    """AU occurrence: per-AU binary targets, masked binary cross-entropy, F1, a threshold.

    - **loss**: binary cross-entropy of each AU's logit, over labelled entries only (mean, or
      the sum the paper's LSTM trains on), positives weighted by :meth:`pos_weight`;
    - **positive weight**: negatives / positives of the targets the loss is computed on, clipped
      to :data:`POS_WEIGHT_RANGE` (an AU without positives: the weight never applies);
    - **validation**: the mean over AUs (nan ignored) of F1 at the default threshold 0;
    - **decision**: ``score > threshold``; the threshold is 0, or with ``tune`` the F1-best one
      on the validation rows (:func:`classify.estimators.settle_threshold`, the one rule of
      every classifier).
    """

    name = "occurrence"
    METRICS = ("f1", "accuracy", "precision", "recall")
    decision = "present when score > threshold"

    def targets(self, table, aus):
        return table.labels(aus)

    def balance(self, y, rng):
        return balance_indices(y, rng)

    def pos_weight(self, y):
        y = np.asarray(y)
        npos, nneg = (y == 1).sum(axis=0), (y == 0).sum(axis=0)
        return np.clip(nneg / np.maximum(npos, 1), *POS_WEIGHT_RANGE).astype(np.float32)

    def loss(self, scores, y, weight=None, *, reduction="mean"):
        import torch

        mask = (y >= 0).float()
        w = None if weight is None else torch.as_tensor(weight).to(scores.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            scores.float(), y.clamp(min=0).float(), pos_weight=w, reduction="none")
        total = (loss * mask).sum()
        return total if reduction == "sum" else total / mask.sum().clamp(min=1)

    def validate(self, y, scores):
        import torch

        y, scores = np.asarray(y), np.asarray(scores)
        f1 = [au_metrics(y[:, j], decide(scores[:, j], DEFAULT_THRESHOLD))["f1"]
              if (y[:, j] >= 0).any() else float("nan") for j in range(y.shape[1])]
        loss = self.loss(torch.as_tensor(scores), torch.as_tensor(y, dtype=torch.float32))
        return {"val_score": nanmean(f1), "val_loss": float(loss)}

    def settle(self, y, scores, *, tune):
        y, out = np.asarray(y), Settled([], [])
        for j in range(y.shape[1]):
            keep = y[:, j] >= 0
            col = _Column()
            settle_threshold(col, y[keep, j], lambda: np.asarray(scores)[keep, j], tune)
            out.thresholds.append(float(col.threshold))
            out.values.append(float(col.val_f1))
            out.notes += col.notes
        return out

    def decide(self, scores, thresholds):
        return decide(scores, thresholds)

    def metrics(self, y, decisions, scores=None):
        return au_metrics(y, decisions, scores)

    def identity(self):
        return {}

    def probability(self, scores):
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))

    def combine(self, decisions, scores, thresholds, *, scales=None):
        """The majority vote, ties broken by scaled scores (:func:`classify.vote.majority_vote`)."""
        from classify.vote import majority_vote

        dec, sc = majority_vote(decisions, scores, thresholds, scales=scales)
        return dec, sc, np.zeros(np.shape(decisions)[-1])

    def title(self):
        return ""

    def vote_rows(self, first, decisions, scores, aus):
        """Per-AU metric rows, with the spread of F1 over folds when there are several."""
        labels, fold = first["labels"], first["fold"]
        folds = np.unique(fold)
        rows = []
        for a, au in enumerate(aus):
            if np.isnan(scores[:, a]).all():  # no member has a classifier for this AU
                nan = float("nan")
                rows.append({"au": au, "f1": nan, "accuracy": nan, "precision": nan, "recall": nan,
                             "support": int((labels[:, a] == 1).sum()), "threshold": nan, "auc": nan,
                             "frames": int((labels[:, a] >= 0).sum()),
                             "note": "no member has a classifier for this AU"})
                continue
            sa = scores[:, a]
            if np.isnan(sa).any():  # frames no member voted on rank lowest for the AUC
                sa = np.where(np.isnan(sa), np.nanmin(sa) - 1, sa)
            m = au_metrics(labels[:, a], decisions[:, a], sa)
            row = {"au": au, **{k: m[k] for k in ("f1", "accuracy", "precision", "recall", "support")},
                   "threshold": 0.0, "auc": m["auc"], "frames": m["frames"]}
            if folds.size > 1:
                f1s = [au_metrics(labels[fold == k, a], decisions[fold == k, a])["f1"] for k in folds]
                row["f1_std"] = float(np.nanstd(f1s)) if not np.all(np.isnan(f1s)) else float("nan")
            rows.append(row)
        return rows


class Expression(Task):
    """Expression classes (transfer's stage 1): one class index per frame, cross-entropy,
    accuracy; the decision is the class of the largest score."""

    name = "expression"
    METRICS = ("accuracy",)
    decision = "the class with the largest score"

    def targets(self, table, classes):
        y = table.frames["expression"].map({c: i for i, c in enumerate(classes)}).fillna(-1)
        return y.to_numpy(dtype=np.int64)

    def loss(self, scores, y, weight=None, *, reduction="mean"):
        import torch

        return torch.nn.functional.cross_entropy(scores, y, reduction=reduction)

    def validate(self, y, scores):
        import torch

        if not len(y):
            return {"val_score": float("nan")}
        s, t = torch.as_tensor(scores), torch.as_tensor(y)
        return {"val_loss": float(self.loss(s, t)),
                "val_score": float((s.argmax(1) == t).float().mean())}

    def decide(self, scores, thresholds=None):
        return np.asarray(scores).argmax(1)

    def select(self, y, scores, cols):
        return y, scores  # one column of class indices: the scores are all classes'

    def unit_counts(self, y, rows):
        """One "column": labelled training and validation frames; trainable with two classes."""
        y = np.asarray(y)
        tr, va = y[rows["train"]], y[rows["validation"]]
        c = [(int((tr >= 0).sum()), 0, int((va >= 0).sum()), 0)]
        return c, [0] if np.unique(tr[tr >= 0]).size > 1 else []

    def settle(self, y, scores, *, tune):
        """No decision rule to settle (the largest score's class); the validation accuracy."""
        return Settled([float("nan")], [self.validate(y, scores).get("val_score", float("nan"))])

    def metrics(self, y, decisions, scores=None):
        return {"accuracy": float(np.mean(np.asarray(decisions) == np.asarray(y))) if len(y)
                else float("nan")}


def counts(y, rows, task=None):
    """Per column of ``y``: ``(n_train, n_train_pos, n_val, n_val_pos)`` over labelled rows
    (positives: what ``task`` counts as present)."""
    task = OCCURRENCE if task is None else task
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


class _Column:
    """The fields :func:`classify.estimators.settle_threshold` sets, for one column."""

    def __init__(self):
        self.threshold, self.val_f1, self.notes = DEFAULT_THRESHOLD, float("nan"), []


#: the task of every occurrence run
OCCURRENCE = Occurrence()

#: the task of transfer's stage 1
EXPRESSION = Expression()


# --- the registry of tasks ---------------------------------------------------------------------
#: name -> Task (:class:`featbench.core.registry.Registry`); ``featbench classify / finetune /
#: transfer --task NAME`` take any name here
TASKS = Registry("task")


def register_task(task, *, replace=False):
    """Add ``task`` (an instance) under ``task.name``; a name already taken raises unless ``replace``."""
    return TASKS.add(task.name, task, replace=replace)


def unregister_task(name):
    """Remove a task added by :func:`register_task` (tests, plug-ins); the built-ins stay."""
    TASKS.remove(name)


def list_tasks():
    """The names of the registered tasks."""
    return TASKS.names()


def get_task(name):
    """Return the task called ``name`` (a :class:`Task` is returned as it is).

    Raises
    ------
    UsageError
        An unknown name, with the closest one and the list.
    """
    if isinstance(name, Task):
        return name
    return TASKS.get(name or "occurrence")


TASKS.add(OCCURRENCE.name, OCCURRENCE, builtin=True)
TASKS.add(EXPRESSION.name, EXPRESSION, builtin=True)
TASKS.lazy("intensity", "classify.intensity_task:INTENSITY")
