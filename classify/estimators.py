"""Per-AU binary classifiers on CNN codes, following the scikit-learn estimator contract.

Every estimator is a ``Pipeline([("scale", StandardScaler()), ("clf", ...)])``, so the z-scoring
of PROTOCOL.md ("z-score each feature with the training set's mean and std") is fit on the
rows given to ``fit`` — the training subjects' — and only applied to validation and test rows.

``lda``
    LDA with Ledoit-Wolf shrinkage (scikit-learn's ``solver="lsqr", shrinkage="auto"`` model,
    solved faster by :class:`ShrinkageLDA`): shrinkage keeps the covariance of 4096-d codes
    invertible when there are fewer training frames than dimensions. A fixed ``shrinkage``
    (float or None) uses scikit-learn's ``LinearDiscriminantAnalysis`` itself.
    ``class_weight="balanced"`` becomes equal class priors (LDA has no weights).
``svm``
    A linear SVM (liblinear's ``LinearSVC``, squared hinge). Its ``C`` is chosen from
    :data:`C_GRID` by F1 on the validation subjects (:func:`fit_au`); the model kept is the one
    fit on the training rows with the best ``C``.

Each is described by a :class:`ClassifierSpec` (the ``lda`` and ``svm`` run kinds of
:mod:`classify.kinds` hold one), and what a run keeps per AU is a :class:`ThresholdedClassifier`:
the fitted pipeline with the threshold chosen on validation inside, so a loaded model's
``predict`` is the run's decision. :func:`estimator_arrays` turns one into JSON + arrays for
:mod:`featbench.core.modelfile` and :func:`estimator_from_arrays` rebuilds it from them, only
from the classes its kind names (no pickle: the skops way).

Conventions, stated once: labels are 1 (present) / 0 (absent); scores are
``decision_function`` values; a frame is called positive when its score is *greater* than the
threshold, whose default is 0 (the classifier's own decision). A tuned threshold
(:func:`best_threshold`) is chosen on validation scores, never on test.
"""

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featbench.core.metrics import au_metrics

#: the SVM's C grid, log-spaced; chosen per AU on the validation subjects
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: C used when the validation subjects cannot score the grid (no positive there)
DEFAULT_C = 1e-2
DEFAULT_THRESHOLD = 0.0


class ShrinkageLDA(ClassifierMixin, BaseEstimator):
    """Binary LDA with Ledoit-Wolf shrinkage, solved through the Woodbury identity.

    The same model as ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")`` (each
    class's covariance is Ledoit-Wolf-shrunk in its standardised coordinates, then averaged
    with the priors; ``coef_`` agrees to numerical precision, see the tests), but scikit-learn
    solves the (dims x dims) system with an SVD-based ``lstsq``: 40 s per AU at 4,096-d on one
    core, minutes at HOG's 6,084-d. The shrunk covariance is ``U.T @ U + diag(a)`` with U the
    (n, dims) scaled, class-centred rows, so with fewer frames than dimensions the solve needs
    only an (n x n) Cholesky factorisation; otherwise a (dims x dims) one.

    Parameters
    ----------
    priors : array of shape (2,), optional
        Class priors (default: the training proportions).

    Attributes
    ----------
    classes_ : array of shape (2,)
    coef_ : array of shape (1, dims)
    intercept_ : array of shape (1,)
    shrinkage_ : array of shape (2,)
        The Ledoit-Wolf shrinkage of each class's covariance.
    """

    def __init__(self, priors=None):
        self.priors = priors

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # one LDA per AU: present / absent
        return tags

    def fit(self, X, y):
        """Fit on ``X`` (n, dims) and binary ``y`` (n,); return self."""
        from scipy.linalg import cho_factor, cho_solve
        from sklearn.utils.multiclass import type_of_target
        from sklearn.utils.validation import validate_data

        X, y = validate_data(self, X, y, dtype=np.float64)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError(f"Only binary classification is supported (ShrinkageLDA: one AU); "
                             f"the type of the target is {kind}")
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(f"ShrinkageLDA is binary: needs 2 classes, got {self.classes_.size} "
                             f"class(es) {self.classes_.tolist()}")
        n, d = X.shape
        counts = np.array([(y == c).sum() for c in self.classes_], dtype=float)
        priors = counts / n if self.priors is None else np.asarray(self.priors, dtype=float)
        means = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        rows, diag, shrink = [], np.zeros(d), []
        for k, c in enumerate(self.classes_):
            Xc = X[y == c] - means[k]
            scale = Xc.std(axis=0)
            scale[scale == 0] = 1.0  # as StandardScaler: a constant feature is left unscaled
            Z = Xc / scale
            m = Z.shape[0]
            sq = np.einsum("ij,ij->i", Z, Z)
            mu = sq.sum() / (m * d)
            gram = Z @ Z.T if m <= d else Z.T @ Z  # same Frobenius norm, smaller side
            delta_ = np.sum(gram ** 2) / m ** 2
            beta = (np.sum(sq ** 2) / m - delta_) / (d * m)
            delta = (delta_ - 2 * mu * sq.sum() / m + d * mu ** 2) / d
            beta = min(beta, delta)  # as scikit-learn's ledoit_wolf_shrinkage (delta 0: one feature)
            s = 0.0 if beta == 0 else beta / delta
            shrink.append(s)
            rows.append(Xc * np.sqrt(priors[k] * (1 - s) / m))
            diag += priors[k] * s * mu * scale ** 2
        U = np.concatenate(rows)
        if U.shape[0] < d and np.all(diag > 0):
            # Woodbury: (U'U + A)^-1 M = A^-1 M - A^-1 U' (I + U A^-1 U')^-1 U A^-1 M
            AiM = means.T / diag[:, None]
            AiUt = U.T / diag[:, None]
            K = np.eye(U.shape[0]) + U @ AiUt
            sol = AiM - AiUt @ cho_solve(cho_factor(K), U @ AiM)
        else:
            cov = U.T @ U
            cov[np.diag_indices(d)] += diag
            try:
                sol = cho_solve(cho_factor(cov), means.T)
            except np.linalg.LinAlgError:
                # singular (constant features, fewer frames than dims with no shrinkage):
                # the least-squares solution, as scikit-learn's lsqr solver gives
                sol = np.linalg.lstsq(cov, means.T, rcond=None)[0]
        coef = sol.T  # (2, dims), per class as scikit-learn before its binary reduction
        intercept = -0.5 * np.einsum("ij,ij->i", means, coef) + np.log(priors)
        self.coef_ = (coef[1] - coef[0])[None, :]
        self.intercept_ = np.array([intercept[1] - intercept[0]])
        self.means_, self.priors_, self.shrinkage_ = means, priors, np.array(shrink)
        return self

    def decision_function(self, X):
        """Return (n,) log-odds of the second class (positive: present)."""
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict(self, X):
        """Return (n,) class labels."""
        scores = self.decision_function(X)  # first: raises NotFittedError before fit
        return self.classes_[(scores > 0).astype(int)]


def make_lda(*, class_weight=None, shrinkage="auto", **_):
    """Return an unfitted ``Pipeline(StandardScaler, LDA)`` for one AU (the ``lda`` entry).

    Parameters
    ----------
    class_weight : {None, "balanced"}
        ``"balanced"`` means equal priors (LDA has no sample weights).
    shrinkage : "auto", float or None
        Covariance shrinkage (``"auto"``: Ledoit-Wolf, solved by :class:`ShrinkageLDA`).
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    priors = (0.5, 0.5) if class_weight == "balanced" else None
    if shrinkage == "auto":
        return _scaled(ShrinkageLDA(priors=priors))
    return _scaled(LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage, priors=priors))


def make_svm(*, C=DEFAULT_C, class_weight=None, seed=0, n_samples=None, n_features=None, **_):
    """Return an unfitted ``Pipeline(StandardScaler, LinearSVC)`` for one AU (the ``svm`` entry).

    Parameters
    ----------
    C : float
        Regularisation (chosen per AU from :data:`C_GRID` by :func:`fit_au`).
    class_weight : {None, "balanced"}
    seed : int
        Seeds liblinear's coordinate order.
    n_samples, n_features : int, optional
        The training matrix's shape: picks liblinear's dual solver unless there are far more
        frames than dimensions (the primal Newton solver was 40x slower at 5000 x 4096).
    """
    from sklearn.svm import LinearSVC

    dual = True
    if n_samples is not None and n_features is not None:
        dual = n_samples < 50 * n_features
    return _scaled(LinearSVC(C=C, dual=dual, class_weight=class_weight, max_iter=2000, random_state=seed))


def _scaled(est):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("clf", est)])


class ThresholdedClassifier(ClassifierMixin, BaseEstimator):
    """A binary classifier with its decision threshold inside: what a run saves per AU.

    The contract of scikit-learn's ``FixedThresholdClassifier`` (``estimator``, ``threshold``;
    ``fit`` fits a clone into ``estimator_``; ``decision_function`` is the inner estimator's),
    with featbench's decision rule: present when the score, rounded to float32 as the
    predictions files store it, is *greater* than the threshold (scikit-learn's uses ``>=`` on
    float64 scores, which can flip a frame whose score sits on the threshold). So a loaded
    model's ``predict`` equals the decisions of the run that saved it.

    Parameters
    ----------
    estimator : classifier with ``decision_function``
    threshold : float
        Chosen on the validation subjects (default 0: the classifier's own decision).

    Attributes
    ----------
    estimator_ : the fitted estimator
    classes_ : array of shape (2,)
    """

    def __init__(self, estimator=None, *, threshold=DEFAULT_THRESHOLD):
        self.estimator = estimator
        self.threshold = threshold

    @classmethod
    def from_fitted(cls, estimator, threshold=DEFAULT_THRESHOLD):
        """Wrap an already fitted ``estimator`` (no refit)."""
        out = cls(estimator, threshold=float(threshold))
        out.estimator_ = estimator
        out.classes_ = estimator.classes_
        return out

    def __sklearn_tags__(self):
        from sklearn.utils import get_tags

        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # one threshold: present / absent
        if self.estimator is not None:
            tags.input_tags.sparse = get_tags(self.estimator).input_tags.sparse
        return tags

    def fit(self, X, y, **params):
        """Fit a clone of ``estimator`` on ``X`` (n, dims) and binary ``y`` (n,); return self."""
        from sklearn.base import clone
        from sklearn.utils.multiclass import type_of_target

        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError(f"Only binary classification is supported (one threshold); "
                             f"the type of the target is {kind}")
        self.estimator_ = clone(self.estimator).fit(X, y, **params)
        self.classes_ = self.estimator_.classes_
        if hasattr(self.estimator_, "n_features_in_"):
            self.n_features_in_ = self.estimator_.n_features_in_
        return self

    def decision_function(self, X, **kw):
        """Return (n,) scores of the inner estimator (positive: present)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X, **kw)

    def predict(self, X, **kw):
        """Return (n,) class labels: the second class where the score exceeds the threshold."""
        scores = np.asarray(self.decision_function(X, **kw), dtype=np.float32)
        return np.asarray(self.classes_)[decide(scores, self.threshold)]


def balance_indices(y, rng):
    """Return the indices of all positives and as many randomly drawn negatives, sorted.

    Parameters
    ----------
    y : array of shape (n,)
        1 present, 0 absent (unlabelled frames already removed).
    rng : numpy.random.Generator
        Seeded by the caller, so a run is reproducible.

    Returns
    -------
    array of shape (m,) int
        When there are fewer negatives than positives, every frame is kept.
    """
    y = np.asarray(y)
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y != 1)
    if neg.size > pos.size:
        neg = rng.choice(neg, size=pos.size, replace=False)
    return np.sort(np.concatenate([pos, neg]))


def decide(scores, threshold=DEFAULT_THRESHOLD):
    """Return int8 decisions (1 present) of ``scores > threshold``; nan scores give 0."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(scores) > threshold).astype(np.int8)


def best_threshold(y, scores):
    """Return the threshold that maximises F1 of ``scores > threshold`` against ``y``.

    Candidates lie halfway between consecutive distinct scores (and just below the lowest),
    so the choice does not sit on a frame's score. Among thresholds with the same F1, the one
    closest to the default 0 wins.

    Parameters
    ----------
    y : array of shape (n,)
        1 present, 0 absent: the validation subjects' labels.
    scores : array of shape (n,)
        The validation subjects' decision scores.

    Returns
    -------
    float
        :data:`DEFAULT_THRESHOLD` when ``y`` has no positive (F1 is undefined).
    """
    t = np.asarray(y) == 1
    s = np.asarray(scores, dtype=np.float64)
    if not t.any() or s.size == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    f1 = 2 * tp / (tp + fp + t.sum())  # 2TP / (2TP + FP + FN) with FN = P - TP
    cut = np.r_[s[1:] != s[:-1], True]  # only between distinct scores
    below = np.r_[s[1:], s[-1] - max(1e-6, abs(s[-1]) * 1e-6)]  # last: every frame positive
    cand = (s + below) / 2
    f1 = np.where(cut, f1, -1.0)
    best = f1.max()
    ties = np.flatnonzero(f1 >= best - 1e-12)
    return float(cand[ties[np.argmin(np.abs(cand[ties] - DEFAULT_THRESHOLD))]])


@dataclass
class AUFit:
    """A fitted AU: the model (threshold inside) and what was chosen on the validation subjects.

    ``params`` holds the value chosen for each parameter of the entry's search space (SVM:
    ``{"C": 0.01}``); ``grid`` the validation F1 of each candidate (keyed by the value when the
    space has one parameter).
    """

    model: object
    params: dict = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    val_f1: float = float("nan")
    grid: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def C(self):
        """The SVM's chosen C (nan for an entry without one)."""
        return self.params.get("C", float("nan"))

    @C.setter
    def C(self, value):
        self.params["C"] = float(value)


def with_threshold(fit):
    """Return ``fit`` with its threshold inside its model (:class:`ThresholdedClassifier`).

    For fits made outside :func:`fit_au` (the out-of-core SVM): what a run saves must carry the
    threshold its decisions used.
    """
    if fit.model is not None and not hasattr(fit.model, "threshold"):
        fit.model = ThresholdedClassifier.from_fitted(fit.model, fit.threshold)
    return fit


def _val_f1(y_val, scores, threshold=DEFAULT_THRESHOLD):
    return au_metrics(y_val, decide(scores, threshold))["f1"] if len(y_val) else float("nan")


def _candidates(space):
    """Return the search space as a list of parameter dicts, in grid order (most regularised first)."""
    from itertools import product

    names = list(space)
    return [dict(zip(names, values)) for values in product(*(space[n] for n in names))]


def _grid_key(params):
    return next(iter(params.values())) if len(params) == 1 else tuple(sorted(params.items()))


def _fit_grid(spec, X_train, y_train, X_val, y_val, make_kw, out):
    """Fit every candidate of ``spec.search_space`` on the training rows, keep the best on validation.

    The scaler is fit once and the rows converted to float64 once for the whole grid (liblinear
    wants float64); the fit with the best parameters *is* the model (no refit). Ties go to the
    earlier candidate.
    """
    from sklearn.pipeline import Pipeline

    scaler = spec.make(**make_kw).named_steps["scale"].fit(X_train)
    Xt = np.ascontiguousarray(scaler.transform(X_train), dtype=np.float64)
    Xv = scaler.transform(X_val) if len(y_val) else None
    fits = {}
    for params in _candidates(spec.search_space):
        key = _grid_key(params)
        fits[key] = spec.make(**make_kw, **params).named_steps["clf"].fit(Xt, y_train)
        out.grid[key] = _val_f1(y_val, fits[key].decision_function(Xv)) if Xv is not None else float("nan")
    scored = [k for k, f in out.grid.items() if not np.isnan(f)]
    if scored:
        best = max(scored, key=lambda k: out.grid[k])  # max keeps the first of equals
        out.params = next(p for p in _candidates(spec.search_space) if _grid_key(p) == best)
        out.params = {n: float(v) for n, v in out.params.items()}
    else:
        out.params = dict(spec.default_params)
        out.notes.append("no positive in validation: "
                         + ", ".join(f"{n}={v:g}" for n, v in out.params.items()) + " not chosen on data")
        best = _grid_key(out.params)
        if best not in fits:
            fits[best] = spec.make(**make_kw, **out.params).named_steps["clf"].fit(Xt, y_train)
    return Pipeline([("scale", scaler), ("clf", fits[best])])


def fit_au(clf, X_train, y_train, X_val, y_val, *, class_weight=None, tune_threshold=False,
           X_thr=None, y_thr=None, shrinkage="auto", seed=0, **fit_kw):
    """Fit one AU's classifier on the training rows; choose its parameters and threshold on validation.

    The generic fit of :class:`ClassifierSpec` entries whose ``make`` returns
    ``Pipeline([("scale", ...), ("clf", ...)])`` on single frames (``lda``, ``svm``).

    Parameters
    ----------
    clf : ClassifierSpec
        The kind's per-AU estimator (``classify.kinds.get_kind("svm").estimator``...).
    X_train : array of shape (n_train, dims)
    y_train : array of shape (n_train,)
        1 / 0; both classes must be present (the caller reports an AU without positives).
    X_val : array of shape (n_val, dims)
    y_val : array of shape (n_val,)
        Each candidate of the entry's search space (SVM: each C of :data:`C_GRID`) is fit on the
        training rows and scored by F1 on these rows; the best (ties: the earlier, more
        regularised one) is kept.
    class_weight : {None, "balanced"}
    tune_threshold : bool
        Choose the threshold maximising F1 on the validation rows (else 0).
    X_thr, y_thr : arrays of shape (m, dims) and (m,), optional
        The rows to tune the threshold on, when not ``X_val`` / ``y_val``: F1 depends on the
        share of positives, so a threshold tuned on balanced rows would overcall on the
        unbalanced test set; the caller passes all of the validation subjects' frames.
    shrinkage : "auto", float or None
        LDA only.
    seed : int

    Returns
    -------
    AUFit
        ``model`` is a :class:`ThresholdedClassifier`: ``predict`` applies the chosen threshold.
    """
    from sklearn.exceptions import ConvergenceWarning

    spec = clf
    y_train = np.asarray(y_train, dtype=np.int8)
    y_val = np.asarray(y_val, dtype=np.int8)
    make_kw = dict(class_weight=class_weight, shrinkage=shrinkage, seed=seed,
                   n_samples=X_train.shape[0], n_features=X_train.shape[1])
    out = AUFit(model=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if spec.search_space:
            model = _fit_grid(spec, X_train, y_train, X_val, y_val, make_kw, out)
        else:
            model = spec.make(**make_kw).fit(X_train, y_train)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught) and spec.convergence_note:
        out.notes.append(spec.convergence_note)
    if X_thr is None:
        X_thr, y_thr = X_val, y_val
    settle_threshold(out, y_thr, lambda: model.decision_function(X_thr), tune_threshold)
    out.model = ThresholdedClassifier.from_fitted(model, out.threshold)
    return out


def settle_threshold(out, y_thr, scores, tune_threshold):
    """Set ``out.threshold`` (tuned on ``y_thr`` when asked) and ``out.val_f1`` at it.

    ``scores`` is called only when there are frames to score: the validation (or threshold)
    frames' decision values. Shared by the in-memory and the out-of-core fits.
    """
    y_thr = np.asarray(y_thr, dtype=np.int8)
    if not y_thr.size:
        return
    s = scores()
    if tune_threshold:
        if (y_thr == 1).any():
            out.threshold = best_threshold(y_thr, s)
        else:
            out.notes.append("no positive in validation: threshold left at 0")
    out.val_f1 = _val_f1(y_thr, s, out.threshold)



# --- the spec of a per-AU estimator -------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierSpec:
    """How featbench makes, searches and fits one kind of per-AU classifier on codes.

    A run kind that classifies frame codes (``lda``, ``svm``; :mod:`classify.kinds`) holds one;
    :func:`classify.run.classify_run` fits it per fold and AU.

    Attributes
    ----------
    name : str
        The ``--clf`` value and the ``clf`` part of the run name.
    make : callable
        ``make(*, class_weight, shrinkage, seed, n_samples, n_features, **params)`` -> an unfitted
        ``Pipeline([("scale", ...), ("clf", ...)])``; options it has no use for are ignored.
    classes : tuple of type
        The estimator classes its fitted pipelines hold: the only classes
        :func:`estimator_from_arrays` rebuilds a saved model from.
    search_space : dict
        ``{parameter: candidates}`` chosen per AU by F1 on the validation subjects (empty: none).
        Each chosen value becomes a column of the run's table and an entry in settings.json.
    default_params : dict
        The parameters used when validation cannot score the search (no positive there).
    fit : callable, optional
        ``fit(spec, X_train, y_train, X_val, y_val, *, class_weight, tune_threshold, X_thr,
        y_thr, seed)`` -> :class:`AUFit`. Default: :func:`fit_au`.
    fit_streamed : callable, optional
        The fit for codes too large for memory, read from the feature file in blocks
        (:func:`classify.scale.fit_streamed` for the SVM); None: always :attr:`fit`.
    convergence_note : str, optional
        The note recorded when the fit raised scikit-learn's ``ConvergenceWarning``.
    solver, streamed_solver : str
        The solver named in settings.json (default: the entry's name).
    help : str
        One line for ``--help`` and error messages.
    """

    name: str
    make: Optional[Callable] = None
    classes: tuple = ()
    search_space: dict = field(default_factory=dict)
    default_params: dict = field(default_factory=dict)
    fit: Optional[Callable] = None
    fit_streamed: Optional[Callable] = None
    convergence_note: Optional[str] = None
    solver: str = ""
    streamed_solver: str = ""
    help: str = ""

    def fit_au(self, *args, **kw):
        """Fit one AU with this entry's ``fit`` (default :func:`fit_au`)."""
        return (self.fit or fit_au)(self, *args, **kw)


# --- saving without pickle ----------------------------------------------------------------------
#: fitted attributes no decision needs (scikit-learn's lsqr LDA keeps a dims x dims covariance)
_NOT_SAVED = frozenset({"covariance_"})


def estimator_arrays(model):
    """Return ``(description, arrays)`` of a fitted per-AU model, for a model file.

    Parameters
    ----------
    model : ThresholdedClassifier, Pipeline or estimator
        Fitted. Its steps' constructor parameters and scalar fitted attributes go into the
        JSON ``description``; its array attributes into ``arrays`` as ``<step>.<attribute>``.

    Raises
    ------
    TypeError
        A fitted attribute that is neither an array nor a plain number or string.
    """
    inner = getattr(model, "estimator_", model)
    steps = inner.steps if hasattr(inner, "steps") else [("clf", inner)]
    desc, arrays = [], {}
    for step, est in steps:
        fitted = {}
        for key, value in vars(est).items():
            if not key.endswith("_") or key.startswith("_") or key in _NOT_SAVED:
                continue
            if isinstance(value, np.ndarray):
                arrays[f"{step}.{key}"] = value
            elif value is None or isinstance(value, (bool, int, float, str, np.generic)):
                fitted[key] = value.item() if isinstance(value, np.generic) else value
            else:
                raise TypeError(f"{type(est).__name__}.{key}: a {type(value).__name__} cannot be saved")
        params = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in est.get_params(deep=False).items()}
        desc.append({"step": step, "class": type(est).__name__, "params": params, "fitted": fitted})
    return {"pipeline": hasattr(inner, "steps"), "steps": desc}, arrays


def estimator_from_arrays(description, arrays, threshold, classes):
    """Rebuild what :func:`estimator_arrays` saved as a fitted :class:`ThresholdedClassifier`.

    Parameters
    ----------
    description : dict
    arrays : mapping of str -> ndarray
    threshold : float
        The threshold the run's decisions used.
    classes : iterable of type
        The estimator classes allowed (the kind's :attr:`ClassifierSpec.classes`): a file that
        names another class is refused, so a file can never choose what code runs.

    Raises
    ------
    ValueError
        A class that is not allowed.
    """
    from sklearn.pipeline import Pipeline

    allowed = {c.__name__: c for c in classes}
    steps = []
    for d in description["steps"]:
        cls = allowed.get(d["class"])
        if cls is None:
            raise ValueError(f"a saved step of class {d['class']!r}, which this kind does not "
                             f"load (it loads {', '.join(sorted(allowed)) or 'none'})")
        est = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["params"].items()})
        for key, value in d["fitted"].items():
            setattr(est, key, value)
        prefix = f"{d['step']}."
        for key in [k for k in arrays.keys() if k.startswith(prefix)]:
            setattr(est, key[len(prefix):], np.asarray(arrays[key]))
        steps.append((d["step"], est))
    model = Pipeline(steps) if description.get("pipeline", True) else steps[0][1]
    return ThresholdedClassifier.from_fitted(model, threshold)
