"""The learning framework every learned method of featbench is built on.

Fine-tuning (:mod:`classify.finetune`), transfer's two stages (:mod:`classify.transfer`) and the
LSTM (:mod:`classify.lstm`) are each a short *method* module over the same parts:

========================== =====================================================================
part                       where
========================== =====================================================================
faces                      :mod:`featbench.core.facesource`: region, input-size rule,
                           balancing, augmentation, read-ahead (extraction and predict read
                           faces through it too)
the task                   :mod:`classify.task` (outside this package: predict decides
                           with it too): targets, masking of unlabelled values, loss,
                           positive weight, validation metric, score -> decision
the method contract        :mod:`classify.learn.method`: build the network, batches, score
                           (through the one inference path, :func:`classify.infer.score_batches`)
the training loop          :func:`classify.training.fit`: epochs chosen on validation,
                           checkpoints, resume, AMP + channels-last on CUDA
the fold x unit loop       :mod:`classify.learn.loop`: every unit of every fold, finished
                           units skipped on a rerun, thresholds settled on validation;
                           :mod:`classify.learn.pool`: where the jobs run (this process,
                           local workers, a Dask cluster, torchrun ranks)
the run writer             :mod:`classify.learn.writer`: the :class:`RunRecord`, predictions,
                           models folder (settings.json inside its swap), per-AU table,
                           summary row, failures recorded once (every kind writes through it:
                           :mod:`classify.driver`)
tensors on disk            :mod:`classify.learn.store`: safetensors + manifest, never a pickle
========================== =====================================================================

A new task (AU intensity) is one :class:`~classify.task.Task` subclass; a new method is
one :class:`~classify.learn.method.Method` subclass (and one line in the registry of run kinds).
"""

