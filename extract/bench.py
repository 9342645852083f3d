"""``featbench bench extract``: how fast extraction is, against its limit and a hand-written loop.

One call measures, on the same frames and the same network configuration:

``featbench_fps``
    :func:`extract.extractor.extract_aligned` into a temporary feature file — reading the
    aligned-face cache, preprocessing in the forward, writing HDF5 — exactly what
    ``featbench extract`` runs once the faces are aligned (alignment is a one-off per data set,
    shared by every network; its own rate is reported as ``align_fps``).
``forward_fps``
    The network alone (channels-last, ``torch.inference_mode``, the same batch size) on
    preloaded, already-normalised tensors: the limit extraction can approach. Its batches run
    interleaved with featbench's, one after each (timed apart), so that both rates see the
    same load from anything else on the machine.
``loop_fps``
    The loop a user would write by hand: each frame read from its video with
    ``cv2.VideoCapture``, aligned with :func:`featbench.core.faces.align_face` from the table's
    landmarks, preprocessed per image with torchvision transforms (``ToTensor``, ``Resize``
    when needed, ``Normalize``), a plain fp32 model under ``torch.no_grad``, forward in batches
    of 32, each batch written to HDF5 with h5py.

Measurements can be repeated (``repeat``), interleaved, and the best of each is kept, so that
a burst of load from other processes on a shared machine does not decide a ratio. Each rate
is also given per second of this process's CPU time (``*_cpu_fps``), which other load moves
far less than wall time, with the load average before and after.
"""

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from featbench.core import align, faces
from featbench.core.align import AlignedFaces
from featbench.core.datasets import load_landmarks
from featbench.core.errors import DataError

from extract.encoders import create_encoder
from extract.extractor import default_workers, extract_aligned
from extract.registry import get_spec

#: the hand-written loop's batch size (the issue's definition)
LOOP_BATCH = 32


def bench_extract(table, model, *, frames=256, batch_size=64, weights=None, device="auto",
                  workers=None, repeat=1, progress=False):
    """Measure featbench's extraction, the forward pass alone and a hand-written loop.

    Parameters
    ----------
    table : FrameTable
        A video data set with landmarks (the synthetic set by default on the CLI).
    model : str
        Registry name.
    frames : int
        How many frames (the first ones with landmarks, in table order).
    batch_size : int
        featbench's and the forward's batch size (the loop uses 32).
    weights : str, optional
        Weights do not change speed; default ``random:0`` for CNNs (needs no files), the
        network's own for HOG and dlib.
    device : str
    workers : int, optional
        featbench's reader threads (default: the extractor's).
    repeat : int
        Rounds of the three measurements; the best rate of each is kept.

    Returns
    -------
    dict
        ``featbench_fps``, ``forward_fps``, ``loop_fps``, ``featbench_vs_forward``,
        ``featbench_vs_loop``, ``align_fps``, ``model``, ``weights``, ``device``, ``frames``,
        ``batch_size``, ``torch_threads``, ``repeat``, ``seconds``.
    """
    import torch

    t_start = time.perf_counter()
    if weights is None and get_spec(model).kind == "torch" and get_spec(model).pretrained != "dlib":
        weights = "random:0"
    encoder = create_encoder(model, weights=weights, device=device)
    sub, landmarks = _bench_frames(table, frames)
    workers = default_workers() if workers is None else workers
    load = [os.getloadavg()[0]]
    best, cpu, align_fps = _measure(sub, landmarks, encoder, batch_size=batch_size, workers=workers,
                                    repeat=repeat, progress=progress)
    load.append(os.getloadavg()[0])
    return {
        "model": encoder.spec.name, "weights": encoder.weights_id, "device": encoder.device,
        "frames": int(len(landmarks)), "batch_size": int(batch_size), "workers": int(workers),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "repeat": int(repeat),
        "featbench_fps": round(best["featbench"], 2), "forward_fps": round(best["forward"], 2),
        "loop_fps": round(best["loop"], 2),
        "featbench_vs_forward": round(best["featbench"] / best["forward"], 3),
        "featbench_vs_loop": round(best["featbench"] / best["loop"], 3),
        "align_fps": round(align_fps, 1),
        # frames per second of this process's CPU time: what other load on a shared machine
        # moves least (wall rates above are what a user sees)
        "featbench_cpu_fps": round(cpu["featbench"], 2), "forward_cpu_fps": round(cpu["forward"], 2),
        "loop_cpu_fps": round(cpu["loop"], 2),
        "load_avg": [round(x, 2) for x in load],
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def _bench_frames(table, frames):
    """Return ``(sub-table, landmarks)`` of the first ``frames`` frames with landmarks (table order).

    Raises DataError when no frame has landmarks.
    """
    landmarks = load_landmarks(table)
    ok = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))[:int(frames)]
    if not len(ok):
        raise DataError(f"{table.dataset}: no frames with landmarks to bench on")
    mask = np.zeros(len(table), bool)
    mask[ok] = True
    return table.subset(mask), landmarks[ok]


def _measure(sub, landmarks, encoder, *, batch_size, workers, repeat, progress):
    """Run the rounds of the three measurements; return ``(best fps, best CPU fps, align fps)``.

    The two dicts are keyed ``featbench``, ``forward``, ``loop``; each keeps the best round.
    """

    best = {k: 0.0 for k in ("featbench", "forward", "loop")}
    cpu = dict(best)

    def keep(key, frames_done, wall, used):
        best[key] = max(best[key], frames_done / wall if wall > 0 else 0.0)
        cpu[key] = max(cpu[key], frames_done / used if used > 0 else 0.0)

    with tempfile.TemporaryDirectory(prefix="featbench-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        rep = align.align_dataset(sub, tmp / "faces.h5", progress=progress)
        align_fps = rep.frames / (time.perf_counter() - t)
        batches = _preload(tmp / "faces.h5", encoder, batch_size)
        _forward_runner(encoder)(batches[0])  # warm-up: allocations, kernel choice
        for r in range(max(1, int(repeat))):
            paired = _Paired(encoder, batches)
            c0, t0 = time.process_time(), time.perf_counter()
            out = extract_aligned(tmp / "faces.h5", tmp / f"codes{r}.h5", encoder,
                                  batch_size=batch_size, workers=workers, progress=progress,
                                  overwrite=True, on_batch=paired)
            wall, used = time.perf_counter() - t0, time.process_time() - c0
            keep("featbench", out.frames, wall - paired.wall, used - paired.cpu)
            keep("forward", paired.frames, paired.wall, paired.cpu)
            c0, t0 = time.process_time(), time.perf_counter()
            n = _loop_frames(sub, landmarks, encoder, tmp / f"loop{r}.h5")
            keep("loop", n, time.perf_counter() - t0, time.process_time() - c0)
    return best, cpu, align_fps


def _preload(aligned_path, encoder, batch_size, *, max_batches=4):
    """Return a few batches, ready for the network body: normalised, on the device.

    For CNNs the tensors are the preprocessing's output, so the forward measured next is the
    network alone; HOG and dlib take the uint8 faces.
    """
    with AlignedFaces(aligned_path) as faces:
        rows = np.flatnonzero(faces.valid)
        out = []
        for a in range(0, min(len(rows), batch_size * max_batches), batch_size):
            imgs = faces.read(rows[a:a + batch_size])
            if hasattr(encoder, "module"):
                import torch

                with torch.inference_mode():
                    imgs = encoder.module[0](encoder.to_device(imgs)).clone()
            out.append(imgs)
    return out


def _forward_runner(encoder):
    """Return ``run(batch)``: the network alone (or HOG / dlib) on one preloaded batch, synced."""
    if not hasattr(encoder, "module"):
        return encoder
    import torch

    body = encoder.module[1]
    cuda = encoder.device.startswith("cuda")

    def run(x):
        with torch.inference_mode():
            if encoder.autocast is not None:
                with torch.autocast(device_type="cuda", dtype=encoder.autocast):
                    body(x)
            else:
                body(x)
        if cuda:
            torch.cuda.synchronize()

    return run


class _Paired:
    """Forward-alone batches run between featbench's batches (its ``on_batch`` callback).

    Each featbench batch is followed by one forward-alone batch of the same size, timed on
    its own and subtracted from featbench's time: both rates then see the same moments of
    whatever else the machine runs, instead of two different minutes of it.
    """

    def __init__(self, encoder, batches):
        self.run, self.batches = _forward_runner(encoder), batches
        self.i = self.frames = 0
        self.wall = self.cpu = 0.0

    def __call__(self, region, done):
        x = self.batches[self.i % len(self.batches)]
        c0, t0 = time.process_time(), time.perf_counter()
        self.run(x)
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        self.frames += len(x)
        self.i += 1


def _loop_frames(table, landmarks, encoder, out_path):
    """Run the hand-written loop (module docstring) over the table's frames; return how many."""
    import cv2
    import h5py
    import torch
    from torchvision import transforms

    spec = encoder.spec
    per_image = [transforms.ToTensor()]
    if spec.input_size != faces.CANONICAL_SIZE:
        per_image.append(transforms.Resize((spec.input_size, spec.input_size), antialias=True))
    scale = spec.pixel_scale * 255.0  # ToTensor gives [0, 1]; Caffe-style nets want 0-255
    per_image.append(transforms.Normalize([m / scale for m in spec.mean],
                                          [s / scale for s in spec.std]))
    tf = transforms.Compose(per_image)
    model = encoder.module[1] if hasattr(encoder, "module") else None
    if model is not None:
        model = model.to(memory_format=torch.contiguous_format)  # plain fp32, as a user has it
    df = table.frames
    with h5py.File(out_path, "w") as f:
        ds = f.create_dataset("codes", shape=(0, spec.dims), maxshape=(None, spec.dims),
                              dtype="float32", chunks=True)
        batch = []

        def flush():
            if model is not None:
                with torch.no_grad():  # fp32 on the encoder's device, as a user writes it
                    codes = model(torch.stack(batch).to(encoder.device)).float().cpu().numpy()
            else:  # HOG / dlib: their encoder on the batch of aligned faces
                codes = encoder(np.stack(batch))
            n = ds.shape[0]
            ds.resize(n + len(codes), axis=0)
            ds[n:] = codes
            batch.clear()

        cap, cap_src = None, None
        for i in range(len(df)):
            src, k = df["source"].iat[i], int(df["source_index"].iat[i])
            if src != cap_src:
                if cap is not None:
                    cap.release()
                cap, cap_src, pos = cv2.VideoCapture(src), src, 0
            if k != pos:
                cap.set(cv2.CAP_PROP_POS_FRAMES, k)
            ok, bgr = cap.read()
            pos = k + 1
            if not ok:
                continue
            face, _ = faces.align_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), landmarks[i])
            batch.append(tf(face) if model is not None else face)
            if len(batch) == LOOP_BATCH:
                flush()
        if batch:
            flush()
        if cap is not None:
            cap.release()
        n = ds.shape[0]
    if model is not None:
        model.to(memory_format=torch.channels_last)
    return n


def format_bench(res):
    """The three lines ``featbench bench extract`` prints."""
    return "\n".join([
        f"{res['model']} ({res['weights']}) on {res['device']}, {res['frames']} frames, batch "
        f"{res['batch_size']}, {res['torch_threads']} torch threads:",
        f"  featbench {res['featbench_fps']:8.1f} frames/s   forward alone {res['forward_fps']:8.1f}"
        f"   hand-written loop {res['loop_fps']:8.1f}   (alignment, once per data set: "
        f"{res['align_fps']:.0f})",
        f"  featbench / forward = {res['featbench_vs_forward']:.3f}   featbench / loop = "
        f"{res['featbench_vs_loop']:.2f}   (per CPU-second: featbench / forward = "
        f"{res['featbench_cpu_fps'] / res['forward_cpu_fps']:.3f}; load average "
        f"{res['load_avg'][0]:.1f} -> {res['load_avg'][1]:.1f} on {res['cpu_count']} CPUs)",
    ])
