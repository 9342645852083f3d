"""Stage 2 of featbench: per-AU classifiers on the stored codes, and their evaluation.

============================ ===========================================================
module                       what it holds
============================ ===========================================================
:mod:`classify.kinds`        the one registry of run kinds (lda, svm, lstm, ft, transfer,
                             vote): how each trains, saves (manifest + safetensors,
                             :mod:`featbench.core.modelfile`) and loads into one scorer;
                             the kinds: :mod:`classify.basekinds`, and the learned ones in
                             their method modules (lstm, finetune, transfer)
:mod:`classify.infer`        inference, apart from training: :class:`~classify.infer.RunModel`,
                             the one scorer of a run, the scorers of trained networks and
                             LSTMs, and the one way a network scores
                             (:func:`~classify.infer.score_batches`)
:mod:`classify.learn`        the learning framework of the learned methods (training only):
                             task, method contract, fold x unit loop, the one run writer
:mod:`classify.estimators`   the per-AU estimators (``lda``, ``svm``: a ``Pipeline`` of
                             ``StandardScaler`` and the classifier), balancing, the search on
                             the validation subjects, the threshold kept inside the model,
                             their :class:`~classify.estimators.ClassifierSpec` and saving
                             without pickle
:mod:`classify.run`          :func:`~classify.run.classify_run`: one run of the protocol
                             (codes + frame table -> metrics, predictions, models, settings)
============================ ===========================================================

The command-line modules import this package only inside their ``_run`` functions, so
scikit-learn is never loaded by ``featbench --help``.
"""
