"""``featbench bench finetune``: both loops train the same network on the same batches."""

import json

import pytest

torch = pytest.importorskip("torch")


def test_bench_finetune_times_both_loops_and_reports_featbench_setup_apart(capsys):
    from featbench.cli import main

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
