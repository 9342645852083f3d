"""Stage 2 of featbench: per-AU classifiers on the stored codes, and their evaluation.

============================ ===========================================================
module                       what it holds
============================ ===========================================================
:mod:`classify.kinds`        the one registry of run kinds (lda, svm, lstm, ft, transfer,
                             vote, ridge, svr; classifiers and regressors are kinds): how
                             each trains, saves (manifest + safetensors,
                             :mod:`featbench.core.modelfile`) and loads into one scorer;
                             the kinds: :mod:`classify.basekinds` (estimators, vote) and
                             :mod:`classify.netkinds` (lstm, ft, transfer: their training
                             parts named, their loading on the inference side)
:mod:`classify.task`         what a run learns (:class:`~classify.task.Task`: targets, loss,
                             metric, decision, columns, how votes combine), for training and
                             inference alike; intensity in :mod:`classify.intensity_task`
:mod:`classify.infer`        inference, apart from training: :class:`~classify.infer.RunModel`,
                             the one scorer of a run, the scorers of trained networks and
                             LSTMs, and the one way a network scores
                             (:func:`~classify.infer.score_batches`)
:mod:`classify.loaders`      the one loader of a model file into its scorer, which every kind
                             configures; the networks it rebuilds are in
                             :mod:`classify.ft_net`, :mod:`classify.transfer_net`,
                             :mod:`classify.lstm_net`
:mod:`classify.learn`        the learning framework of the learned methods (training only):
                             method contract, fold x unit loop, pools, the one run writer
:mod:`classify.estimators`   the per-AU estimators (``lda``, ``svm``: a ``Pipeline`` of
                             ``StandardScaler`` and the classifier), balancing, the search on
                             the validation subjects, the threshold kept inside the model,
                             their :class:`~classify.estimators.ClassifierSpec` and saving
                             without pickle
:mod:`classify.plan`         :class:`~classify.plan.RunPlan`: what one run trains, and the one
                             rule that names runs (:func:`~classify.plan.run_key`)
:mod:`classify.driver`       the one driver of every run: inputs (codes or faces), the fold x
                             unit jobs, the one loop, the one writer
:mod:`classify.codemethods`  the per-AU estimators (lda, svm, ridge, svr) as methods of the
                             one loop, as the learned methods are
:mod:`classify.run`          :func:`~classify.run.classify_run`: the plan of a run on codes
                             (every kind featbench classify trains)
============================ ===========================================================

The command-line modules import this package only inside their ``_run`` functions, so
scikit-learn is never loaded by ``featbench --help``.
"""
