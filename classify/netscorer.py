"""Runs whose trained network *is* the classifier: fine-tuned CNNs (``ft``) and transfer runs.

A ``featbench classify`` run reads codes of a frozen network and applies per-AU classifiers to
them; a ``featbench finetune`` or ``featbench transfer`` run maps aligned faces straight to
per-AU scores. Both fit :class:`classify.scorer.RunModel`: the trained network stands where
the encoder stood (:class:`NetworkScores`: crops -> its scores) and each AU's "classifier" is
one column of those scores (:class:`NetworkOutput`), read through the classifier's
``codes_key`` = ``(network, weights, region)``. Their run kinds (:mod:`classify.learn.facekind`)
build them from a model file (a run folder or an export).

What is reproduced, from what each run did to its own test faces, all read from the run's
``manifest.json`` and its safetensors files:

``ft`` (:mod:`classify.finetune`)
    each unit (``model``, ``<AU>`` or ``<region>``; ``<unit>-<fold>`` per fold) rebuilt by
    :func:`classify.finetune.unit_network`; its faces are what the unit's
    :class:`~featbench.core.facesource.FaceInput` (in the manifest) says, as the run's face
    source gave them; the score is the method's (``logit(present) - logit(absent)`` per-au, the
    AU's logit multilabel), the decision ``score > threshold`` with the unit's threshold.
``transfer`` (:mod:`classify.transfer`)
    stage 2's network rebuilt by :func:`classify.transfer.load_model`; full faces as the cache
    stores them (the network's first layer resizes them); the score is the AU's probability
    (sigmoid of the logit, as the run's predictions file stores it), the decision
    ``probability > threshold`` (the thresholds tuned on validation, as probabilities).

Every network scores through the one inference path of training
(:func:`classify.learn.method.score_batches`). The trained weights are read from the model
file when the network is opened, one unit at a time; the sha256 of the unit's safetensors file
(recorded in the manifest, kept by an export) is the weights identity
``finetuned:<run>[/<unit>] sha256:...``.
"""

import numpy as np

from classify.learn.method import score_batches
from extract.encoders import autocast_dtype, resolve_device


class NetworkScores:
    """A trained network as predict's encoder: aligned uint8 faces -> its (n, outputs) scores.

    Parameters
    ----------
    tensors : callable
        ``tensors()`` -> the network's state (name -> array), read when the network is opened.
    sha256 : str
        The digest of the unit's safetensors file (the trained weights' identity).
    build : callable
        ``build(state)`` -> the network with ``state`` (name -> tensor) loaded.
    face_input : FaceInput
        What the network reads of the aligned faces.
    start_weights : str
        The weights training started from (random ones are flagged in predict's outputs).
    to_scores : callable, optional
        The method's map from the network's outputs to its scores (fine-tuning's per-AU heads:
        ``logit(present) - logit(absent)``); None: the outputs.
    """

    def __init__(self, tensors, *, sha256, build, face_input, start_weights="", to_scores=None):
        self.tensors, self.sha256, self.build, self.input = tensors, sha256, build, face_input
        self.start_weights, self.to_scores = str(start_weights or ""), to_scores
        self._net, self.device, self._dtype = None, "cpu", None

    @property
    def input_size(self):
        return self.input.size

    def face_input(self, region):
        """What the network reads (:class:`FaceInput`; its unit's region)."""
        return self.input

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
        return score_batches(self._net, [torch.from_numpy(np.ascontiguousarray(crops))],
                             device=self.device, dtype=self._dtype, to_scores=self.to_scores)


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
