"""The per-AU classifiers featbench trains: one frozen :class:`ClassifierSpec` per name.

A classifier is an *entry* here, not a branch in the run: the fold loop of
:mod:`classify.run` asks the entry how to make, search, fit, save and load its models. Adding
one is one new module that defines its spec plus one line in :data:`_ENTRIES` (or a
:func:`register_classifier` call for a plug-in)::

    _ENTRIES = {
        "lda": "classify.estimators:LDA",
        "svm": "classify.estimators:SVM",
        "lstm": "classify.lstm:SPEC",        # a sequence classifier saved as .pt
        "toy": "classify.toy:SPEC",          # one module + this line
    }

Entries are imported on first use, so ``featbench --help`` or an ``lda`` run never imports
torch for an LSTM.

What every run saves per AU (``results/<ds>/models/<run>/AU01.joblib``) is the fitted model
*with its decision threshold inside* (:class:`classify.estimators.ThresholdedClassifier`), so
``load_run_models(...)[fold][au].predict(X)`` reproduces the run's test decisions.
"""

import importlib
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

from featbench.core.errors import (FeatbenchError, MissingRunError, StoreError, UsageError,
                                   did_you_mean)
from featbench.core.workspace import Workspace


def save_joblib(model, path):
    """Save ``model`` with joblib (the default of every entry)."""
    import joblib

    joblib.dump(model, path)


def load_joblib(path):
    """Load a model saved by :func:`save_joblib`."""
    import joblib

    return joblib.load(path)


@dataclass(frozen=True)
class ClassifierSpec:
    """How featbench makes, searches, fits, saves and loads one kind of per-AU classifier.

    Attributes
    ----------
    name : str
        The ``--clf`` value and the ``clf`` part of the run name.
    make : callable
        ``make(*, class_weight, shrinkage, seed, n_samples, n_features, **params)`` -> an unfitted
        ``Pipeline([("scale", ...), ("clf", ...)])``; options it has no use for are ignored.
    search_space : dict
        ``{parameter: candidates}`` chosen per AU by F1 on the validation subjects (empty: none).
        Each chosen value becomes a column of the run's table and an entry in settings.json.
    default_params : dict
        The parameters used when validation cannot score the search (no positive there).
    needs_sequences : bool
        The entry classifies sequences of frames, not rows (its codes are read into memory).
    fit : callable, optional
        ``fit(spec, X_train, y_train, X_val, y_val, *, class_weight, tune_threshold, X_thr,
        y_thr, seed)`` -> :class:`classify.estimators.AUFit` whose ``model`` has
        ``decision_function`` and ``predict`` (threshold inside). Default:
        :func:`classify.estimators.fit_au`.
    fit_streamed : callable, optional
        The fit for codes too large for memory, read from the feature file in blocks
        (:func:`classify.scale.fit_streamed` for the SVM); None: always :attr:`fit`.
    train_jobs : callable, optional
        Trains every (fold, AU) job of a run itself, instead of one :attr:`fit` per job
        (sequence classifiers: :func:`classify.lstm.run_jobs`); returns the run's result dicts.
    save_fits : callable, optional
        ``save_fits(folder, splits, by, au_list)`` -> ``{(fold, au): settings entry}``: writes the
        models itself (one file per network); None: :attr:`save` per AU.
    options : callable, optional
        ``options(value)`` -> the entry's own settings (a dataclass with ``tag()``) from None, a
        dict or itself; stored under the entry's name in settings.json.
    save, load : callable
        ``save(model, path)`` and ``load(path)``; default joblib.
    suffix : str
        The model file's suffix (``.joblib``; ``.pt`` for torch models).
    convergence_note : str, optional
        The note recorded when the fit raised scikit-learn's ``ConvergenceWarning``.
    solver, streamed_solver : str
        The solver named in settings.json (default: the entry's name).
    help : str
        One line for ``--help`` and error messages.
    """

    name: str
    make: Optional[Callable] = None
    search_space: dict = field(default_factory=dict)
    default_params: dict = field(default_factory=dict)
    needs_sequences: bool = False
    fit: Optional[Callable] = None
    fit_streamed: Optional[Callable] = None
    train_jobs: Optional[Callable] = None
    save_fits: Optional[Callable] = None
    options: Optional[Callable] = None
    save: Callable = save_joblib
    load: Callable = load_joblib
    suffix: str = ".joblib"
    convergence_note: Optional[str] = None
    solver: str = ""
    streamed_solver: str = ""
    help: str = ""

    def fit_au(self, *args, **kw):
        """Fit one AU with this entry's ``fit`` (default :func:`classify.estimators.fit_au`)."""
        if self.fit is not None:
            return self.fit(self, *args, **kw)
        from classify.estimators import fit_au

        return fit_au(self, *args, **kw)

    def model_file(self, au, fold=None):
        """Return the file name of ``au``'s model (``AU01.joblib``; ``AU01-<fold>.joblib`` per fold)."""
        return f"{au}{self.suffix}" if fold is None else f"{au}-{fold}{self.suffix}"


#: name -> "module:attribute" of its ClassifierSpec, imported on first use
_ENTRIES = {
    "lda": "classify.estimators:LDA",
    "svm": "classify.estimators:SVM",
    "lstm": "classify.lstm:SPEC",
}
#: names reserved for entries being built, with what to say meanwhile (remove when adding the entry)
_PLANNED = {}
_LOADED = {}


def register_classifier(spec, *, replace=False):
    """Add ``spec`` to the registry; a name already taken raises unless ``replace``."""
    if not replace and (spec.name in _ENTRIES or spec.name in _LOADED):
        raise ValueError(f"classifier {spec.name!r} is already registered")
    _LOADED[spec.name] = spec
    return spec


def unregister_classifier(name):
    """Remove a classifier added by :func:`register_classifier` (tests, plug-ins)."""
    _LOADED.pop(name, None)


def list_classifiers():
    """Return the registered names, the built-in entries first."""
    return list(dict.fromkeys(list(_ENTRIES) + list(_LOADED)))


def get_classifier(name):
    """Return the :class:`ClassifierSpec` called ``name``.

    Raises
    ------
    UsageError
        An unknown name (with the closest one and the list) or one still being built.
    """
    if isinstance(name, ClassifierSpec):
        return name
    if name in _LOADED:
        return _LOADED[name]
    if name in _ENTRIES:
        module, _, attr = _ENTRIES[name].partition(":")
        spec = getattr(importlib.import_module(module), attr)
        if spec.name != name:
            raise ValueError(f"registry entry {name!r} points at the spec of {spec.name!r}")
        return _LOADED.setdefault(name, spec)
    if name in _PLANNED:
        raise UsageError(_PLANNED[name])
    raise UsageError(did_you_mean(str(name), tuple(list_classifiers()) + tuple(_PLANNED),
                                  what="classifier"))


def check_clf(clf):
    """Raise :class:`UsageError` unless ``clf`` names a classifier of the registry."""
    get_classifier(clf)


def load_run_models(workspace, dataset, run):
    """Return the saved per-AU models of a run: ``{fold name: {au: model}}``.

    Each model carries the threshold its run chose (``model.threshold``), so
    ``model.predict(X)`` gives the run's decisions on the codes ``X`` of the same network
    (and region) the run classified; ``model.decision_function(X)`` its scores. A model saved
    before thresholds were kept inside is wrapped with the threshold of ``settings.json``.
    Sequence entries give what their ``load`` returns (the LSTM: ``(network, saved dict)``,
    thresholds inside the dict; :func:`classify.lstm.score_sequences` scores it).

    Parameters
    ----------
    workspace : Workspace or path
    dataset : str
    run : str or RunKey

    Raises
    ------
    MissingRunError
        The run has no model folder (the message names the classify command).
    StoreError
        ``settings.json`` or a model file is unreadable.
    """
    from classify.estimators import ThresholdedClassifier

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    folder = ws.models_dir(dataset, str(run))
    settings_path = folder / "settings.json"
    if not settings_path.exists():
        raise MissingRunError(f"{folder}: no saved models of run {run} for {dataset} (train them "
                              f"with: featbench classify ... --dataset {dataset})")
    try:
        settings = json.loads(settings_path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{settings_path}: unreadable settings ({exc})") from None
    spec = get_classifier(settings["clf"])
    models, files = {}, {}
    for fold in settings["folds"]:
        per_au = models.setdefault(fold["name"], {})
        for au, entry in fold["aus"].items():
            if "model_file" not in entry:
                continue  # an AU the run could not train (its error is in settings.json)
            name = entry["model_file"]
            if name not in files:  # a multilabel network serves several AUs: loaded once
                files[name] = _load_model(spec, folder / name)
            model = files[name]
            if not spec.needs_sequences and not hasattr(model, "threshold"):
                model = ThresholdedClassifier.from_fitted(model, entry.get("threshold", 0.0))
            per_au[au] = model
    return models


def _load_model(spec, path):
    try:
        return spec.load(path)
    except FeatbenchError:
        raise
    except Exception as exc:  # any loader's failure is this file's
        raise StoreError(f"{path}: cannot load the {spec.name} model ({type(exc).__name__}: {exc})") from None
