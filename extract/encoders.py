"""Encoders: aligned uint8 faces in, codes out — one interface over CNNs, HOG and dlib.

Every encoder is called on a batch of aligned faces, ``(N, H, W, 3)`` uint8 RGB (a numpy array
or a torch tensor, as :meth:`featbench.core.align.AlignedFaces.read` returns), and returns
``(N, dims)`` float32 codes. For CNNs the preprocessing (uint8 -> float, resize only when the
face is not already the network's input size, normalisation) is the first module of the
network's forward, so it runs on the whole batch, on the device, with no per-image Python.
"""

import functools
from dataclasses import dataclass

import numpy as np

from featbench.core.errors import UsageError
from featbench.core.facesource import FaceInput

from extract.registry import BackboneSpec, get_spec
from extract.weights import load_network, parse_weights, pretrained_path, weights_identity


def resolve_device(device="auto"):
    """Return ``"cuda"`` or ``"cpu"`` for ``--device auto|cpu|cuda``."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (use --device cpu)")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise UsageError(f"--device {device}: choose auto, cpu or cuda")
    return str(device)


def autocast_dtype(device, amp=True):
    """Return the autocast dtype for ``device`` (None: full precision; CPU always).

    bf16 where the CUDA device supports it, else fp16: what every network of featbench trains
    and infers in on CUDA.
    """
    import torch

    if not amp or not str(device).startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def run_network(module, x, *, dtype=None, device=None):
    """The one forward pass of inference: ``module(x)`` under ``torch.inference_mode`` and
    autocast to ``dtype`` (None: none), as float32.

    Every network of featbench scores through here: the encoders' codes
    (:meth:`TorchEncoder.forward_tensor`) and the learned networks' scores
    (:func:`classify.infer.score_batches`). ``x`` is a tensor (or a ``PackedSequence``)
    on the module's device, or moved to ``device`` first (:func:`to_device`).
    """
    import torch

    if device is not None:
        x = to_device(x, device)
    device = (x.data if hasattr(x, "batch_sizes") else x).device.type
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype,
                                                enabled=dtype is not None):
        return module(x).float()


def to_device(batch, device, *, channels_last=False):
    """Move a batch (tensor, tuple / list / dict of them, or an object with ``.to``) to ``device``."""
    import torch
    from torch.nn.utils.rnn import PackedSequence

    if isinstance(batch, PackedSequence):  # a namedtuple: moved whole (batch_sizes stay on CPU)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last=channels_last) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, channels_last=channels_last) for v in batch)
    return batch.to(device) if hasattr(batch, "to") else batch


def create_preprocess(spec, *, mean=None):
    """Return the module ``(N, H, W, 3) uint8 -> (N, 3, S, S)`` normalised float, channels-last.

    Parameters
    ----------
    spec : BackboneSpec
    mean : numpy.ndarray, optional
        (3,) mean RGB or (S, S, 3) mean image replacing ``spec.mean`` (MatConvNet files).
    """
    import torch
    from torch import nn
    import torch.nn.functional as F

    size = spec.input_size
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    if mean is None:
        mean_t = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    else:
        from extract.weights import effective_mean

        mean = effective_mean(spec, mean)
        mean_t = (torch.from_numpy(mean.reshape(1, 3, 1, 1).copy()) if mean.ndim == 1
                  else torch.from_numpy(mean.transpose(2, 0, 1)[None].copy()))
        # from_numpy is always a CPU tensor; std is on the device a caller's context sets (the
        # model-file check builds networks under torch.device("meta")), and the two must match
        mean_t = mean_t.to(std.device)

    class Preprocess(nn.Module):
        """``(x * pixel_scale - mean) / std`` as one multiply-add, after an optional resize.

        The output reuses one float buffer from batch to batch: allocating (and page-faulting)
        a fresh 38 MB tensor per batch of 64 faces cost as much as the arithmetic. So the
        output of a call is valid until the next call (clone it to keep it).
        """

        def __init__(self):
            super().__init__()
            self.register_buffer("scale", spec.pixel_scale / std)
            self.register_buffer("shift", -(mean_t / std))
            self._out = None

        def forward(self, x):
            # an NHWC uint8 tensor permuted to NCHW *is* a channels-last tensor: no copy
            x = x.permute(0, 3, 1, 2)
            if x.shape[-2] != size or x.shape[-1] != size:
                x = F.interpolate(x.float(), size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)
                return torch.addcmul(self.shift, x, self.scale, out=x)
            out = self._out
            if (out is None or out.shape != x.shape or out.device != x.device
                    or out.is_inference() != torch.is_inference_mode_enabled()):
                out = torch.empty(x.shape, dtype=torch.float32, device=x.device,
                                  memory_format=torch.channels_last)
                self._out = out
            out.copy_(x)
            return torch.addcmul(self.shift, out, self.scale, out=out)

    return Preprocess()


@dataclass
class Encoder:
    """Base of the encoders: the spec, the weights' identity and where it runs.

    Attributes
    ----------
    spec : BackboneSpec
    weights_id : str
    device : str
    preprocessing : dict
        The normalisation applied to the faces (mean, std, pixel scale), as feature files
        record it; default: the spec's.
    """

    spec: BackboneSpec
    weights_id: str
    device: str = "cpu"
    preprocessing: dict = None

    def __post_init__(self):
        if self.preprocessing is None:
            from extract.weights import weights_source

            self.preprocessing = weights_source(self.spec).preprocessing()

    @property
    def dims(self):
        return self.spec.dims

    @property
    def input_size(self):
        return self.spec.input_size

    def face_input(self, region):
        """What this encoder reads of ``region`` (:class:`featbench.core.facesource.FaceInput`):
        a region crop at its input size, the full face as aligned (its first layer resizes)."""
        return FaceInput(region, self.input_size, resize_full=False)

    def __call__(self, faces):
        """Return the (N, dims) float32 codes of (N, H, W, 3) uint8 faces."""
        raise NotImplementedError


class TorchEncoder(Encoder):
    """A CNN truncated at its code layer, preprocessing fused into its forward.

    Runs under ``torch.inference_mode`` with channels-last weights; on CUDA it takes pinned
    host batches with ``non_blocking`` copies and autocasts to bf16 (fp16 where bf16 is not
    supported).
    """

    def __init__(self, spec, weights_id, device, module, *, autocast=None, preprocessing=None):
        super().__init__(spec, weights_id, device, preprocessing)
        import torch

        self.module = module.to(device).to(memory_format=torch.channels_last).eval()
        self.autocast = autocast_dtype(device) if autocast is None else autocast

    def forward_tensor(self, x):
        """Codes of a uint8 NHWC tensor already on the device; returns a float32 tensor."""
        return run_network(self.module, x, dtype=self.autocast)

    def to_device(self, faces):
        """Move a uint8 NHWC batch (numpy or tensor) to the device (pinned, non-blocking on CUDA)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(faces)) if isinstance(faces, np.ndarray) else faces
        if self.device.startswith("cuda"):
            if not x.is_pinned():
                x = x.pin_memory()
            return x.to(self.device, non_blocking=True)
        return x

    def __call__(self, faces):
        out = self.forward_tensor(self.to_device(faces))
        return out.cpu().numpy() if self.device != "cpu" else out.numpy()


class HogEncoder(Encoder):
    """Dalal-Triggs HOG of the grey face, vectorised over the batch (see :func:`hog_batch`).

    Plain numpy on one core: HOG is a chain of small element-wise steps, and torch's
    two-thread parallel regions cost more in synchronisation than they save here (an order of
    magnitude more when other processes share the CPUs).
    """

    def __call__(self, faces):
        import cv2

        faces = np.asarray(faces)
        size = self.spec.input_size
        grey = faces.astype(np.float32) @ np.float32([0.299 / 255, 0.587 / 255, 0.114 / 255])
        if grey.shape[1:] != (size, size):
            grey = np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)
                             for g in grey]) if len(grey) else np.zeros((0, size, size), np.float32)
        return hog_batch(grey)


def hog_batch(grey, *, cell=8, block=2, bins=9, eps=1e-5):
    """HOG descriptors of a batch of grey images, as scikit-image's ``hog`` computes them.

    Central-difference gradients (zero on the border), unsigned orientation in ``bins`` hard bins
    over [0, 180), magnitude averaged per ``cell`` x ``cell`` pixels, ``block`` x ``block`` cell
    blocks normalised with L2-Hys (clip at 0.2).

    Parameters
    ----------
    grey : numpy.ndarray
        (N, H, W) float images; H and W multiples of ``cell``.

    Returns
    -------
    numpy.ndarray
        (N, bh * bw * block * block * bins) float32, block-major as scikit-image's
        ``feature_vector=True`` output.
    """
    grey = np.asarray(grey, dtype=np.float32)
    n, h, w = grey.shape
    gr = np.zeros_like(grey)
    gc = np.zeros_like(grey)
    gr[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    gc[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    mag = np.hypot(gr, gc)
    ori = np.rad2deg(np.arctan2(gr, gc)) % 180.0
    b = np.minimum((ori * (bins / 180.0)).astype(np.int64), bins - 1)
    ch, cw = h // cell, w // cell
    # each pixel votes into (its image, its cell, its bin) of one flat histogram: one bincount
    cell_of = (np.arange(h) // cell)[:, None] * cw + (np.arange(w) // cell)[None, :]
    idx = (np.arange(n)[:, None, None] * (ch * cw) + cell_of[None]) * bins + b
    hist = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=n * ch * cw * bins)
    cells = (hist / (cell * cell)).reshape(n, ch, cw, bins)
    bh, bw = ch - block + 1, cw - block + 1
    blocks = np.stack([np.stack([cells[:, r:r + bh, c:c + bw] for c in range(block)], 3)
                       for r in range(block)], 3).reshape(n, bh, bw, -1)
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + eps ** 2)
    np.minimum(blocks, 0.2, out=blocks)
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + eps ** 2)
    return blocks.reshape(n, -1).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _dlib_net(path):
    """dlib's network of the file ``path``, loaded once per process and file (workers included).

    Keyed by the file, so two encoders of different files never share a network.
    """
    import dlib

    return dlib.face_recognition_model_v1(path)


def _dlib_encode(path, chips):
    """(k, 150, 150, 3) uint8 chips -> (k, 128) float32 by the network of ``path`` (in a worker or inline)."""
    out = _dlib_net(path).compute_face_descriptor(list(chips))
    return np.asarray([np.asarray(d) for d in out], np.float32).reshape(len(chips), -1)


class DlibEncoder(Encoder):
    """dlib's face recognition ResNet on 150x150 chips of the aligned faces (128-d).

    dlib runs one CPU thread per call and holds the GIL, so with ``processes`` > 1 a batch is
    split over that many worker processes, each holding its own copy of the network.
    """

    def __init__(self, spec, weights_id, path, *, processes=None):
        super().__init__(spec, weights_id, "cpu")
        import os

        self.path = str(path)
        self.processes = max(1, int(processes or min(4, os.cpu_count() or 1)))
        self._pool = None
        _dlib_net(self.path)  # inline copy: small batches, and a check that the file loads

    def _chips(self, faces):
        import cv2

        size = self.spec.input_size
        return np.stack([f if f.shape[:2] == (size, size)
                         else cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                         for f in np.asarray(faces)])

    def __call__(self, faces):
        if not len(faces):
            return np.zeros((0, self.dims), np.float32)
        chips = self._chips(faces)
        k = min(self.processes, len(chips) // 8)  # a few chips are not worth a round trip
        if k < 2:
            return _dlib_encode(self.path, chips)
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork (as torch's DataLoader does): spawn would re-run the caller's main script,
            # and the children only run dlib, never the parent's torch threads
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.processes, multiprocessing.get_context(method),
                                             initializer=_dlib_net, initargs=(self.path,))
        parts = np.array_split(chips, k)
        return np.concatenate(list(self._pool.map(_dlib_encode, [self.path] * k, parts)))

    def close(self):
        """Stop the worker processes (they also stop with the interpreter)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def create_encoder(model, *, weights=None, device="cpu", input_size=None):
    """Build the encoder of ``model`` (a registry name or spec) with ``weights``.

    Parameters
    ----------
    model : str or BackboneSpec
    weights : str, optional
        ``--weights`` (None: the spec's default).
    device : str
        ``auto``, ``cpu`` or ``cuda``; HOG and dlib always run on the CPU.
    input_size : int, optional
        Face side fed to a CNN instead of the spec's (default: the spec's; for the weights of
        a ``featbench finetune`` run, the size it was trained at).

    Raises
    ------
    UsageError
        Unknown model or device.
    WeightsError
        Weights unavailable or not fitting.
    """
    spec = model if isinstance(model, BackboneSpec) else get_spec(model)
    choice = parse_weights(weights, spec)
    if input_size is None and choice.mode == "file":
        from extract.weights import finetuned_settings

        input_size = ((finetuned_settings(choice.path) or {}).get("network") or {}).get("input_size")
    if input_size and spec.kind == "torch" and int(input_size) != spec.input_size:
        import dataclasses

        spec = dataclasses.replace(spec, input_size=int(input_size))
    if spec.kind == "hog":
        return HogEncoder(spec, "none")
    if spec.kind == "dlib":
        from extract.weights import missing_weights_error

        path, exists = (choice.path, True) if choice.mode == "file" else pretrained_path(spec)
        if not exists:
            raise missing_weights_error(spec, path)
        return DlibEncoder(spec, weights_identity(spec, choice), path)
    net = load_network(spec, choice)
    import torch

    module = torch.nn.Sequential(create_preprocess(spec, mean=net.mean), net.module)
    return TorchEncoder(spec, net.weights_id, resolve_device(device), module,
                        preprocessing=net.preprocessing)


__all__ = ["Encoder", "TorchEncoder", "HogEncoder", "DlibEncoder", "create_encoder",
           "create_preprocess", "hog_batch", "resolve_device"]
