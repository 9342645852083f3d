"""What one run trains, decided once: the :class:`RunPlan`, and the one function that names runs.

Every command that trains (``featbench classify``, ``finetune``, ``transfer``, ``run``) builds
one :class:`RunPlan` and hands it to the one driver (:func:`classify.driver.execute`). The plan
holds what makes the run what it is:

============== ===================================================================================
field          what
============== ===================================================================================
data           the frame table(s) trained and tested on (:class:`PlanData`: one data set today;
               ``train`` and ``test`` may be two, for a cross-data-set protocol)
inputs         what the method reads: ``codes`` of a network's feature file or aligned ``faces``
model, region  the network (whose codes, or which is trained) and the face region
task           the :class:`~classify.task.Task` (targets, loss, metric, decision, columns)
protocol       the split protocol and its folds (``splits``, made once from the data)
kind           the :class:`~classify.kinds.RunKind`, and its ``options`` (the kind's own settings)
key            the run's :class:`~featbench.core.identity.RunKey`, from :func:`run_key` only
meta           the run's columns of ``summary.csv`` (settings and provenance), in their order
============== ===================================================================================

:func:`run_key` is the one place a run's name is computed from its settings: a tag for each
non-default setting, in one order (``protocol``, label threshold ``i<n>``, ``thr``, ``nobal``,
``cw``, ``s<seed>``, the AU subset, the kind's own ``extra``, calibration, the task's tag).
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from featbench.core.aus import REGIONS, au_name
from featbench.core.calibrate import calibration_tag
from featbench.core.errors import UsageError
from featbench.core.identity import RunKey
from featbench.core.splits import protocol_aus

#: the ``--region`` values of a run (``auto``: each AU its own region)
REGION_CHOICES = ("full",) + REGIONS + ("auto",)

#: the protocol's intensity threshold (PROTOCOL.md: present when intensity >= 2)
DEFAULT_LABEL_THRESHOLD = 2


def resolve_aus(table, protocol, aus=None, *, task=None):
    """Return the AUs a run scores: ``aus`` if given, else the protocol's AUs the table labels.

    Default: :func:`featbench.core.splits.protocol_aus` (``paper`` -> the table's AUs among
    DISFA's 12, BP4D's 12 on BP4D; ``literature`` -> among the 8 of the 3-fold DISFA
    literature, BP4D's 12 on BP4D; other protocols -> all of the table's AUs), then those that
    ``task`` (a :class:`~classify.task.Task`; None: occurrence) has targets for — an
    intensity run on BP4D scores the 5 AUs its intensity files code.

    Raises
    ------
    UsageError
        ``aus`` names an AU the table does not label, or one the task has no targets for.
    """
    if aus:
        names = [au_name(a) for a in (aus.split(",") if isinstance(aus, str) else aus) if str(a).strip()]
        unknown = [a for a in names if a not in table.aus]
        if unknown:
            raise UsageError(f"{table.dataset} does not label {', '.join(unknown)} "
                             f"(it labels {', '.join(table.aus)})")
        names = list(dict.fromkeys(names))
    else:
        names = protocol_aus(table, protocol)
    if task is None:
        return names
    kept = task.labelled_aus(table, names)
    if len(kept) < len(names) and (aus or not kept):
        have = task.labelled_aus(table, table.aus)
        missing = [a for a in names if a not in kept]
        raise UsageError(f"{table.dataset} gives no {task.name} labels for {', '.join(missing)} "
                         f"(it has them for {', '.join(have) or 'no AU'}): choose --aus among those")
    return kept


def run_tag(*, protocol="paper", tune_threshold=False, balance=True, class_weight=None, seed=0,
            aus=None, default_aus=None, extra=None, label_threshold=None, calibrate="none"):
    """Return the run-name tag of the non-default settings (None for the defaults).

    ``literature``, ``kfold5``, ``own`` (``protocol`` None: not tagged); ``i3`` (labels from
    another intensity threshold than the protocol's 2: ``--threshold 3``); ``thr`` (tuned
    thresholds); ``nobal``; ``cw`` (balanced class weights); ``s<seed>``; ``au1+2`` for a subset
    of AUs; ``extra`` (the kind's own non-default settings, e.g. the LSTM's ``ml``); ``calmed`` /
    ``calneu`` (person calibration, ``featbench.core.calibrate``); joined with ``-``.
    """
    parts = []
    if protocol not in (None, "paper"):
        parts.append(protocol.replace(":", ""))
    if label_threshold not in (None, DEFAULT_LABEL_THRESHOLD):
        parts.append(f"i{int(label_threshold)}")
    if tune_threshold:
        parts.append("thr")
    if not balance:
        parts.append("nobal")
    if class_weight:
        parts.append("cw")
    if seed:
        parts.append(f"s{seed}")
    if aus is not None and default_aus is not None and list(aus) != list(default_aus):
        parts.append("au" + "+".join(str(int(a[2:])) for a in aus))
    if extra:
        parts.append(extra)
    if calibration_tag(calibrate):
        parts.append(calibration_tag(calibrate))
    return "-".join(parts) or None


def run_key(model, region, clf, *, variant=(), after=(), task_tag=None, **settings):
    """Return the :class:`RunKey` of a run: ``variant`` tags first (how a network was trained:
    ``ml``, ``fc67``, ``nostage1``...), then :func:`run_tag`'s, then ``after`` (``--tag``), then
    the task's tag when the task is not the kind's own (:attr:`classify.task.Task.tag`)."""
    tag = run_tag(**settings)
    tags = (tuple(variant) + (tuple(tag.split("-")) if tag else ()) + tuple(a for a in after if a)
            + ((task_tag,) if task_tag else ()))
    return RunKey(model, region, clf, tags)


@dataclass(frozen=True)
class PlanData:
    """The frames a run trains and tests on, and the protocol's folds over them.

    ``table`` is the one frame table of today's protocols; a cross-data-set protocol adds a
    ``test`` table beside it (the folds then name the parts of each). The folds are ``splits``
    when given, else made once from ``protocol`` and ``seed`` when first asked for (after the
    inputs are checked: a damaged feature file is named before a protocol the data cannot take).
    """

    table: Any
    given_splits: Optional[tuple] = None
    protocol: str = "paper"
    seed: int = 0
    test: Any = None

    @property
    def dataset(self):
        return self.table.dataset

    @property
    def trained_on(self):
        """The data set the folds train on: ``X`` of a joined ``X+Y`` under ``cross``
        (:func:`featbench.core.datasets.joined.trained_on`), else :attr:`dataset`."""
        from featbench.core.datasets.joined import trained_on

        return trained_on(self.dataset, self.splits)

    @property
    def splits(self):
        if self.given_splits is None:
            from featbench.core.splits import make_splits

            object.__setattr__(self, "given_splits",
                               tuple(make_splits(self.table, self.protocol, seed=self.seed)))
        return self.given_splits


@dataclass(frozen=True)
class RunPlan:
    """What one run trains (see the module docstring); made once, read by the driver.

    ``common`` holds the settings every kind shares (``tune_threshold``, ``balance``,
    ``class_weight``, ``calibrate``, ``n_jobs``, ``scheduler``...); ``options`` the kind's own.
    """

    workspace: Any
    data: PlanData
    kind: Any
    task: Any
    model: str
    region: str
    protocol: str
    aus: tuple
    seed: int
    key: RunKey
    meta: dict
    inputs: str = "codes"
    options: Any = None
    common: dict = field(default_factory=dict)
    progress: bool = True
    scheduler: Optional[str] = None

    @property
    def dataset(self):
        return self.data.dataset

    @property
    def trained_on(self):
        """The data set the run's manifest names as its training data (:class:`PlanData`)."""
        return self.data.trained_on

    @property
    def run(self):
        """The run's name (``str(self.key)``), as folders and tables spell it."""
        return str(self.key)

    @property
    def table(self):
        return self.data.table

    @property
    def splits(self):
        return self.data.splits

    def setting(self, name, default=None):
        """One of the shared settings (:attr:`common`)."""
        return self.common.get(name, default)
