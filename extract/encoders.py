"""Encoders: aligned uint8 faces in, codes out — one interface over CNNs, HOG and dlib.

Every encoder is called on a batch of aligned faces, ``(N, H, W, 3)`` uint8 RGB (a numpy array
or a torch tensor, as :meth:`featbench.align.AlignedFaces.read` returns), and returns
``(N, dims)`` float32 codes. For CNNs the preprocessing (uint8 -> float, resize only when the
face is not already the network's input size, normalisation) is the first module of the
network's forward, so it runs on the whole batch, on the device, with no per-image Python.
"""

from dataclasses import dataclass

import numpy as np

from .registry import BackboneSpec, get_spec


def resolve_device(device="auto"):
    """Return ``"cuda"`` or ``"cpu"`` for ``--device auto|cpu|cuda``."""
    from featbench.errors import UsageError

    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (use --device cpu)")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise UsageError(f"--device {device}: choose auto, cpu or cuda")
    return str(device)


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
        mean = np.asarray(mean, np.float32)
        if mean.ndim == 3 and mean.shape[:2] != (size, size):
            mean = mean.reshape(-1, 3).mean(axis=0)  # a mean image of another size: its mean RGB
        mean_t = (torch.from_numpy(mean.reshape(1, 3, 1, 1).copy()) if mean.ndim == 1
                  else torch.from_numpy(mean.transpose(2, 0, 1)[None].copy()))

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
    """

    spec: BackboneSpec
    weights_id: str
    device: str = "cpu"

    @property
    def dims(self):
        return self.spec.dims

    @property
    def input_size(self):
        return self.spec.input_size

    def __call__(self, faces):
        """Return the (N, dims) float32 codes of (N, H, W, 3) uint8 faces."""
        raise NotImplementedError


class TorchEncoder(Encoder):
    """A CNN truncated at its code layer, preprocessing fused into its forward.

    Runs under ``torch.inference_mode`` with channels-last weights; on CUDA it takes pinned
    host batches with ``non_blocking`` copies and autocasts to bf16 (fp16 where bf16 is not
    supported).
    """

    def __init__(self, spec, weights_id, device, module, *, autocast=None):
        super().__init__(spec, weights_id, device)
        import torch

        self.module = module.to(device).to(memory_format=torch.channels_last).eval()
        if autocast is None and device.startswith("cuda"):
            autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.autocast = autocast

    def forward_tensor(self, x):
        """Codes of a uint8 NHWC tensor already on the device; returns a float32 tensor."""
        import torch

        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type="cuda", dtype=self.autocast):
                    return self.module(x).float()
            return self.module(x)

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
    """Dalal-Triggs HOG of the grey face, vectorised over the batch (see :func:`hog_batch`)."""

    def __call__(self, faces):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(faces)) if isinstance(faces, np.ndarray) else faces
        x = x.permute(0, 3, 1, 2).float()
        size = self.spec.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1) / 255.0
        return hog_batch(grey).numpy()


def hog_batch(grey, *, cell=8, block=2, bins=9, eps=1e-5):
    """HOG descriptors of a batch of grey images, as scikit-image's ``hog`` computes them.

    Central-difference gradients (zero on the border), unsigned orientation in ``bins`` hard bins
    over [0, 180), magnitude averaged per ``cell`` x ``cell`` pixels, ``block`` x ``block`` cell
    blocks normalised with L2-Hys (clip at 0.2).

    Parameters
    ----------
    grey : torch.Tensor
        (N, H, W) float images; H and W multiples of ``cell``.

    Returns
    -------
    torch.Tensor
        (N, bh * bw * block * block * bins) float32, block-major as scikit-image's
        ``feature_vector=True`` output.
    """
    import torch

    n, h, w = grey.shape
    gr = torch.zeros_like(grey)
    gc = torch.zeros_like(grey)
    gr[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    gc[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    mag = torch.hypot(gr, gc)
    ori = torch.rad2deg(torch.atan2(gr, gc)) % 180.0
    idx = (ori * (bins / 180.0)).long().clamp_(0, bins - 1)
    hist = torch.zeros(n, h, w, bins, dtype=grey.dtype)
    hist.scatter_(3, idx.unsqueeze(-1), mag.unsqueeze(-1))
    ch, cw = h // cell, w // cell
    cells = hist.view(n, ch, cell, cw, cell, bins).mean(dim=(2, 4))  # (n, ch, cw, bins)
    bh, bw = ch - block + 1, cw - block + 1
    blocks = torch.stack([torch.stack([cells[:, r:r + bh, c:c + bw] for c in range(block)], 3)
                          for r in range(block)], 3)  # (n, bh, bw, block, block, bins)
    blocks = blocks.reshape(n, bh, bw, -1)
    blocks = blocks / torch.sqrt((blocks ** 2).sum(-1, keepdim=True) + eps ** 2)
    blocks = blocks.clamp_(max=0.2)
    blocks = blocks / torch.sqrt((blocks ** 2).sum(-1, keepdim=True) + eps ** 2)
    return blocks.reshape(n, -1).float()


class DlibEncoder(Encoder):
    """dlib's face recognition ResNet on 150x150 chips of the aligned faces (128-d).

    dlib runs one CPU thread per call but releases the GIL, so a batch is split over
    ``threads`` copies of the network (one each: a dlib net is not safe to share between
    concurrent calls).
    """

    def __init__(self, spec, weights_id, path, *, threads=None):
        super().__init__(spec, weights_id, "cpu")
        import os

        self.path = str(path)
        self.threads = max(1, int(threads or min(4, os.cpu_count() or 1)))
        self._nets = [self._load() for _ in range(self.threads)]
        self._pool = None

    def _load(self):
        import dlib

        return dlib.face_recognition_model_v1(self.path)

    def _encode(self, net, chips):
        return [np.asarray(d) for d in net.compute_face_descriptor(chips)] if chips else []

    def __call__(self, faces):
        import cv2

        size = self.spec.input_size
        chips = [np.ascontiguousarray(f if f.shape[:2] == (size, size)
                                      else cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA))
                 for f in np.asarray(faces)]
        if not chips:
            return np.zeros((0, self.dims), np.float32)
        k = min(self.threads, len(chips))
        parts = [chips[i::k] for i in range(k)]  # interleaved, re-interleaved below
        if k == 1:
            done = [self._encode(self._nets[0], parts[0])]
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="featbench-dlib")
            done = list(self._pool.map(self._encode, self._nets[:k], parts))
        out = np.empty((len(chips), self.dims), np.float32)
        for i, codes in enumerate(done):
            out[i::k] = np.asarray(codes, np.float32).reshape(len(codes), self.dims)
        return out


def create_encoder(model, *, weights=None, device="cpu"):
    """Build the encoder of ``model`` (a registry name or spec) with ``weights``.

    Parameters
    ----------
    model : str or BackboneSpec
    weights : str, optional
        ``--weights`` (None: the spec's default).
    device : str
        ``auto``, ``cpu`` or ``cuda``; HOG and dlib always run on the CPU.

    Raises
    ------
    UsageError
        Unknown model or device.
    WeightsError
        Weights unavailable or not fitting.
    """
    from .weights import load_network, parse_weights, pretrained_path, weights_identity

    spec = model if isinstance(model, BackboneSpec) else get_spec(model)
    choice = parse_weights(weights, spec)
    if spec.kind == "hog":
        return HogEncoder(spec, "none")
    if spec.kind == "dlib":
        from .weights import missing_weights_error

        path, exists = (choice.path, True) if choice.mode == "file" else pretrained_path(spec)
        if not exists:
            raise missing_weights_error(spec, path)
        return DlibEncoder(spec, weights_identity(spec, choice), path)
    net = load_network(spec, choice)
    import torch

    module = torch.nn.Sequential(create_preprocess(spec, mean=net.mean), net.module)
    return TorchEncoder(spec, net.weights_id, resolve_device(device), module)


__all__ = ["Encoder", "TorchEncoder", "HogEncoder", "DlibEncoder", "create_encoder",
           "create_preprocess", "hog_batch", "resolve_device"]
