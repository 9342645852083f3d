"""The run kind of a method over aligned faces from its method class, and how such runs are saved.

:func:`face_kind` makes the :class:`classify.kinds.RunKind` of a method class whose networks map
aligned faces to per-AU scores (a plug-in, a test's toy method: one registry line) from what
the class says at class level (:func:`classify.netkinds.network_kind` does the rest; the
built-in ``ft`` and ``transfer`` kinds are made there from their network modules, so that
loading their runs needs no method class):

``network(settings, unit, state)``
    The unit's network rebuilt from the model's settings, with its trained ``state`` loaded.
``to_scores_of(settings)`` (None: the outputs)
    How the network's outputs become the scores (fine-tuning's per-AU heads: the logit
    difference).
``probabilities`` (False)
    The run reports its scores and thresholds as probabilities (transfer).

Such a run is loaded by :func:`classify.loaders.load_face_run` (the inference side) and saved
by :func:`save_face_run` (here: training writes it).
"""

from classify.learn.loop import save_units, write_model


def face_kind(name, method, *, save=None, **fields):
    """Return the :class:`RunKind` of runs of ``method`` (a Method class) over faces (``save``:
    how its run folder's model is written, default :func:`save_face_run`; ``fields``: the
    kind's others, ``train``, ``command``, ``help``...)."""
    from classify.netkinds import network_kind

    return network_kind(name, network=method.network, to_scores_of=method.to_scores_of,
                        probabilities=method.probabilities, save=save or save_face_run, **fields)


def save_face_run(folder, record):
    """The ``save`` of a kind over faces: each unit's log and curves moved in from the work
    folder, and the model (one tensor group per unit, :func:`classify.learn.loop.write_model`)."""
    method, plan = record.method, record.plan
    work = plan.workspace.models_dir(plan.dataset, plan.run).with_name(f".{plan.run}.partial")
    record.units = save_units(folder, work, record.results)
    faces, splits = record.inputs.faces, record.splits
    write_model(folder, record, preprocessing={**method.preprocessing(record.aus, method.info),
                                               "alignment": faces["settings"]},
                faces=faces["fingerprint"], folds=[s.name for s in splits] if len(splits) > 1 else [],
                **method.model_settings(record.aus, splits, method.info))
