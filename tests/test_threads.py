"""Thread choice: torch's intra-op threads against the cores free and featbench's reader threads."""

import subprocess
import sys
import time

import pytest

from featbench.core import threads

torch = pytest.importorskip("torch")


@pytest.fixture
def restore(monkeypatch):
    """Each test leaves torch's threads, the pin and the cached choice as it found them."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_pinned", None)
    monkeypatch.setattr(threads, "_last", {})
    monkeypatch.delenv("FEATBENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_the_choice_follows_the_free_cores_and_the_reader_threads():
    assert threads.choose_threads(cores=2, others=0.0) == 2
    assert threads.choose_threads(cores=2, others=0.0, helpers=1) == 2  # a reader: a quarter core
    assert threads.choose_threads(cores=2, others=2.0, helpers=1) == 1  # a busy neighbour on both
    assert threads.choose_threads(cores=2, others=1.0) == 1
    assert threads.choose_threads(cores=8, others=3.2, helpers=2) == 4
    assert threads.choose_threads(cores=16, others=0.0, helpers=4) == 15
    assert threads.choose_threads(cores=1, others=5.0) == 1  # never fewer than one


def test_a_busy_process_is_seen_and_our_own_work_is_not():
    spin = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time() + 20\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_elsewhere(0.3) >= 0.5  # the spinning child holds about one core
    finally:
        spin.kill()
        spin.wait()


def test_the_user_and_a_worker_keep_the_last_word(restore, monkeypatch):
    monkeypatch.setenv("FEATBENCH_THREADS", "1")
    assert threads.use_torch_threads(helpers=1) == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("FEATBENCH_THREADS")
    threads.set_torch_threads(2)
    assert threads.use_torch_threads(helpers=3) == 2 and torch.get_num_threads() == 2


def test_the_training_loop_applies_the_choice_each_epoch(restore, monkeypatch):
    from classify.training import TrainConfig, fit

    calls = []
    real = threads.choose_threads
    monkeypatch.setattr(threads, "choose_threads", lambda **kw: calls.append(kw) or 1)
    monkeypatch.setattr(threads, "REUSE_S", -1.0)  # sample every time, to count the epochs
    X, y = torch.randn(64, 4), (torch.rand(64) > 0.5).float()
    torch.set_num_threads(2)
    net = torch.nn.Linear(4, 1)
    fit(net, train_batches=lambda epoch, rng: [(X, y)],
        step_loss=lambda m, b: torch.nn.functional.binary_cross_entropy_with_logits(m(b[0])[:, 0], b[1]),
        evaluate=lambda m: {"val_score": 0.5}, config=TrainConfig(epochs=3, patience=None, device="cpu"),
        progress=False)
    assert len(calls) == 3 and all(kw == {"helpers": threads.reader_threads()} for kw in calls)
    assert torch.get_num_threads() == 1
    assert real(cores=2, others=0.0) == 2
