"""The shared training loop: epoch choice on validation, resume after a crash, weight noise."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from classify.training import TrainConfig, fit, load_checkpoint, plot_history  # noqa: E402
from featbench.core.errors import UsageError  # noqa: E402


def _toy(n=256, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float32)
    return torch.from_numpy(X), torch.from_numpy(y)


def _task(crash_at=None, seen=None):
    X, y = _toy()
    Xv, yv = _toy(128, seed=1)

    def batches(epoch, rng):
        if crash_at is not None and epoch == crash_at:
            raise KeyboardInterrupt("simulated kill")
        order = rng.permutation(len(X))
        for i in range(0, len(order), 32):
            idx = torch.from_numpy(order[i:i + 32])
            if seen is not None:
                seen.append(epoch)
            yield X[idx], y[idx]

    def step_loss(model, batch):
        xb, yb = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(1), yb)

    def evaluate(model):
        logits = model(Xv).squeeze(1)
        pred = logits > 0
        tp = float(((pred == 1) & (yv == 1)).sum())
        f1 = 2 * tp / max(1.0, float(pred.sum() + yv.sum()))
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, yv))
        return {"val_loss": loss, "val_score": f1}

    return dict(train_batches=batches, step_loss=step_loss, evaluate=evaluate)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(16, 1))


def _same(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_learns_and_logs(tmp_path):
    cfg = TrainConfig(epochs=6, lr=0.1, patience=None, device="cpu", weight_noise=0.01)
    model = _net()
    res = fit(model, config=cfg, checkpoint_dir=tmp_path / "ck", log_path=tmp_path / "log.csv",
              progress=False, **_task())
    assert res.best["val_score"] > 0.9
    assert [r["epoch"] for r in res.history] == list(range(1, 7))
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,val_score,seconds,lr" and len(lines) == 7
    assert plot_history(res.history, tmp_path / "curves.png").stat().st_size > 1000


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(epochs=5, lr=0.05, patience=None, device="cpu", weight_noise=0.05)
    whole = _net()
    fit(whole, config=cfg, progress=False, **_task())
    crashed = _net()
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, config=cfg, checkpoint_dir=tmp_path, progress=False, **_task(crash_at=3))
    seen = []
    resumed = _net(seed=123)  # its own init is overwritten by the checkpoint
    res = fit(resumed, config=cfg, checkpoint_dir=tmp_path, progress=False, **_task(seen=seen))
    assert res.resumed_from == 2 and set(seen) == {3, 4, 5}
    assert not _same(resumed, crashed)
    # the best epoch is restored in both; compare the final states of the chosen epoch
    ref = _net()
    fit(ref, config=cfg, checkpoint_dir=tmp_path / "ref", progress=False, **_task())
    assert _same(resumed, ref) and _same(ref, whole)


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    fit(_net(), config=TrainConfig(epochs=1, device="cpu"), checkpoint_dir=tmp_path, progress=False, **_task())
    with pytest.raises(UsageError, match="other settings"):
        load_checkpoint(tmp_path, {"something": "else"})


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.6, 0.6, 0.9])
    task = _task()
    task["evaluate"] = lambda model: {"val_score": next(scores), "val_loss": 0.0}
    res = fit(_net(), config=TrainConfig(epochs=6, patience=2, device="cpu"), progress=False, **task)
    assert res.best_epoch == 2 and res.stopped_early and len(res.history) == 4


def test_weight_noise_changes_training_not_the_kept_weights():
    X, _ = _toy(16)
    base = _net()
    noisy, plain = _net(), _net()
    task = _task()
    task["train_batches"] = lambda epoch, rng: iter(())  # no step: only noise could move weights
    fit(noisy, config=TrainConfig(epochs=1, weight_noise=1.0, device="cpu", patience=None), progress=False, **task)
    assert _same(noisy, base)
    t1, t2 = _task(), _task()
    fit(noisy, config=TrainConfig(epochs=1, weight_noise=0.5, device="cpu", lr=0.1), progress=False, **t1)
    fit(plain, config=TrainConfig(epochs=1, weight_noise=0.0, device="cpu", lr=0.1), progress=False, **t2)
    assert not _same(noisy, plain)


def test_frozen_parameters_stay_bit_identical():
    model = _net()
    first = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    fit(model, config=TrainConfig(epochs=2, device="cpu", lr=0.1, patience=None), progress=False, **_task())
    assert torch.equal(model[0].weight, first)
    assert not torch.equal(model[3].weight, _net()[3].weight)


@pytest.mark.parametrize("kw", [dict(epochs=0), dict(lr=0), dict(optimizer="rmsprop"), dict(weight_noise=-1)])
def test_bad_settings_are_usage_errors(kw):
    with pytest.raises(UsageError):
        TrainConfig(**kw)
