"""``featbench bench finetune``: both loops train the same network on the same batches."""

import json

import pytest

torch = pytest.importorskip("torch")


def test_bench_finetune_times_both_loops_and_reports_featbench_setup_apart(capsys):
    from featbench.app.cli import main

    assert main(["bench", "finetune", "--model", "timm:test_efficientnet", "--input-size", "32",
                 "--batch-size", "4", "--steps", "2", "--repeat", "1", "--device", "cpu",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["device"] == "cpu" and res["precision"] == "float32"
    assert res["featbench_ips"] > 0 and res["plain_ips"] > 0 and res["featbench_setup_s"] >= 0
    assert res["ratio"] == pytest.approx(res["featbench_ips"] / res["plain_ips"])
    assert main(["bench", "finetune", "--model", "timm:test_efficientnet", "--input-size", "32",
                 "--steps", "1", "--repeat", "1", "--device", "cpu"]) == 0
    assert "featbench / plain = " in capsys.readouterr().out


def test_prefetch_reads_ahead_in_parallel_and_yields_in_order():
    import threading
    import time

    from featbench.core._background import read_ahead

    both = threading.Barrier(2, timeout=10)  # items 0 and 1 must be read at the same time

    def read(i):
        if i < 2:
            both.wait()
        time.sleep(0.01 * ((7 * i) % 3))  # finish out of order
        return i * i

    assert list(read_ahead(read, range(9), threads=3)) == [i * i for i in range(9)]
    assert list(read_ahead(read, [], threads=2)) == []
    assert list(read_ahead(lambda i: -i, range(3), threads=1)) == [0, -1, -2]


def test_augmentation_is_the_per_pixel_brightness_and_contrast_formula():
    """augment's lookup tables give, bit for bit, the per-pixel float32 formula they replace."""
    import numpy as np

    from featbench.core.facesource import augment, draw_augmentation

    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
    aug = draw_augmentation(rng, 16, 40)
    got = augment(imgs, aug)
    zero = dict(aug, gain=np.ones(16, np.float32), bias=np.zeros(16, np.float32))
    moved = augment(imgs, zero).astype(np.float32)  # flips and shifts alone
    mean = moved.mean(axis=(1, 2, 3), keepdims=True)
    want = (moved - mean) * aug["gain"][:, None, None, None] + mean + aug["bias"][:, None, None, None]
    assert np.array_equal(got, np.clip(want, 0, 255).astype(np.uint8))
    assert np.array_equal(augment(imgs, dict(zero, flip=np.zeros(16, bool),
                                             shift=np.zeros((16, 2), int))), imgs)
