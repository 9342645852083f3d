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


def test_cores_our_own_busy_threads_hold_are_not_given_to_torch(restore, monkeypatch):
    """predict's two face-detection threads keep two cores busy: torch gets the others (one at
    least); the user's FEATBENCH_THREADS still wins."""
    monkeypatch.setattr(threads, "busy_elsewhere", lambda *a, **k: 0.0)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 2)
    assert threads.use_torch_threads(reserved=2) == 1 and torch.get_num_threads() == 1
    assert threads.use_torch_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "cpu_cores", lambda: 16)
    assert threads.use_torch_threads(helpers=1, reserved=2) == 14
    monkeypatch.setenv("FEATBENCH_THREADS", "3")
    assert threads.use_torch_threads(reserved=2) == 3


def test_predict_gives_torch_the_cores_its_detection_threads_leave(restore, monkeypatch, tmp_path):
    """What predict asks for, seen through the choice it makes (no network needed: a photo
    without a face still starts the detection threads and the choice)."""
    import numpy as np
    from PIL import Image

    from featbench.apply import pipeline as P

    seen = []
    monkeypatch.setattr(P, "use_torch_threads", lambda **kw: seen.append(kw) or 1)
    photo = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    P.stream(P.footage.list_sources([photo]), _NoRuns(), {}, None, detector="hog", size=112,
              all_faces=False, batch_size=4, total=1, progress=False)
    assert seen == [{"helpers": 1, "reserved": P.DETECT_THREADS}]


class _NoRuns:
    """Just enough of predict's outputs for a stream without faces."""
    runs, c_run, occurrence, intensity = (), None, None, None

    def columns(self):
        return ["frame", "face_id", "timestamp", "confidence", "success", "input"]


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
    assert len(calls) == 3
    assert all(kw == {"helpers": threads.reader_threads(), "cores": threads.cpu_cores()} for kw in calls)
    assert torch.get_num_threads() == 1
    assert real(cores=2, others=0.0) == 2
