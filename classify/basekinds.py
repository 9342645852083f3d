"""The run kinds of classify's own: per-AU estimators on codes (``lda``, ``svm``) and the vote.

``lda`` / ``svm`` (and any :func:`estimator_kind`)
    ``featbench classify`` fits one ``Pipeline(StandardScaler, classifier)`` per fold and AU
    (:func:`classify.run.classify_run`). Saved: one tensor group per AU (``AU01``;
    ``AU01-<fold>`` per fold) holding its steps' fitted arrays, the settings describing each
    step (class, parameters, scalar attributes: :func:`classify.estimators.estimator_arrays`);
    loaded only into the classes the kind names (``ClassifierSpec.classes``), never unpickled.
``vote`` (``featbench ensemble``)
    its members (sibling run folders, or embedded in an export), each loaded through its own
    kind, and the members' score scales on the frames the ensemble voted on (tensor group
    ``vote``), so that a tie is broken on new frames as :func:`classify.vote.majority_vote`
    broke it there; each member's fingerprint refuses a member trained again since.
"""

from dataclasses import replace

import numpy as np

from featbench.core.calibrate import check_calibration
from featbench.core.errors import StoreError
from featbench.core.metrics import INTENSITY_MAX, INTENSITY_MIN, decision_threshold
from featbench.core.registry import lazy

from classify.estimators import (C_GRID, DEFAULT_C, ClassifierSpec, ShrinkageLDA, estimator_arrays,
                                 make_lda, make_svm)
from classify.kinds import (RunKind, fold_results, get_kind, load_scorer, member_fingerprint,
                            record_fields, unit_group, write_run_model)
from classify.intensity import RIDGE_ALPHAS, SVR_CS, RegressorSpec, ridge_path, svr_path
from classify.modelcheck import INTENSITY_SPEC, VOTE_SPEC, estimator_spec
from classify.infer import RunModel
from classify.loaders import estimator_scorer, load_units, regressor_scorer


# --- per-AU classifiers on codes --------------------------------------------------------------
def save_estimators(folder, record):
    """The ``save`` of estimator kinds: one tensor group per AU (and fold), arrays of its pipeline."""
    splits = record.splits
    folds = [{"name": sp.name, "thresholds": {}} for sp in splits]
    units = [{} for _ in splits]
    models, tensors = {}, {}
    for fi, fname, au, fit in fold_results(record):
        group = unit_group(au, fname, len(folds))
        models[group], tensors[group] = estimator_arrays(fit.model)
        folds[fi]["thresholds"][au] = float(fit.threshold)
        units[fi][au] = group
    write_run_model(folder, record.plan.kind.name, folds, {"models": models, "units": units},
                    tensors, record_fields(record))


def load_estimators(model_file, classes):
    """The ``load`` of estimator kinds: each AU's pipeline rebuilt from the classes allowed
    (the one loader, :func:`classify.loaders.load_units`)."""
    return load_units(model_file, estimator_scorer(model_file, classes), noun="fitted classifier")


#: the fitted arrays a saved pipeline step of each class holds: attribute -> (shape, required);
#: ``"d"`` is the code dimension, other strings free sides; required: True, False, or the
#: parameter that makes it needed (a scaler's ``with_mean``). Checked before a run loads
#: (:func:`classify.modelcheck.estimator_spec`); a class not listed: any fitted-named arrays.
_COEF = {"coef_": ((1, "d"), True), "intercept_": ((1,), True), "classes_": ((2,), False)}
FITTED_ARRAYS = {
    "StandardScaler": {"mean_": (("d",), "with_mean"), "scale_": (("d",), "with_std"),
                       "var_": (("d",), False)},
    "LinearSVC": _COEF,
    "SGDClassifier": _COEF,
    "ShrinkageLDA": {**_COEF, "means_": ((2, "d"), False), "priors_": ((2,), False),
                     "shrinkage_": ((2,), False)},
    "LinearDiscriminantAnalysis": {**_COEF, "means_": ((2, "d"), False), "priors_": ((2,), False),
                                   "xbar_": (("d",), False), "scalings_": (("d", "r"), False),
                                   "explained_variance_ratio_": (("r",), False)},
}


def estimator_kind(spec, **kw):
    """Return the :class:`RunKind` of a per-AU estimator ``spec`` (trained by ``classify_run``)."""
    def load(model_file):
        return load_estimators(model_file, spec.classes)

    fields = dict(name=spec.name, load=load, save=save_estimators, train="classify.run:classify_run",
                  trained_by="classify", command=f"featbench classify --clf {spec.name}", estimator=spec,
                  method=lazy("classify.codemethods:classifier_method"), tasks=("occurrence",),
                  streams=True, help=spec.help,
                  spec=estimator_spec(spec.classes, FITTED_ARRAYS))
    return RunKind(**{**fields, **kw})


def _svm_classes():
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return (StandardScaler, LinearSVC, SGDClassifier)


def _lda_classes():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.preprocessing import StandardScaler

    return (StandardScaler, ShrinkageLDA, LinearDiscriminantAnalysis)


#: the ``lda`` kind: shrinkage LDA per AU
LDA = estimator_kind(ClassifierSpec(name="lda", make=make_lda, classes=_lda_classes(),
                                    help="shrinkage LDA (Ledoit-Wolf)"))
#: the ``svm`` kind: linear SVM per AU, C chosen on validation (out of core when codes are large)
SVM = estimator_kind(ClassifierSpec(
    name="svm", make=make_svm, classes=_svm_classes(), search_space={"C": C_GRID},
    default_params={"C": DEFAULT_C}, fit_streamed=lazy("classify.scale:fit_streamed"), solver="liblinear",
    streamed_solver="sgd-hinge (out of core)",
    convergence_note="liblinear did not fully converge for some C (max_iter=2000)",
    help="linear SVM, C chosen on the validation subjects"))


# --- per-AU intensity regressors on codes ----------------------------------------------------
def save_regressors(folder, record):
    """The ``save`` of ``ridge`` / ``svr``: per fold (and AU) a weight vector and a bias.

    One tensor group per AU (``AU01``; ``AU01-<fold>`` per fold) holding ``weight`` (dims,)
    float64 and ``bias`` (1,) float64; the manifest's ``task`` is ``intensity``, its
    ``preprocessing`` names the network, the region each AU reads and the calibration
    (``calibrate``: none / median / neutral, per person = one face track), its thresholds are
    the ``_c`` decisions' (``score > 1.5``: rounded intensity >= 2).
    """
    splits, task = record.splits, record.plan.task
    thr = decision_threshold(task.threshold)
    folds = [{"name": sp.name, "thresholds": {}} for sp in splits]
    units, tensors = [{} for _ in splits], {}
    for fi, fname, au, fit in fold_results(record):
        group = unit_group(au, fname, len(splits))
        tensors[group] = {"weight": np.asarray(fit.model.weight, dtype=np.float64),
                          "bias": np.array([fit.model.bias], dtype=np.float64)}
        folds[fi]["thresholds"][au] = thr
        units[fi][au] = group
    fields = record_fields(record)
    settings = {"units": units, "param": record.plan.kind.estimator.param,
                "clip": [INTENSITY_MIN, INTENSITY_MAX], "label_threshold": task.threshold,
                "calibrate": check_calibration(fields.preprocessing.get("calibrate")),
                "person": "one face track (a subject's video in training)"}
    write_run_model(folder, record.plan.kind.name, folds, settings, tensors, fields)


def load_regressors(model_file):
    """The ``load`` of ``ridge`` / ``svr``: a :class:`~classify.infer.RunModel` whose AUs are
    :class:`~classify.intensity.LinearIntensity` (clipped intensities; decisions ``> 1.5``)."""
    m = model_file.manifest
    if m.get("task") not in (get_kind(m["kind"]).tasks or ()):
        raise StoreError(f"{model_file.path}: run {m.get('run')} of kind {m.get('kind')} is not "
                         "an intensity run")
    return load_units(model_file, regressor_scorer(model_file), noun="fitted regressor")


def regressor_kind(spec):
    """Return the :class:`RunKind` of a per-AU intensity regressor ``spec``."""
    return RunKind(name=spec.name, load=load_regressors, save=save_regressors,
                   train="classify.run:classify_run", trained_by="classify", estimator=spec,
                   method=lazy("classify.codemethods:regressor_method"),
                   command=f"featbench classify --task intensity --clf {spec.name}",
                   task="intensity", tasks=("intensity",), balance=False, help=spec.help,
                   spec=INTENSITY_SPEC)


#: the ``ridge`` kind: per-AU ridge regression of intensities on codes
RIDGE = regressor_kind(RegressorSpec("ridge", "alpha", RIDGE_ALPHAS, 1e3,
                                     lambda Xs, Y, grid, seed: ridge_path(Xs, Y, grid),
                                     "ridge regression of AU intensity, alpha chosen by validation ICC"))
#: the ``svr`` kind: per-AU linear SVR of intensities on codes
SVR = regressor_kind(RegressorSpec("svr", "C", SVR_CS, 1e-3,
                                   lambda Xs, Y, grid, seed: svr_path(Xs, Y, grid, seed=seed),
                                   "linear SVR of AU intensity, C chosen by validation ICC"))


# --- votes ------------------------------------------------------------------------------------
def save_vote(folder, trained, fields):
    """The ``save`` of ``vote``: ``trained`` = ``{"members", "scales" (members, aus),
    "fingerprints"}``; ``fields``: its :class:`~classify.kinds.ModelFields` (members added)."""
    write_run_model(folder, "vote", [], {"members": list(trained["members"]),
                                         "fingerprints": trained["fingerprints"]},
                    {"vote": {"scales": trained["scales"]}},
                    replace(fields, members=list(trained["members"])))


def load_vote(model_file):
    """The ``load`` of ``vote``: its members (each through its own kind) and their score scales."""
    m = model_file.manifest
    members = model_file.members()
    for member, want in zip(members, m["settings"].get("fingerprints") or [None] * len(members)):
        if want is not None and member_fingerprint(member.manifest) != want:
            raise StoreError(f"{model_file.path}: member {member.manifest['run']} was trained again "
                             "after this ensemble: run featbench ensemble again")
    loaded = [load_scorer(mf) for mf in members]
    missing = [(r.run, a) for r in loaded for a in m["aus"] if a not in r.aus]
    if missing:
        raise StoreError(f"{model_file.path}: member {missing[0][0]} has no {missing[0][1]}: "
                         "run featbench ensemble again")
    return RunModel.vote_of(model_file, loaded, model_file.tensors("vote")["scales"].astype("float64"))


#: the ``vote`` kind: a majority vote of other runs (``featbench ensemble``)
VOTE = RunKind(name="vote", load=load_vote, save=save_vote, train="classify.ensemble:ensemble_run",
               trained_by="ensemble", command="featbench ensemble", inputs="runs", spec=VOTE_SPEC,
               help="majority vote of member runs, ties broken by scaled scores")
