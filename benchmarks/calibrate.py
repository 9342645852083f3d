#!/usr/bin/env python3
"""How fast is this machine, in the work featbench does? Prints one JSON line.

Machines differ several-fold (the same quick run took 6 min on one 2-core machine and 22 min on
another), so a time budget means something only next to a yardstick measured on the same
machine. This script times three fixed workloads that stand for featbench's stages, each the
best of 3 rounds, using only featbench's own dependencies:

- ``conv``: a randomly initialised torchvision AlexNet, forward pass, 32 faces of 224 x 224,
  eval mode, no grad, torch's default threads (extraction, fine-tuning, predict);
- ``numpy``: image gradients, orientation binning and block sums over 64 faces of 224 x 224
  (HOG, alignment, synthesis);
- ``linear``: scikit-learn's LinearSVC on 4,000 x 1,024 float32 rows (classify).

``unit_s`` is their sum in seconds: divide a measured wall time by it to get a figure that
travels between machines ("the quick run took 210 units"). Run it on a quiet machine, right
before or after the measurement it scales.

(A copy of the project's shared yardstick, kept here so that a clone has it:
``benchmarks/quick_run_units.py`` runs it before and after a quick run.)
"""
import json
import time

import numpy as np


def best_of(fn, rounds=3):
    fn()  # warm-up: first-call allocations, lazy imports, kernel selection
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def conv_workload():
    import torch
    import torchvision

    net = torchvision.models.alexnet(weights=None).eval()
    x = torch.from_numpy(np.random.default_rng(0).random((32, 3, 224, 224), dtype=np.float32))

    def run():
        with torch.no_grad():
            net(x)
    return best_of(run)


def numpy_workload():
    img = np.random.default_rng(1).random((64, 224, 224), dtype=np.float32)

    def run():
        gy, gx = np.gradient(img, axis=(1, 2))
        mag = np.hypot(gx, gy)
        ang = np.mod(np.arctan2(gy, gx), np.pi)
        bins = np.minimum((ang / np.pi * 9).astype(np.int64), 8)
        hist = np.zeros((64, 28, 28, 9), np.float32)
        cells = mag.reshape(64, 28, 8, 28, 8)
        b = bins.reshape(64, 28, 8, 28, 8)
        for k in range(9):
            hist[..., k] = np.where(b == k, cells, 0).sum(axis=(2, 4))
        return hist.cumsum(axis=1).cumsum(axis=2)
    return best_of(run)


def linear_workload():
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(2)
    X = rng.standard_normal((4000, 1024), dtype=np.float32)
    y = (X[:, :8].sum(axis=1) + rng.standard_normal(4000) > 0).astype(int)

    def run():
        LinearSVC(C=0.01, max_iter=2000).fit(X, y)
    return best_of(run)


def main():
    conv, nump, lin = conv_workload(), numpy_workload(), linear_workload()
    print(json.dumps({"conv_s": round(conv, 3), "numpy_s": round(nump, 3), "linear_s": round(lin, 3),
                      "unit_s": round(conv + nump + lin, 3)}))


if __name__ == "__main__":
    main()
