"""Runs whose trained network *is* the classifier: fine-tuned CNNs (``ft``) and transfer runs.

A ``featbench classify`` run reads codes of a frozen network and applies per-AU classifiers to
them; a ``featbench finetune`` or ``featbench transfer`` run maps aligned faces straight to
per-AU scores. Both fit :class:`classify.scorer.RunModel`: the trained network stands where
the encoder stood (:class:`NetworkScores`: crops -> its outputs) and each AU's "classifier" is
one column of those outputs (:class:`NetworkOutput`), read through the classifier's
``codes_key`` = ``(network, weights, region)``. Their run kinds (:mod:`classify.netkinds`)
build them from a model file.

What is reproduced, from what each run did to its own test faces:

``ft`` (:mod:`classify.finetune`)
    each unit (tensor group ``model``, ``<AU>`` or ``<region>``; ``<unit>-<fold>`` per fold)
    rebuilt by :func:`classify.finetune.unit_network` from the manifest's settings; its faces are the
    unit's region (or the full face) resized to the unit's input size exactly as the run's
    :class:`~classify.finetune.FaceReader` resized them; the score is ``logit(present) -
    logit(absent)`` (per-au head) or the AU's logit (multilabel), the decision ``score >
    threshold`` with the unit's threshold (0, or tuned on validation).
``transfer`` (:mod:`classify.transfer`)
    stage 2's network rebuilt by :func:`classify.transfer.build_net` (tensor group ``model``); full faces as the
    cache stores them (the network's first layer resizes them); the score is the AU's
    probability (sigmoid of the logit, as the run's predictions file stores it), the decision
    ``probability > threshold`` (the thresholds tuned on validation, as probabilities).

The trained weights are read from the model file when the network is opened (lazily: a unit
at a time); the sha256 of the unit's tensor file is its weights identity
``finetuned:<run>[/<unit>] sha256:...``.
"""

import numpy as np

from classify.finetune import score_faces
from classify.training import autocast_dtype
from extract.encoders import resolve_device


class NetworkScores:
    """A trained network as predict's encoder: aligned uint8 faces -> its (n, outputs) scores.

    Parameters
    ----------
    kind : {"ft", "transfer"}
    tensors : callable
        ``tensors()`` -> the network's state (name -> array), read when the network is opened.
    sha256 : str
        The digest of the saved tensors (the trained weights' identity).
    input_size : int
        The side the network was trained on.
    crop_to_input : bool
        Resize every crop (the full face too) to ``input_size`` before the network, as a
        fine-tuning run's face reader did; else a full face goes in as aligned (the network's
        first layer resizes it) and a region crop at ``input_size``.
    start_weights : str
        The weights training started from (identity string): random ones are flagged in outputs.
    build : callable
        ``build(state)`` -> the network (``torch.nn.Module``) with ``state`` (name -> tensor) loaded.
    head : {"per-au", "multilabel"}
        How its outputs become per-AU scores (:func:`classify.finetune.score_faces`).
    """

    def __init__(self, kind, tensors, *, sha256, input_size, crop_to_input, start_weights, build,
                 head="multilabel"):
        self.kind, self.tensors, self.sha256, self.build, self.head = kind, tensors, sha256, build, head
        self.input_size, self.crop_to_input = int(input_size), bool(crop_to_input)
        self.start_weights = str(start_weights or "")
        self._net, self.device, self._dtype = None, "cpu", None

    def crop_size(self, region):
        """The size ``region``'s crops are cut at (None: the aligned face as it is)."""
        return self.input_size if self.crop_to_input or region != "full" else None

    def open(self, device="auto"):
        """Build the network on ``device`` (``auto``: CUDA when present); return self."""
        import torch

        self.device = resolve_device(device)
        state = {k: torch.from_numpy(np.array(v)) for k, v in self.tensors().items()}
        self._net = self.build(state).to(self.device).eval()
        self._dtype = autocast_dtype(self.device)  # AMP on CUDA, as the run scored its test faces
        return self

    def __call__(self, crops):
        """Return the (n, outputs) float32 scores of ``crops`` (n, S, S, 3) uint8."""
        import torch

        if self._net is None:
            self.open("cpu")
        with torch.inference_mode():  # the run's own scoring of its test faces
            return score_faces(self._net, crops, self.head, device=self.device, dtype=self._dtype)


class NetworkOutput:
    """One AU's column of a :class:`NetworkScores`' output, as a classifier.

    ``codes_key`` names the output it reads in :meth:`classify.scorer.RunModel.score`'s
    ``codes``; ``decision_function`` returns the column (``probability``: its sigmoid).
    """

    def __init__(self, network, model, weights, region, column, *, probability=False):
        self.network = network
        self.codes_key = (str(model), str(weights), str(region))
        self.column, self.probability = int(column), bool(probability)

    def decision_function(self, X):
        x = np.asarray(X, np.float64)[:, self.column]
        return 1.0 / (1.0 + np.exp(-x)) if self.probability else x
