"""Per-AU intensity regressors on CNN codes: ridge and linear SVR, hyper-parameters on validation.

The regression counterpart of :mod:`classify.estimators`. Each AU's model is fit on the training
subjects' z-scored codes (the scaler's mean and std come from the training rows only, as
PROTOCOL.md's scaling), and one hyper-parameter is chosen per AU by ICC(3,1) of its clipped
predictions on *all* of the validation subjects' frames (unbalanced, as test is scored; ties go
to the more regularised candidate):

``ridge``
    Least squares with an L2 penalty ``alpha`` (:data:`RIDGE_ALPHAS`), solved once for the whole
    grid and for every AU that shares its training rows (one eigen-decomposition of the smaller
    of the Gram and covariance matrices).
``svr``
    liblinear's linear support vector regression (squared epsilon-insensitive loss,
    ``epsilon`` = :data:`SVR_EPSILON`; primal solver when there are more frames than dims),
    its ``C`` from :data:`SVR_CS`. (The plain epsilon-insensitive loss with epsilon 0 is a
    median regression: on frames that are mostly at rest it predicts ~0 everywhere; measured
    on the embedded set's dlib_face codes, ICC 0.26 against 0.53.)

Conventions, stated once: intensities are DISFA's 0-5; predictions are clipped to 0-5 (the
scale's bounds) before any metric or decision; a frame is called present when its prediction
rounds to at least the label threshold (:func:`featbench.core.metrics.intensity_decisions`).
A fitted AU is a :class:`LinearIntensity`: the scaler folded into one weight vector and a bias,
so the numbers a run reports are the ones its saved arrays reproduce. The ``ridge`` and ``svr``
run kinds hold their :class:`RegressorSpec` (:mod:`classify.basekinds`), and are trained per AU
through the one loop (:class:`classify.codemethods.RegressorMethod`).
"""

import warnings
from dataclasses import dataclass, field

import numpy as np

from featbench.core.metrics import INTENSITY_MAX, INTENSITY_MIN, PRESENT_AT, decision_threshold, icc31

#: ridge penalties on z-scored codes, most regularised first
RIDGE_ALPHAS = (1e5, 1e4, 1e3, 1e2, 1e1, 1.0, 1e-1)
#: linear SVR's C, most regularised first
SVR_CS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: linear SVR's insensitive zone: errors under half an intensity step (which integer labels
#: cannot resolve) cost nothing
SVR_EPSILON = 0.5


def clip_intensity(values):
    """Return ``values`` clipped to the intensity scale 0-5, float32 (nan stays nan)."""
    return np.clip(np.asarray(values, dtype=np.float64), INTENSITY_MIN, INTENSITY_MAX).astype(np.float32)


@dataclass
class LinearIntensity:
    """One AU's fitted regressor: ``clip(codes @ weight + bias, 0, 5)``.

    ``weight`` (dims,) float64 already holds the z-scoring (``coef / std``), ``bias`` its
    offset, so the model is two arrays and :meth:`predict` is what the run scored test with.
    """

    weight: np.ndarray
    bias: float

    @classmethod
    def from_scaled(cls, mean, scale, coef, intercept):
        """Fold a scaler (``mean``, ``scale``) into a linear map fitted on scaled codes."""
        w = np.asarray(coef, dtype=np.float64) / scale
        return cls(w, float(intercept - np.dot(mean, w)))

    def predict(self, X):
        """Return the (n,) clipped intensities of codes ``X`` (n, dims)."""
        return clip_intensity(np.asarray(X, dtype=np.float64) @ self.weight + self.bias)

    def decision_function(self, X):
        """The scorer's name for :meth:`predict` (:class:`classify.infer.RunModel`)."""
        return self.predict(X)


@dataclass
class IntensityFit:
    """A fitted AU and what was chosen on the validation subjects (``grid``: ICC per candidate)."""

    model: LinearIntensity
    params: dict = field(default_factory=dict)
    val_icc: float = float("nan")
    grid: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    n_train: int = 0
    #: the ``_c`` decision's threshold on the predicted intensity (rounded >= 2: ``> 1.5``)
    threshold: float = decision_threshold(PRESENT_AT)


def zscore_stats(X):
    """Return the training rows' ``(mean, std)`` per dimension, std 1 where constant (as StandardScaler)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


def ridge_path(Xs, Y, alphas):
    """Return ``[(coef (dims, k), intercept (k,)) for alpha in alphas]`` of ridge regression.

    ``Xs`` (n, dims) has centred columns (z-scored training rows), so the intercept is the mean
    of ``Y`` (n, k). One eigen-decomposition serves every alpha and every column: of the (n, n)
    Gram matrix when n <= dims, else of the (dims, dims) covariance.
    """
    Xs = np.asarray(Xs, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    intercept = Y.mean(axis=0)
    Yc = Y - intercept
    n, d = Xs.shape
    out = []
    if n <= d:
        lam, Q = np.linalg.eigh(Xs @ Xs.T)
        QtY = Q.T @ Yc
        for a in alphas:  # w = X' (XX' + a)^-1 y
            out.append((Xs.T @ (Q @ (QtY / (np.maximum(lam, 0) + a)[:, None])), intercept))
    else:
        lam, V = np.linalg.eigh(Xs.T @ Xs)
        VtXtY = V.T @ (Xs.T @ Yc)
        for a in alphas:  # w = (X'X + a)^-1 X'y
            out.append((V @ (VtXtY / (np.maximum(lam, 0) + a)[:, None]), intercept))
    return out


def svr_path(Xs, Y, cs, *, seed=0):
    """Return ``[(coef (dims, k), intercept (k,)) for C in cs]`` of liblinear's linear SVR."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVR

    Xs = np.ascontiguousarray(Xs, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # noted by the caller's grid
        for c in cs:
            coef = np.empty((Xs.shape[1], Y.shape[1]))
            icpt = np.empty(Y.shape[1])
            for j in range(Y.shape[1]):
                m = LinearSVR(C=c, epsilon=SVR_EPSILON, loss="squared_epsilon_insensitive",
                              dual=Xs.shape[0] < Xs.shape[1], max_iter=2000,
                              random_state=seed).fit(Xs, Y[:, j])
                coef[:, j], icpt[j] = m.coef_, m.intercept_[0]
            out.append((coef, icpt))
    return out


@dataclass(frozen=True)
class RegressorSpec:
    """One kind of per-AU intensity regressor: its name, its one hyper-parameter and grid."""

    name: str
    param: str
    grid: tuple
    default: float
    path: object
    help: str = ""

    def __post_init__(self):
        if self.default not in self.grid:
            raise ValueError(f"regressor {self.name}: default {self.default} not in its grid")


def fit_intensity(spec, X_train, Y_train, X_val, Y_val, *, seed=0):
    """Fit one regressor per column of ``Y_train`` on shared training rows; choose each one's
    hyper-parameter by validation ICC.

    Parameters
    ----------
    spec : RegressorSpec
    X_train : array of shape (n, dims)
    Y_train : array of shape (n, k)
        Known intensities 0-5 of every row (the caller keeps rows whose k AUs are all known).
    X_val : array of shape (m, dims)
    Y_val : array of shape (m, k)
        0-5, or -1 where unknown (left out of that AU's ICC).
    seed : int
        liblinear's coordinate order (``svr``).

    Returns
    -------
    list of k IntensityFit
    """
    mean, scale = zscore_stats(X_train)
    Xs = (np.asarray(X_train, dtype=np.float64) - mean) / scale
    path = spec.path(Xs, np.asarray(Y_train, dtype=np.float64), spec.grid, seed)
    Y_val = np.asarray(Y_val)
    fits = []
    for j in range(Y_train.shape[1]):
        models = [LinearIntensity.from_scaled(mean, scale, coef[:, j], icpt[j]) for coef, icpt in path]
        known = Y_val[:, j] >= 0
        grid = {v: (icc31(Y_val[known, j], m.predict(X_val[known])) if known.any() else float("nan"))
                for v, m in zip(spec.grid, models)}
        scored = [v for v in spec.grid if np.isfinite(grid[v])]
        out = IntensityFit(model=None, grid=grid)
        if scored:
            best = max(scored, key=lambda v: grid[v])  # max keeps the first (more regularised)
            out.val_icc = grid[best]
        else:
            best = spec.default  # one of the grid's values
            out.notes.append(f"validation ICC undefined (no variation of the AU there): "
                             f"{spec.param}={best:g} not chosen on data")
        out.model = models[list(spec.grid).index(best)]
        out.params = {spec.param: float(best)}
        fits.append(out)
    return fits
