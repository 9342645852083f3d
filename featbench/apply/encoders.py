"""The networks a run reads, opened for ``featbench predict``, and the codes of aligned faces.

A classify run (LDA, SVM, LSTM, ridge...) was trained on codes of a frozen network: the
network is built from its registry name and the weights identity stored with the codes
(:func:`open_encoder`: the weights choice that reproduces them, checked against their sha256;
a fine-tuned network's file found in the workspace or carried by an exported model). A
fine-tuned (``ft``) or transfer run carries its trained network, which stands where the encoder
stands and whose outputs are the scores (:class:`classify.infer.NetworkScores`).

:func:`encode_faces` gives each network the crops its run was trained on, by the one rule of the
face source (:meth:`featbench.core.facesource.FaceInput.crops`).
"""

from pathlib import Path

import numpy as np

from featbench.apply.runmodel import finetuned_file
from featbench.core.errors import FeatbenchError, WeightsError
from featbench.core.identity import WeightsId
from featbench.core.workspace import Workspace

from extract.encoders import create_encoder
from extract.registry import get_spec
from extract.weights import WeightsChoice, file_sha256, pretrained_path

#: faces encoded and classified together
DEFAULT_BATCH = 32


def open_encoder(model, weights, *, run, device="auto", weights_file=None, input_size=None):
    """Build the encoder that reproduces the codes ``run`` was trained on.

    Parameters
    ----------
    model : str
        The network's registry name.
    weights : WeightsId
        The identity stored with the run's codes.
    run : RunKey or str
        The run (for messages).
    device : str
    weights_file : str, optional
        The state dict, for a run whose codes came from a user's weights file (identity
        ``file sha256:...``) or a fine-tuned network's (``finetuned:<run> sha256:...``): it is
        checked against that hash.
    input_size : int, optional
        The face side the codes were extracted at (``featbench extract --input-size``).

    Raises
    ------
    WeightsError
        The weights cannot be found or are not the ones the run's codes came from; the message
        names the run and the weights.
    """
    wid = weights
    what = f"run {run} was trained on codes of {model} with weights {str(wid)!r}"
    choice = _weights_choice(wid, get_spec(model), what, weights_file)
    try:
        encoder = create_encoder(model, weights=choice, device=device, input_size=input_size)
    except WeightsError as exc:
        raise WeightsError(f"{what}, which cannot be loaded here: {exc}") from None
    got = WeightsId.parse(encoder.weights_id)  # the extract layer's string form
    if not wid.tag:  # stored before identities carried the tag (imagenet): the same file
        got = got.untagged()
    if wid.kind == "finetuned" and got.kind in ("file", "finetuned"):
        same = got.sha256 == wid.sha256 or not wid.sha256  # the same file, wherever it lies
    else:
        same = (got.kind, got.name, got.seed) == (wid.kind, wid.name, wid.seed)
    if not same:
        raise WeightsError(f"{what}, but here they load as {str(got)!r}")
    return encoder


def _weights_choice(wid, spec, what, weights_file):
    """The :class:`~extract.weights.WeightsChoice` that loads ``wid`` here (checked against its sha256)."""
    if wid.kind == "none":
        return WeightsChoice("none")
    if wid.kind == "random":
        return WeightsChoice("random", seed=int(wid.seed))
    if wid.kind == "pretrained":
        tag = wid.tag  # imagenet:IMAGENET1K_V2 -> IMAGENET1K_V2
        path, cached = pretrained_path(spec, tag or None)
        if wid.sha256 and cached and file_sha256(path) != wid.sha256:
            raise WeightsError(f"{what}, but {path} has another sha256: they cannot be reproduced here")
        return WeightsChoice("pretrained", tag=tag or "imagenet")
    if weights_file is None:  # file / finetuned
        where = (f" (featbench finetune / transfer run {wid.name} is not in this workspace)"
                 if wid.kind == "finetuned" else "")
        raise WeightsError(f"{what}, a file that is not given here{where}: pass the same file "
                           "with --weights PATH")
    if wid.sha256 and file_sha256(weights_file) != wid.sha256:
        raise WeightsError(f"{what}, but {weights_file} is another file (sha256 differs)")
    return WeightsChoice("file", path=Path(weights_file))


def open_encoders(model, *, device="auto", weights_file=None, workspace=None):
    """Return ``{(network, weights): encoder}`` of every network ``model`` reads.

    A fine-tuned or transfer run carries its trained network (:class:`classify.infer.NetworkScores`);
    a classify run's network is built from its name and weights identity (:func:`open_encoder`),
    a fine-tuned network's file found in ``workspace`` or carried by an exported model. A
    failure names the model file the run came from (its weights identity, its network's name
    are that file's).
    """
    try:
        return _open_encoders(model, device=device, weights_file=weights_file, workspace=workspace)
    except FeatbenchError as exc:
        where = getattr(model.source, "where", None)
        if where is None or where in str(exc):
            raise
        raise type(exc)(f"{where}: {exc}") from None


def _open_encoders(model, *, device, weights_file, workspace):
    import tempfile

    out = {}
    for key in model.networks():
        own = model.network_for(key)
        if own is not None:
            out[key] = own.open(device)
            continue
        carried = model.weights_blob(key[1])
        kw = dict(run=model.run, device=device, input_size=model.input_size_for(key))
        if carried is None:
            found = finetuned_file(workspace, key[1])
            out[key] = open_encoder(*key, weights_file=found or weights_file, **kw)
            continue
        with tempfile.TemporaryDirectory(prefix="featbench-weights-") as tmp:
            name, blob = carried
            path = Path(tmp) / Path(name).name  # its suffix says how it is read (.safetensors)
            path.write_bytes(blob)
            out[key] = open_encoder(*key, weights_file=path, **kw)
    return out


def encode_faces(model, encoders, images, boxes, *, batch_size=DEFAULT_BATCH, have=None):
    """Return ``{(network, weights, region): codes}`` of aligned faces, as the run's codes were made.

    Each encoder gets the crops its run was trained on, by the one rule of the face source
    (:meth:`featbench.core.facesource.FaceInput.crops` of the encoder's ``face_input``).
    ``have``: codes computed already (another run's), kept and not computed again.
    """
    codes = dict(have or {})
    for (net, weights), regions in model.networks().items():
        enc = encoders[(net, weights)]
        for region in sorted(r for r in regions if (net, weights, r) not in codes):
            face_input = enc.face_input(region)
            parts = [np.asarray(enc(face_input.crops(images[a:a + batch_size], boxes[a:a + batch_size])),
                                dtype=np.float32) for a in range(0, len(images), batch_size)]
            codes[(net, weights, region)] = np.concatenate(parts)
    return codes


def encode_batch(items, runs, encoders, batch_size=DEFAULT_BATCH):
    """The codes of the faces of ``items`` for every one of ``runs`` (a network two runs read
    is encoded once): ``{(network, weights, region): codes}``, empty without faces."""
    faces = [f for it in items for f in it.faces]
    codes = {}
    if faces:
        images, boxes = np.stack([f.image for f in faces]), np.stack([f.boxes for f in faces])
        for m in runs:
            codes = encode_faces(m, encoders, images, boxes, batch_size=batch_size, have=codes)
    return codes


def join_codes(parts):
    """Codes of consecutive batches as one: ``{key: concatenated codes}`` (faceless ones skipped)."""
    parts = [c for c in parts if c]
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]} if parts else {}


def open_all(runs, device, weights_file, workspace):
    """The encoders of every network ``runs`` read (one per network); ``workspace`` (a folder or
    :class:`~featbench.core.workspace.Workspace`; None for a model file) holds fine-tuned
    networks' files."""
    if workspace is not None and not isinstance(workspace, Workspace):
        workspace = Workspace(workspace)
    return {k: e for m in runs for k, e in open_encoders(
        m, device=device, weights_file=weights_file, workspace=workspace).items()}
