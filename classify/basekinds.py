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

from featbench.core.errors import StoreError

from classify.estimators import (C_GRID, DEFAULT_C, ClassifierSpec, ShrinkageLDA, estimator_arrays,
                                 estimator_from_arrays, make_lda, make_svm)
from classify.kinds import (RunKind, fold_results, load_scorer, member_fingerprint, unit_group,
                            write_run_model)
from classify.modelcheck import VOTE_SPEC, estimator_spec
from classify.scale import fit_streamed
from classify.infer import RunModel


# --- per-AU classifiers on codes --------------------------------------------------------------
def save_estimators(folder, trained, *, kind, **fields):
    """The ``save`` of estimator kinds: one tensor group per AU (and fold), arrays of its pipeline."""
    folds = [{"name": sp.name, "thresholds": {}} for sp in trained["splits"]]
    units = [{} for _ in trained["splits"]]
    models, tensors = {}, {}
    for fi, fname, au, fit in fold_results(trained):
        group = unit_group(au, fname, len(folds))
        models[group], tensors[group] = estimator_arrays(fit.model)
        folds[fi]["thresholds"][au] = float(fit.threshold)
        units[fi][au] = group
    write_run_model(folder, kind, folds, {"models": models, "units": units}, tensors, **fields)


def load_estimators(model_file, classes):
    """The ``load`` of estimator kinds: each AU's pipeline rebuilt from the classes allowed."""
    m = model_file.manifest
    folds = []
    for fold, units in zip(m["folds"], m["settings"]["units"]):
        folds.append({au: (estimator_from_arrays(m["settings"]["models"][g], model_file.tensors(g),
                                                 fold["thresholds"][au], classes),
                           float(fold["thresholds"][au])) for au, g in units.items()})
    if not any(folds):
        raise StoreError(f"{model_file.path}: run {m['run']} has no fitted classifier for any AU")
    return RunModel.from_model_file(model_file, folds)


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

    def save(folder, trained, **fields):
        return save_estimators(folder, trained, kind=spec.name, **fields)

    return RunKind(name=spec.name, load=load, save=save, train="classify.run:classify_run",
                   command=f"featbench classify --clf {spec.name}", estimator=spec,
                   help=spec.help, spec=estimator_spec(spec.classes, FITTED_ARRAYS), **kw)


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
    default_params={"C": DEFAULT_C}, fit_streamed=fit_streamed, solver="liblinear",
    streamed_solver="sgd-hinge (out of core)",
    convergence_note="liblinear did not fully converge for some C (max_iter=2000)",
    help="linear SVM, C chosen on the validation subjects"))


# --- votes ------------------------------------------------------------------------------------
def save_vote(folder, trained, **fields):
    """The ``save`` of ``vote``: ``trained`` = ``{"members", "scales" (members, aus), "fingerprints"}``."""
    write_run_model(folder, "vote", [], {"members": list(trained["members"]),
                                         "fingerprints": trained["fingerprints"]},
                    {"vote": {"scales": trained["scales"]}}, members=trained["members"], **fields)


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
               command="featbench ensemble", inputs="runs", spec=VOTE_SPEC,
               help="majority vote of member runs, ties broken by scaled scores")
