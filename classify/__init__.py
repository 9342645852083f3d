"""Stage 2 of featbench: per-AU classifiers on the stored codes, and their evaluation.

============================ ===========================================================
module                       what it holds
============================ ===========================================================
:mod:`classify.registry`     :class:`~classify.registry.ClassifierSpec` per classifier name
                             (make, search space, sequences, save/load) and
                             :func:`~classify.registry.load_run_models`
:mod:`classify.estimators`   the per-AU estimators (``lda``, ``svm``: a ``Pipeline`` of
                             ``StandardScaler`` and the classifier), balancing, the search on
                             the validation subjects, the threshold kept inside the model
:mod:`classify.run`          :func:`~classify.run.classify_run`: one run of the protocol
                             (codes + frame table -> metrics, predictions, models, settings)
============================ ===========================================================

The command-line modules import this package only inside their ``_run`` functions, so
scikit-learn is never loaded by ``featbench --help``.
"""
