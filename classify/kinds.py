"""The one registry of run kinds: how each kind of run trains, saves and loads into one scorer.

A run kind (``lda``, ``svm``, ``lstm``, ``ft``, ``transfer``, ``vote``...) is a frozen
:class:`RunKind`. Every piece of featbench that must know what a run is asks it here:

``train``
    ``"module:function"`` of ``function(workspace, dataset, ...)`` -> the run's result dict
    (``run``, ``models_dir``...): what ``featbench classify`` / ``finetune`` / ``transfer`` /
    ``ensemble`` call (:meth:`RunKind.trainer` imports it). ``trained_by`` names the command.
    Kinds that classify codes per AU hold their estimator (:attr:`RunKind.estimator`, a
    :class:`classify.estimators.ClassifierSpec` or :class:`classify.intensity.RegressorSpec`)
    and train through :func:`classify.run.classify_run`.
``method``
    ``method(plan, inputs)`` -> the :class:`~classify.learn.method.Method` the one driver
    (:func:`classify.driver.execute`) trains a run of this kind on codes with.
``save``
    ``save(folder, record)`` writes the run's model into ``folder`` through
    :mod:`featbench.core.modelfile` (a manifest + safetensors, never a pickle;
    :func:`write_run_model`) from the run's :class:`~classify.learn.writer.RunRecord` (the
    writer calls it inside the run folder's atomic swap, then writes settings.json there).
``load``
    ``load(model_file)`` -> a :class:`classify.infer.RunModel`: codes (or faces, through the
    network it carries) -> scores + decisions, exactly as the run decided its test frames,
    through the one loader (:func:`classify.loaders.load_units`). :func:`load_scorer`
    dispatches on the manifest's ``kind``.

Entries are imported on first use (``"module:attribute"``), so ``featbench --help`` or an
``lda`` run never imports torch for an LSTM; a kind's training parts may be named the same way
(:class:`featbench.core.registry.Lazy`), so that loading a run imports no training module.

The one registry suffices for classifiers and regressors too: a per-AU classifier or regressor
*is* a run kind (its :class:`~classify.estimators.ClassifierSpec` or
:class:`~classify.intensity.RegressorSpec` is the kind's ``estimator``), and ``featbench classify
--clf`` takes the kinds whose ``trained_by`` is ``classify``. Adding one is
``register_kind(estimator_kind(spec))`` (or ``regressor_kind(spec)``,
:mod:`classify.basekinds`); a new learned method is one module (its method and save) plus its
kind (:mod:`classify.netkinds`: its loading on the inference side) and one lazy entry in
:data:`KINDS` (or one :func:`register_kind` call for a plug-in).

The built-in kinds: ``lda``, ``svm``, ``ridge``, ``svr`` and ``vote`` in
:mod:`classify.basekinds`; ``lstm``, ``ft`` and ``transfer`` in :mod:`classify.netkinds`. This
module imports none of them (it is what their trainers write through, and what ``featbench
--help`` lists).
"""

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from featbench.core.align import read_cache_info
from featbench.core.datasets import training_data as describe_training_data
from featbench.core.errors import FeatbenchError, StoreError, UsageError, did_you_mean
from featbench.core.modelfile import create_manifest, write_model
from featbench.core.registry import Registry, resolve


@dataclass(frozen=True)
class RunKind:
    """One kind of run: how it trains, saves and loads into a :class:`~classify.infer.RunModel`.

    Attributes
    ----------
    name : str
        The ``clf`` part of run names (``RunKey.clf``) and the manifest's ``kind``.
    load : callable
        ``load(model_file)`` -> RunModel (:class:`featbench.core.modelfile.ModelFile` in).
    save : callable, optional
        ``save(folder, record)`` (a :class:`~classify.learn.writer.RunRecord`) -> per-(fold,
        AU) settings entries or None (the vote's: ``save(folder, trained, fields)``).
    train : str
        ``"module:function"`` of the function that trains a run of this kind
        (:meth:`trainer`).
    trained_by : str
        The featbench command that trains it (``classify``, ``finetune``, ``transfer``,
        ``ensemble``): ``featbench classify --clf`` takes the ``classify`` kinds.
    command : str
        The command that trains it, for messages (``featbench classify --clf svm``).
    estimator : classify.estimators.ClassifierSpec, optional
        Kinds whose runs fit one classifier per AU on frame codes (fitted by
        :func:`classify.run.classify_run`).
    method : callable, optional
        ``method(plan, inputs)`` -> the :class:`~classify.learn.method.Method` that trains a
        run of this kind on codes (:class:`classify.driver.CodeInputs`) through the one loop;
        the kinds ``featbench classify`` trains have one.
    options : callable, optional
        ``options(value)`` -> the kind's own settings (a dataclass with ``tag()``) from None, a
        dict or itself; stored under the kind's name in settings.json.
    inputs : {"codes", "faces", "runs"}
        What its scorer reads: codes of a named network, faces (it carries its network), or
        other runs (a vote).
    task : str
        The task a run of this kind learns unless told otherwise (its name is then no tag).
    tasks : tuple of str, optional
        The tasks it can learn (None: any registered task: the learned methods).
    balance : bool
        Whether its training rows are balanced by default (``--balance`` / ``--no-balance``).
    streams : bool
        It fits codes read from the feature file in blocks when they exceed the memory budget.
    help : str
        One line for ``--help`` and error messages.
    spec : classify.modelcheck.KindSpec, optional
        What its model file must hold (tensors, settings, tasks), checked before it loads
        (:func:`classify.modelcheck.check_model`); None: the manifest's schema only.
    """

    name: str
    load: Callable
    save: Optional[Callable] = None
    train: str = ""
    trained_by: str = ""
    command: str = ""
    estimator: Any = None
    method: Optional[Callable] = None
    options: Optional[Callable] = None
    inputs: str = "codes"
    task: str = "occurrence"
    tasks: Optional[tuple] = None
    balance: bool = True
    streams: bool = False
    help: str = ""
    spec: Any = None

    def trainer(self):
        """Return the function that trains a run of this kind (imported now)."""
        return resolve(self.train)

    def saver(self):
        """Return the function that writes a run of this kind."""
        return self.save

    def learns(self, task):
        """True when a run of this kind can learn ``task`` (a :class:`Task`)."""
        return self.tasks is None or task.name in self.tasks

    def task_tag(self, task):
        """The run-name tag of ``task``: its name, unless it is the kind's own task."""
        return None if task.name == self.task else task.name


# --- the registry ---------------------------------------------------------------------------
#: name -> RunKind (:class:`featbench.core.registry.Registry`); the built-ins are lazy
#: ``"module:attribute"`` entries, imported on first use, with the command that trains them
KINDS = Registry("run kind")
for _name, _target, _by in (("lda", "classify.basekinds:LDA", "classify"),
                            ("svm", "classify.basekinds:SVM", "classify"),
                            ("lstm", "classify.netkinds:LSTM", "classify"),
                            ("ft", "classify.netkinds:FT", "finetune"),
                            ("transfer", "classify.netkinds:TRANSFER", "transfer"),
                            ("vote", "classify.basekinds:VOTE", "ensemble"),
                            ("ridge", "classify.basekinds:RIDGE", "classify"),
                            ("svr", "classify.basekinds:SVR", "classify")):
    KINDS.lazy(_name, _target, trained_by=_by)


def register_kind(kind, *, replace=False):
    """Add ``kind`` to the registry; a name already taken raises unless ``replace``."""
    return KINDS.add(kind.name, kind, replace=replace)


def unregister_kind(name):
    """Remove a kind added by :func:`register_kind` (tests, plug-ins)."""
    KINDS.remove(name)


def list_kinds(*, trained_by=None):
    """Return the registered names, built-in entries first.

    ``trained_by="classify"``: only the kinds that command trains (``featbench classify
    --clf``'s choices; names only, no entry is imported for the built-ins).
    """
    return KINDS.names(trained_by=trained_by) if trained_by else KINDS.names()


def get_kind(name):
    """Return the :class:`RunKind` called ``name``.

    Raises
    ------
    UsageError
        An unknown name (with the closest one and the list).
    """
    if isinstance(name, RunKind):
        return name
    kind = KINDS.get(name)
    if kind.name != name:
        raise ValueError(f"registry entry {name!r} points at the kind {kind.name!r}")
    return kind


def classifier_kind(name):
    """Return the kind ``featbench classify --clf name`` trains; UsageError for any other name."""
    if name not in list_kinds():
        raise UsageError(did_you_mean(str(name), tuple(list_kinds(trained_by="classify")),
                                      what="classifier"))
    kind = get_kind(name)
    if kind.trained_by != "classify" or kind.method is None:
        raise UsageError(f"{name!r} runs are not trained by featbench classify ({kind.command or 'see --help'}); "
                         f"--clf takes {', '.join(list_kinds(trained_by='classify'))}")
    return kind


# --- saving and loading a run -----------------------------------------------------------------
def cache_alignment(workspace, dataset):
    """The alignment settings of the workspace's aligned-face cache of ``dataset`` ({} if none).

    What a run that reads aligned faces (``ft``, ``transfer``) records in its manifest, so that
    ``featbench predict`` aligns new faces the same way.
    """
    info = read_cache_info(workspace.aligned_path(dataset)) or {}
    try:
        return dict(json.loads(info.get("settings") or "{}"))
    except (TypeError, ValueError):
        return {}


def training_data(dataset):
    """The manifest's ``training_data`` of a run trained on ``dataset`` (one rule for every kind:
    :func:`featbench.core.datasets.training_data`)."""
    return describe_training_data(str(dataset))


@dataclass(frozen=True)
class ModelFields:
    """What a run's manifest says of it beside its kind's own settings and tensors: its name,
    AUs, the weights identity of the network it reads, the inputs' preprocessing, the data set
    it was trained on (of a joined ``X+Y`` cross run: ``X``), its task (a vote: its members)."""

    run: Any
    aus: list
    weights: Any
    preprocessing: dict
    dataset: str
    task: str = "occurrence"
    members: Optional[list] = None


def write_run_model(folder, kind, folds, settings, tensors, fields):
    """Write a run's model folder: the manifest (:func:`~featbench.core.modelfile.create_manifest`
    of ``fields``, a :class:`ModelFields`) and its tensor groups (``{group: {name: array}}``);
    what a kind's ``save`` calls."""
    manifest = create_manifest(run=fields.run, kind=kind, aus=fields.aus, folds=folds,
                               weights=fields.weights, preprocessing=fields.preprocessing,
                               training_data=training_data(fields.dataset), task=fields.task,
                               settings=settings, members=fields.members)
    return write_model(folder, manifest, tensors)


def record_fields(record, *, preprocessing=None):
    """The :class:`ModelFields` of a trained run (:class:`classify.learn.writer.RunRecord`): its
    name, AUs, weights identity, the inputs' preprocessing (unless the kind says its own),
    training data set and task."""
    return ModelFields(run=record.run, aus=record.aus, weights=record.meta["weights"],
                       preprocessing=(record.inputs.preprocessing(record.plan) if preprocessing is None
                                      else preprocessing),
                       dataset=record.plan.trained_on, task=record.plan.task.name)


def load_scorer(model_file):
    """Return the :class:`~classify.infer.RunModel` of an opened model file, by its kind.

    Raises
    ------
    UsageError
        A kind this featbench does not know.
    StoreError
        A file whose content its kind cannot read (the message names the file).
    """
    name = model_file.manifest["kind"]
    try:
        kind = get_kind(name)
    except UsageError:
        raise UsageError(f"{model_file.path}: a run of kind {name!r}, which this featbench does "
                         f"not know (it knows {', '.join(list_kinds())})") from None
    try:
        return kind.load(model_file)
    except FeatbenchError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
        raise StoreError(f"{model_file.path}: cannot load the {name} run "
                         f"{model_file.manifest.get('run')} ({type(exc).__name__}: {exc})") from None


# --- helpers of the kinds' save ------------------------------------------------------------
def fold_results(record):
    """Yield ``(fold index, fold name, au, fit)`` of a trained run's fitted AUs (``fit`` not None).

    ``record`` is the run's :class:`classify.learn.writer.RunRecord` (a kind's ``save`` gets
    it): its ``by[(fold index, au)]["fit"]`` is an :class:`~classify.estimators.AUFit` (an
    estimator's; an intensity regressor's ``IntensityFit``) or None (no model for the AU).
    """
    for fi, fname in enumerate(s.name for s in record.splits):
        for au in record.aus:
            fit = record.by[(fi, au)]["fit"]
            if fit is not None:
                yield fi, fname, au, fit


def unit_group(stem, fold, n_folds):
    """A unit's tensor group: ``AU01`` (one fold) or ``AU01-<fold>``."""
    return stem if n_folds == 1 else f"{stem}-{fold}"


def member_fingerprint(manifest):
    """What identifies a member's trained state: its date and tensor digests (None: no model)."""
    if manifest is None:
        return None
    return {"created": manifest.get("created"),
            "tensors": {g: t.get("sha256") for g, t in sorted(manifest.get("tensors", {}).items())}}
