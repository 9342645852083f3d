"""A run of a method over aligned faces: its plan, handed to the one driver.

:func:`face_run` is what ``featbench finetune`` (and any method over faces: a test's toy method)
calls once its method is built: it makes the run's :class:`~classify.plan.RunPlan` (faces as
inputs, the protocol's folds) and hands it to :func:`classify.driver.execute`, which checks the
aligned-face cache against the frame table, builds one job per (fold, unit), trains them through
the one loop (:func:`classify.learn.pool.run_units`) and writes the run through the one writer
(:func:`classify.learn.writer.write_record`; the model by the kind's ``save``,
:func:`classify.learn.facekind.save_face_run`), a failure recorded as the run's summary row.

What a method adds to :class:`~classify.learn.method.Method` for it (defaults in parentheses):

``settings_json()``
    Its settings as JSON, part of every unit's identity (checkpoints, finished units).
``model_settings(aus, splits, info)``
    The kind's own part of the manifest: what rebuilds a unit's network and says what it reads
    (its ``face_input`` per unit: :meth:`featbench.core.facesource.FaceInput.to_json`).
``preprocessing(aus, info)``
    The manifest's preprocessing (model, regions, input size, mean / std); alignment is added.
``row_extra(record, au)`` (none)
    The method's own columns of an AU's row of the run's table.
``record(info)`` (none)
    More of settings.json.
``prediction_attrs`` (model, region, clf, weights, protocol, dataset)
    The summary columns the predictions file records.
"""

from classify.driver import check_cache  # noqa: F401 - its home before the one driver


def face_run(method, workspace, dataset, table, *, run, aus, protocol, seed, meta, info=None,
             progress=True, t0=None, kind=None, scheduler=None):
    """Train ``method`` on the aligned faces of ``table`` and write run ``run``; return its dict.

    Builds the run's :class:`~classify.plan.RunPlan` and hands it to the one driver
    (:func:`classify.driver.execute`).

    Parameters
    ----------
    method : Method
        Built on ``aligned_path`` (``method.aligned_path``).
    run : str or RunKey
    meta : dict
        The summary row's columns (``model``, ``region``, ``clf``, ``weights``...); a failure
        from here on becomes the run's row.
    info : dict, optional
        What the method's network says of itself (:meth:`model_settings` gets it).
    kind : RunKind, optional
        The run's kind (default: one made for the method's class, :func:`face_kind`).
    scheduler : str, optional
        A Dask scheduler address (:mod:`classify.learn.pool`).

    Returns
    -------
    dict
        :func:`classify.learn.writer.write_record`'s, plus ``units`` (each unit's record).
    """
    from featbench.core.identity import RunKey

    from classify.driver import FaceInputs, execute
    from classify.learn.facekind import face_kind
    from classify.plan import PlanData, RunPlan

    method.info = info or {}
    key = run if isinstance(run, RunKey) else RunKey.parse(run)
    plan = RunPlan(workspace=workspace, data=PlanData(table, protocol=protocol, seed=seed),
                   kind=kind or face_kind(method.kind, type(method)), task=method.task,
                   model=meta.get("model", ""), region=meta.get("region", "full"), protocol=protocol,
                   aus=tuple(aus), seed=seed, key=key, meta=meta, inputs="faces",
                   progress=progress, scheduler=scheduler)
    out = execute(plan, FaceInputs(method.aligned_path), lambda plan, inputs: method,
                  identity=_identity, talk=True)
    if out is not None:
        out["units"] = {r.name: r.record() for r in out["record"].results}
    return out


def _identity(method, inputs):
    """A unit's identity beside its own: the method's settings, task, AUs, data and faces."""
    plan = inputs.plan
    return {**method.settings_json(), "task": method.task.name, "aus": list(plan.aus),
            "table": plan.table.fingerprint(), "faces": inputs.faces["fingerprint"]}
