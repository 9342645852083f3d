"""The run kinds of the learned methods: ``lstm``, ``ft``, ``transfer`` (the registry's entries).

A kind says how its runs train, save and load (:class:`classify.kinds.RunKind`). Here the two
sides are kept apart: the training parts (the method, the save, the options, the trainer) are
*named* (:class:`featbench.core.registry.Lazy`: imported the first time they are called, from the
method modules :mod:`classify.lstm`, :mod:`classify.finetune`, :mod:`classify.transfer`, which
need the training loop), while the loading parts are the inference side's: the one loader
(:mod:`classify.loaders`) over the network each unit's module rebuilds
(:mod:`classify.lstm_net`, :mod:`classify.ft_net`, :mod:`classify.transfer_net`). So
``featbench predict`` or ``featbench export`` of a learned run, and the check of its model file,
import and run no training module.

:func:`network_kind` makes the kind of any method whose networks map aligned faces to per-AU
scores from its network builder (:func:`classify.learn.facekind.face_kind` makes one from a
method class, for a plug-in or a test's toy method).
"""

from functools import partial

from featbench.core.registry import lazy
from extract.weights import MEAN_KEY

from classify.kinds import RunKind
from classify.loaders import load_face_run, load_units, lstm_scorer
from classify.modelcheck import LSTM_SPEC, network_spec

#: the tensor of a fine-tuned unit that its build reads as a value (the mean it subtracts)
FT_MEAN = MEAN_KEY

#: the ``save`` of a kind over faces, unless it says its own (:mod:`classify.learn.facekind`)
SAVE_FACE_RUN = lazy("classify.learn.facekind:save_face_run")


def network_kind(name, *, network, to_scores_of=None, probabilities=False, save=SAVE_FACE_RUN,
                 schema=None, values=(), extra_groups=(), **fields):
    """Return the :class:`RunKind` of runs whose networks map aligned faces to per-AU scores.

    Parameters
    ----------
    network : callable
        ``network(settings, unit, state)``: a unit's trained network rebuilt from its run's
        model settings (loading, and the model check on the meta device).
    to_scores_of, probabilities
        :func:`classify.loaders.load_face_run`'s.
    save : callable
        How the run folder's model is written (default: each unit's network,
        :func:`classify.learn.facekind.save_face_run`).
    schema : str, optional
        The pydantic model of its manifest's settings (:mod:`classify._kindschemas`): its model
        files are then checked network by network (:func:`classify.modelcheck.network_spec`,
        with ``values``, tensors the build reads, and ``extra_groups``, groups never loaded);
        None: the manifest's schema only.
    **fields
        The kind's other fields (``train``, ``trained_by``, ``command``, ``help``...).
    """
    return RunKind(name=name, load=partial(load_face_run, network=network, to_scores_of=to_scores_of,
                                           probabilities=probabilities),
                   save=save, inputs="faces", **fields,
                   spec=None if schema is None else network_spec(network, schema, values=values,
                                                                 extra_groups=extra_groups))


def load_lstm(model_file):
    """The ``lstm`` kind's ``load``: each AU one output of its unit's network, carried along face
    tracks (:func:`classify.loaders.lstm_scorer`)."""
    return load_units(model_file, lstm_scorer(model_file, lazy("classify.lstm_net:network_of")))


#: ``lstm``: an LSTM over each subject's sequence of codes (``featbench classify --clf lstm``)
LSTM = RunKind(name="lstm", load=load_lstm, save=lazy("classify.lstm:save_fits"),
               train="classify.run:classify_run", trained_by="classify",
               command="featbench classify --clf lstm", method=lazy("classify.lstm:lstm_method"),
               options=lazy("classify.lstm:options_from"), spec=LSTM_SPEC,
               help="LSTM over each subject's code sequence, epoch chosen on validation")

#: ``ft``: a fine-tuned CNN per AU (or multilabel), its units rebuilt by
#: :func:`classify.ft_net.unit_network`
FT = network_kind("ft", network=lazy("classify.ft_net:unit_network"),
                  to_scores_of=lazy("classify.ft_net:scores_of"), schema="ft", values=(FT_MEAN,),
                  train="classify.finetune:finetune_run", trained_by="finetune",
                  command="featbench finetune",
                  help="a CNN fine-tuned for AU occurrence (per-AU or multilabel heads)")

#: ``transfer``: Method B's stage-2 network on full faces, scores and thresholds as
#: probabilities; its ``backbone`` group is for ``featbench extract``, never loaded
TRANSFER = network_kind("transfer", network=lazy("classify.transfer_net:unit_network"),
                        probabilities=True, save=lazy("classify.transfer:save_stage2"),
                        schema="transfer", extra_groups=("backbone",),
                        train="classify.transfer:transfer_run",
                        trained_by="transfer", command="featbench transfer",
                        help="an expression-pretrained network fine-tuned for AUs")
