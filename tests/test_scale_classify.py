"""classify at scale: a Dask cluster gives the local results; codes read from HDF5 in blocks."""

import json

import numpy as np
import pytest

from classify import scale
from test_classify import run as _run, setup  # noqa: F401  (setup is the shared fixture)


def _metrics(result):
    return {r["au"]: (r["f1"], r["accuracy"], r["threshold"], r.get("C")) for r in result["rows"]}


def _settings(result):
    return json.loads((result["models_dir"] / "settings.json").read_text())


def test_h5codes_reads_rows_in_any_order_block_by_block(setup, monkeypatch):
    ws, table, codes = setup
    monkeypatch.setattr(scale, "BLOCK_BYTES", 5 * codes.shape[1] * 4)  # 5 rows a block
    X = scale.H5Codes(ws.features_path("synth", "toy"), "upper")
    rows = np.random.default_rng(0).permutation(len(codes))[:97]
    assert np.array_equal(X[rows], codes[rows])
    seen = np.concatenate([where for where, _ in X.blocks(rows, np.random.default_rng(1))])
    assert sorted(seen) == list(range(97))
    assert X.block_rows == 5


@pytest.mark.slow
def test_dask_local_cluster_gives_the_local_metrics(setup):
    distributed = pytest.importorskip("distributed")
    ws, table, _ = setup
    local = _run(ws, table, region="auto", tune_threshold=True)
    assert _settings(local)["backend"].startswith("joblib")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        remote = _run(ws, table, region="auto", tune_threshold=True,
                      scheduler=cluster.scheduler_address)
    assert _metrics(remote) == _metrics(local)
    assert _settings(remote)["backend"].startswith("dask tcp://127.0.0.1:")


def test_codes_over_the_memory_budget_stay_on_disk_with_the_same_results(setup, monkeypatch):
    ws, table, _ = setup
    in_memory = _run(ws, table, clf="lda")
    assert _settings(in_memory)["codes_in_memory"] is True
    monkeypatch.setenv("FEATBENCH_MEMORY_GB", "1e-9")
    on_disk = _run(ws, table, clf="lda")
    assert _metrics(on_disk) == _metrics(in_memory)
    s = _settings(on_disk)
    assert s["codes_in_memory"] is False
    assert s["peak_rss_mb"]["main"] > 0 and s["peak_rss_mb"]["worker_max"] > 0


def test_a_training_set_over_the_budget_is_fitted_out_of_core(setup, monkeypatch):
    ws, table, _ = setup
    monkeypatch.setenv("FEATBENCH_MEMORY_GB", "1e-9")
    res = _run(ws, table, tune_threshold=True)
    s = _settings(res)
    assert s["solver"] == ["sgd-hinge (out of core)"]
    assert any("out-of-core: SGD linear SVM" in n for n in res["notes"])
    f1 = {r["au"]: r["f1"] for r in res["rows"]}
    assert f1["AU01"] > 0.9  # dim 0 separates AU01 (see make_codes)
    thr = [r["threshold"] for r in res["rows"]]
    assert any(t != 0 for t in thr)  # --tune-threshold is honoured out of core too
    # the saved model reproduces the run's decisions alone
    from test_classify import saved_model

    model = saved_model(res["models_dir"], "AU01")
    assert model.estimator_.named_steps["clf"].__class__.__name__ == "SGDClassifier"
    assert model.threshold == thr[0]  # the threshold travels with the saved model


def test_bad_memory_budget_is_a_usage_error(setup, monkeypatch):
    from featbench.core.errors import UsageError

    ws, table, _ = setup
    monkeypatch.setenv("FEATBENCH_MEMORY_GB", "lots")
    with pytest.raises(UsageError, match="FEATBENCH_MEMORY_GB='lots'"):
        _run(ws, table)
