"""``featbench bench finetune``: training images/s of featbench's loop against a plain PyTorch loop.

Both train the same network (:func:`classify.ft_net.create_finetune_net`, the spec's
normalisation as its first layer) on the same uint8 faces in memory, in the same batches, with
the same SGD settings and per-AU 2-way cross-entropy; only the loop differs:

``featbench``
    :func:`classify.training.fit` as ``featbench finetune`` calls it: channels-last model and
    images, ``zero_grad(set_to_none=True)``, the loss summed on the device and read once per
    epoch, mixed precision on CUDA (bf16 where supported);
``plain``
    the loop a user writes from the PyTorch tutorial: contiguous NCHW, ``loss.item()`` after
    every step (a host sync each step), fp32.

The two are timed alternately, ``repeat`` rounds each (the best round of each kept, so a
neighbour's burst on a shared CPU does not decide the ratio); both start from the same weights.
Each timed span is one epoch of training, from its first batch to its last step finished on
the device: featbench's once-per-call setup (moving the model to channels-last, the optimiser)
and once-per-epoch bookkeeping (the kept best weights) are what a real run spreads over
thousands of batches, so they are measured apart (``featbench_setup_s``) instead of being
charged to eight steps.
"""

import time

import numpy as np

from classify.ft_net import create_finetune_net
from classify.training import TrainConfig, fit
from extract.encoders import resolve_device
from extract.registry import get_spec


def _data(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, 2, n).astype(np.int64))


def _plain_epoch(net, batches, device):
    """One epoch of the tutorial loop (module docstring); return its seconds."""
    import torch

    m = net.to(device).to(memory_format=torch.contiguous_format)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    m.train()
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        loss.item()  # what a tutorial loop logs every step
    _sync(device)
    return time.perf_counter() - t0


def _featbench_epochs(net, batches, config):
    """Two epochs of :func:`classify.training.fit`; return (best epoch's seconds, setup seconds,
    the fit result)."""
    import torch

    spans = []

    def train_batches(epoch, rng):
        _sync(config.device)
        spans.append([time.perf_counter()])
        return iter(batches)

    def evaluate(model):  # called right after the epoch's last step: close its span
        _sync(config.device)
        spans[-1].append(time.perf_counter())
        return {"val_score": 0.0}

    def step_loss(m, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x).float(), y)

    t0 = time.perf_counter()
    res = fit(net, train_batches=train_batches, step_loss=step_loss, evaluate=evaluate,
              config=config, progress=False)
    _sync(config.device)
    epochs = [b - a for a, b in spans]
    return min(epochs), time.perf_counter() - t0 - sum(epochs), res


def _sync(device):
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_finetune(model="cnn_f", *, input_size=None, batch_size=32, steps=8, repeat=3,
                   device="auto", seed=0, progress=False):
    """Return images/s of featbench's training loop and of a plain loop, and their ratio.

    Parameters
    ----------
    model : str
        A torch network of the registry.
    input_size : int, optional
        Face side (default: the network's own).
    batch_size, steps : int
        Each timed epoch trains ``steps`` batches of ``batch_size`` faces.
    repeat : int
        Rounds (the best of each loop kept).
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    dict
        ``featbench_ips``, ``plain_ips``, ``ratio`` (featbench / plain), ``featbench_setup_s``
        (fit's fixed cost per call, outside the timed epochs), ``device``, ``precision``, and
        the settings.
    """
    import torch


    device = resolve_device(device)
    spec = get_spec(model)
    net, info = create_finetune_net(spec, "random:0", outputs=2, input_size=input_size, seed=seed)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    x_all, y_all = _data(batch_size * steps, info["input_size"], seed)
    batches = [(torch.from_numpy(x_all[a:a + batch_size]), torch.from_numpy(y_all[a:a + batch_size]))
               for a in range(0, len(x_all), batch_size)]
    cfg = TrainConfig(epochs=2, lr=1e-3, patience=None, seed=seed, device=device)
    _plain_epoch(net, batches, device)  # warm-up both (allocator, kernels)
    best_fb, best_plain, setup, first = float("inf"), float("inf"), float("inf"), None
    for _ in range(int(repeat) + 1):  # the first round warms featbench's kernels up
        net.load_state_dict(start)
        span, fixed, res = _featbench_epochs(net, batches, cfg)
        if first is None:
            first = res
            continue
        best_fb, setup = min(best_fb, span), min(setup, fixed)
        net.load_state_dict(start)
        best_plain = min(best_plain, _plain_epoch(net, batches, device))
    n_images = len(x_all)
    return {"model": spec.name, "input_size": info["input_size"], "batch_size": batch_size,
            "steps": steps, "repeat": repeat, "device": device, "precision": first.precision,
            "featbench_ips": n_images / best_fb, "plain_ips": n_images / best_plain,
            "ratio": best_plain / best_fb, "featbench_setup_s": setup}


def format_bench(res):
    """The lines ``featbench bench finetune`` prints."""
    return (f"{res['model']} at {res['input_size']} px, batch {res['batch_size']} x {res['steps']} "
            f"steps, {res['device']} ({res['precision']}), best of {res['repeat']}:\n"
            f"  featbench fit loop  {res['featbench_ips']:8.1f} images/s\n"
            f"  plain PyTorch loop  {res['plain_ips']:8.1f} images/s\n"
            f"featbench / plain = {res['ratio']:.2f}x   (featbench's setup per fit call, "
            f"outside the timed epochs: {res['featbench_setup_s']:.2f} s)")
