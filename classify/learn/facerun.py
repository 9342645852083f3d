"""A run of a method over aligned faces: its plan, handed to the one driver.

:func:`face_run` is what ``featbench finetune`` (and any method over faces: a test's toy method)
calls once its method is built, with the run's :class:`~classify.plan.RunPlan` (:func:`face_plan`:
faces as inputs, the protocol's folds): it hands both to :func:`classify.driver.execute`, which
checks the aligned-face cache against the frame table, builds one job per (fold, unit), trains them through
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


def face_plan(method, workspace, table, *, run, aus, meta, protocol="paper", seed=0, **fields):
    """Return the :class:`~classify.plan.RunPlan` of a run of ``method`` over the aligned faces
    of ``table`` (``run``: its name or RunKey; ``meta``: its summary row's columns, ``model`` and
    ``region`` among them; the protocol's folds made from ``protocol`` and ``seed``).

    ``fields``: the plan's others (``progress``, ``scheduler``; ``kind``: default, one made for
    the method's class, :func:`classify.learn.facekind.face_kind`).
    """
    from featbench.core.identity import RunKey

    from classify.learn.facekind import face_kind
    from classify.plan import PlanData, RunPlan

    if "kind" not in fields:  # built only when not given (fine-tuning and transfer give theirs)
        fields["kind"] = face_kind(method.kind, type(method))
    return RunPlan(workspace=workspace, data=PlanData(table, protocol=protocol, seed=seed),
                   task=method.task, model=meta.get("model", ""), region=meta.get("region", "full"),
                   protocol=protocol, aus=tuple(aus), seed=seed,
                   key=run if isinstance(run, RunKey) else RunKey.parse(run), meta=meta,
                   inputs="faces", **fields)


def face_run(method, plan, *, info=None):
    """Train ``method`` on the aligned faces of ``plan`` (:func:`face_plan`) and write the run;
    return its dict (None on a torchrun rank but 0).

    Hands the plan to the one driver (:func:`classify.driver.execute`).

    Parameters
    ----------
    method : Method
        Built on ``aligned_path`` (``method.aligned_path``).
    plan : RunPlan
        The run's; a failure from the driver on becomes the run's row in summary.csv.
    info : dict, optional
        What the method's network says of itself (:meth:`model_settings` gets it).

    Returns
    -------
    dict
        :func:`classify.learn.writer.write_record`'s, plus ``units`` (each unit's record).
    """
    from classify.driver import FaceInputs, execute

    method.info = info or {}
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
