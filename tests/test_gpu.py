"""The CUDA paths: the training loop in mixed precision, extraction, fine-tuning and the LSTM.

Every test here is marked ``gpu`` (deselected by default; ``python -m pytest -m gpu``) and skips
where no CUDA device is present. They run the same tiny fixtures as the CPU tests, on the device,
and compare against the CPU where the two must agree.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_extract import make_aligned_cache  # noqa: E402
from test_finetune import data, run  # noqa: E402,F401  (data is the shared fixture)
from test_lstm import FAST as LSTM_FAST, temporal_table  # noqa: E402
from test_training import _task, _toy  # noqa: E402

from classify.training import TrainConfig, fit  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _toy_task(crash_at=None):
    """test_training's toy task (CPU batches the loop moves), validated on the device."""
    X, y = _toy(128, seed=1)
    Xv, yv = X.cuda(), y.cuda()

    def evaluate(model):
        pred = model(Xv).squeeze(1) > 0
        tp = float(((pred == 1) & (yv == 1)).sum())
        return {"val_score": 2 * tp / max(1.0, float(pred.sum() + yv.sum())), "val_loss": 0.0}

    return dict(_task(crash_at=crash_at), evaluate=evaluate)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


def test_fit_trains_in_mixed_precision_on_cuda_and_resumes_after_a_kill(tmp_path):
    cfg = TrainConfig(epochs=5, lr=0.1, patience=None, device="cuda")
    res = fit(_net(), config=cfg, checkpoint_dir=tmp_path / "whole", progress=False, **_toy_task())
    assert res.device.startswith("cuda") and res.precision in ("bfloat16", "float16")
    assert res.best["val_score"] > 0.9 and len(res.history) == 5
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    with pytest.raises(KeyboardInterrupt):
        fit(_net(), config=cfg, checkpoint_dir=tmp_path / "killed", progress=False, **_toy_task(crash_at=3))
    again = fit(_net(), config=cfg, checkpoint_dir=tmp_path / "killed", progress=False, **_toy_task())
    assert again.resumed_from == 2 and [r["epoch"] for r in again.history] == [1, 2, 3, 4, 5]
    assert again.best["val_score"] > 0.9


def test_cuda_codes_match_the_cpu_codes(tmp_path):
    from extract.encoders import create_encoder
    from extract.extractor import extract_aligned
    from extract.store import read_codes

    cache = make_aligned_cache(tmp_path / "aligned" / "faces.h5")
    out = {}
    for device in ("cpu", "cuda"):
        enc = create_encoder("cnn_f", weights="random:0", device=device)
        rep = extract_aligned(cache, tmp_path / f"{device}.h5", enc, batch_size=8, progress=False)
        out[device] = read_codes(rep.path)[1]
    cpu, gpu = out["cpu"], out["cuda"]
    assert cpu.shape == gpu.shape and np.isfinite(gpu).all()
    # bf16 autocast on the device: the same codes to within its precision, row by row
    rel = np.linalg.norm(gpu - cpu, axis=1) / np.maximum(np.linalg.norm(cpu, axis=1), 1e-6)
    assert rel.max() < 0.05, rel.max()


def test_finetune_on_cuda_learns_the_cued_aus(data, tmp_path):  # noqa: F811
    _, table, cache = data
    res = run(Workspace(tmp_path), table, cache, head="multilabel", device="cuda")
    f1 = {r["au"]: r["f1"] for r in res["rows"]}
    assert f1["AU01"] >= 0.9 and f1["AU12"] >= 0.9, f1
    settings = json.loads((res["models_dir"] / "settings.json").read_text())
    assert "cuda" in json.dumps(settings)


def test_lstm_trains_on_cuda(tmp_path):
    from classify.run import classify_run
    from test_classify import write_features

    ws = Workspace(tmp_path)
    table, X = temporal_table()
    write_features(ws, table, X, regions=("full",))
    res = classify_run(ws, "synth", clf="lstm", table=table, model="toy", progress=False, n_jobs=1,
                       aus=["AU01"], lstm=dict(LSTM_FAST, device="cuda"))
    f1 = {r["au"]: r["f1"] for r in res["rows"]}
    assert f1["AU01"] >= 0.9, f1


def test_bench_finetune_runs_both_loops_on_cuda(capsys):
    from featbench.app.cli import main

    assert main(["bench", "finetune", "--model", "cnn_f", "--input-size", "96", "--batch-size", "32",
                 "--steps", "4", "--repeat", "1", "--device", "cuda", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["device"].startswith("cuda") and res["precision"] in ("bfloat16", "float16")
    assert res["featbench_ips"] > 0 and res["plain_ips"] > 0
