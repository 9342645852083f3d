"""finetune: CNN-F fine-tuned on tiny synthetic faces whose AU cues are known.

Every test writes its own aligned-face cache (the documented layout of ``featbench.core.align``) of
48x48 faces: AU01 lights a block in the upper band, AU12 darkens one in the lower band, every
other AU is a coin flip without a cue. Networks are CNN-F at a 48-pixel input from random:0.
"""

import json

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from classify.finetune import FinetuneConfig, finetune_run, load_unit  # noqa: E402
from featbench.core import align, faces  # noqa: E402
from featbench.core.aus import DISFA_AUS  # noqa: E402
from featbench.app.cli import main  # noqa: E402
from featbench.core.errors import DataError, UsageError, WeightsError  # noqa: E402
from featbench.core.frames import FrameTable, build_frames  # noqa: E402
from featbench.core.results import read_summary  # noqa: E402
from featbench.core.splits import PAPER_SPLIT  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

SUBJECTS = sorted(s for part in PAPER_SPLIT.values() for s in part)
SIZE = 48
FAST = dict(model="timm:test_efficientnet", weights="random:0", input_size=SIZE, epochs=3,
            batch_size=16, lr=3e-3, optimizer="adam", aus="AU01,AU12", device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_table(n_frames=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in SUBJECTS:
        for f in range(n_frames):
            row = {"subject": s, "video": f"LeftVideo{s}", "frame": f, "source": "",
                   "source_index": f, "landmark_file": "", "split": ""}
            for au in DISFA_AUS:
                row[au] = int(rng.random() < 0.4)
            rows.append(row)
    return FrameTable("synth", "/nonexistent", DISFA_AUS, build_frames(rows, DISFA_AUS))


def write_cache(path, table, *, seed=0, empty_region=None, poison_test=False):
    """An aligned-face cache in the table's row order: AU01 / AU12 drawn, noise elsewhere."""
    rng = np.random.default_rng(seed)
    n = len(table)
    imgs = rng.normal(128, 20, (n, SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    au01 = table.frames["AU01"].to_numpy() == 1
    au12 = table.frames["AU12"].to_numpy() == 1
    imgs[au01, 5:13, 12:36] = 250
    imgs[au12, 36:43, 12:36] = 10
    if poison_test:
        test = table.frames["subject"].isin(PAPER_SPLIT["test"]).to_numpy()
        imgs[test] = rng.integers(0, 256, (int(test.sum()), SIZE, SIZE, 3), dtype=np.uint8)
    boxes = np.repeat(faces.region_boxes(faces.template(SIZE), image_size=SIZE).astype(np.int16)[None],
                      n, axis=0)
    if empty_region is not None:
        boxes[:, ("upper", "middle", "lower").index(empty_region)] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(format_version=align.FORMAT_VERSION, fingerprint=f"test{seed}{poison_test}",
                       settings=json.dumps({"size": SIZE}), size=SIZE, complete=True, skipped="{}")
        f["frames"] = table.keys()
        f["valid"] = np.ones(n, bool)
        f.create_dataset("faces", data=imgs, chunks=(4, SIZE, SIZE, 3))
        f["landmarks"] = np.full((n, 68, 2), np.nan, np.float32)
        f["boxes"] = boxes
        f["skip_reason"] = np.zeros(n, np.int8)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    table = make_table()
    return root, table, write_cache(root / "faces.h5", table)


def run(ws, table, cache, **kw):
    return finetune_run(ws, "synth", FinetuneConfig(**{**FAST, **kw}), table=table,
                        aligned_path=cache, progress=False)


def _state(path):
    from classify.learn.store import read_tensors

    return read_tensors(path)


def test_multilabel_learns_the_cued_aus_and_writes_the_contracts(data, tmp_path):
    _, table, cache = data
    ws = Workspace(tmp_path)
    res = run(ws, table, cache, head="multilabel")
    f1 = {r["au"]: r["f1"] for r in res["rows"]}
    assert f1["AU01"] >= 0.9 and f1["AU12"] >= 0.9, f1
    assert res["run"] == "timm-test_efficientnet__full__ft__ml-au1+12"
    # tables, summary, predictions, models: the classify contracts, clf = ft, weights named
    summary = read_summary(ws, "synth").set_index("run").loc[res["run"]]
    assert summary["clf"] == "ft" and summary["weights"] == "random:0" and summary["head"] == "multilabel"
    with h5py.File(res["predictions"], "r") as f:
        assert f["scores"].shape == (9 * 6, 2) and f.attrs["clf"] == "ft"
        assert f.attrs["head"] == "multilabel"
    settings = json.loads((res["models_dir"] / "settings.json").read_text())
    assert settings["units"]["model"]["model_file"] == "model.safetensors"
    assert settings["network"]["preprocessing"]["std"] and "mean" in settings["network"]["preprocessing"]
    assert (res["models_dir"] / "model.log.csv").read_text().startswith(
        "epoch,train_loss,val_loss,val_score,seconds,lr")
    assert (res["models_dir"] / "model.png").stat().st_size > 1000
    assert not res["models_dir"].with_name(f".{res['run']}.partial").exists()
    # the saved unit reproduces the run's test scores when loaded alone
    from classify.infer import score_batches
    from featbench.core.facesource import FaceInput, FaceSource

    net, _ = load_unit(res["models_dir"])
    test = np.flatnonzero(table.frames["subject"].isin(PAPER_SPLIT["test"]).to_numpy())
    with FaceSource(cache, FaceInput("full", SIZE, resize_full=True)) as source:
        s = score_batches(net, (torch.from_numpy(f) for _, _, f in source.batches(test, 32)),
                          device="cpu")
    with h5py.File(res["predictions"], "r") as f:
        np.testing.assert_allclose(s, f["scores"][:], rtol=1e-4, atol=1e-4)
    # featbench report shows the curves
    from featbench.app.report import make_report

    report = make_report(ws, "synth").read_text()
    assert f"models/{res['run']}/model.png" in report and "Training curves" in report
    # its codes: extract --weights model.pt records the fine-tuned identity
    from extract.encoders import create_encoder
    from extract.extractor import extract_aligned

    enc = create_encoder("timm:test_efficientnet", weights=str(res["models_dir"] / "model.safetensors"))
    assert enc.weights_id.startswith(f"finetuned:{res['run']} sha256:")
    assert enc.input_size == SIZE  # the size it was fine-tuned at
    rep = extract_aligned(cache, tmp_path / "codes.h5", enc, progress=False)
    with h5py.File(rep.path, "r") as f:
        assert f.attrs["weights"] == enc.weights_id and f["full/codes"].shape[0] == len(table)


def test_cnn_f_reinitialises_its_fc_layers_and_keeps_frozen_convs_bit_identical(data, tmp_path):
    from extract.registry import get_spec
    from extract.weights import build_network, parse_weights

    _, table, cache = data
    res = run(Workspace(tmp_path), table, cache, model="cnn_f", head="multilabel", aus="AU01",
              epochs=1, lr=1e-4, train_from="conv3")
    spec = get_spec("cnn_f")
    start = build_network(spec, parse_weights("random:0", spec))[0].state_dict()
    trained = _state(res["models_dir"] / "model.safetensors")
    for key in ("features.0.weight", "features.0.bias", "features.4.weight"):  # conv1, conv2
        assert torch.equal(trained[key], start[key]), key
    assert not torch.equal(trained["features.8.weight"], start["features.8.weight"])  # conv3 trained
    assert not torch.equal(trained["classifier.3.weight"], start["classifier.3.weight"])  # fc7 re-init
    assert trained["classifier.6.weight"].shape == (1, 4096)  # one logit: one AU, multilabel
    settings = json.loads((res["models_dir"] / "settings.json").read_text())
    assert settings["network"]["reinit_layers"] == ["classifier.0", "classifier.3"]
    assert "features.0.weight" in settings["frozen_parameters"]


def test_test_subjects_never_enter_a_batch(data, tmp_path):
    """Poisoning: replacing every test face by noise leaves the trained network bit-identical."""
    root, table, cache = data
    poisoned = write_cache(tmp_path / "poisoned.h5", table, poison_test=True)
    a = run(Workspace(tmp_path / "a"), table, cache, head="multilabel", epochs=1, augment=False)
    b = run(Workspace(tmp_path / "b"), table, poisoned, head="multilabel", epochs=1, augment=False)
    sa, sb = _state(a["models_dir"] / "model.safetensors"), _state(b["models_dir"] / "model.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with h5py.File(a["predictions"], "r") as fa, h5py.File(b["predictions"], "r") as fb:
        assert not np.allclose(fa["scores"][:], fb["scores"][:])  # the test faces did change


def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    _, table, cache = data
    whole = run(Workspace(tmp_path / "whole"), table, cache, epochs=3, patience=None)
    assert whole["units"]["AU01"]["epochs_run"] == 3
    import classify.training as training

    real = training._run_epoch

    def killed(epoch, *args, **kw):
        if epoch == 2:
            raise KeyboardInterrupt  # as a kill: epoch 1's checkpoint is on disk, nothing after
        return real(epoch, *args, **kw)

    ws = Workspace(tmp_path / "resumed")
    monkeypatch.setattr(training, "_run_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run(ws, table, cache, epochs=3, patience=None)
    partial = ws.models_dir("synth", whole["run"]).with_name(f".{whole['run']}.partial")
    assert (partial / "AU01" / "last.pt").exists()
    monkeypatch.setattr(training, "_run_epoch", real)
    resumed = run(ws, table, cache, epochs=3, patience=None)
    assert resumed["units"]["AU01"]["resumed_from"] == 1
    for unit in ("AU01", "AU12"):
        sa = _state(whole["models_dir"] / f"{unit}.safetensors")
        sb = _state(resumed["models_dir"] / f"{unit}.safetensors")
        assert all(torch.equal(sa[k], sb[k]) for k in sa), unit
    assert [r["f1"] for r in whole["rows"]] == [r["f1"] for r in resumed["rows"]]


def test_per_au_regions_and_tuned_thresholds(data, tmp_path):
    _, table, cache = data
    res = run(Workspace(tmp_path), table, cache, region="auto", tune_threshold=True)
    assert res["run"] == "timm-test_efficientnet__auto__ft__thr-au1+12"
    assert {u: r["region"] for u, r in res["units"].items()} == {"AU01": "upper", "AU12": "lower"}
    thr = {r["au"]: r["threshold"] for r in res["rows"]}
    assert all(np.isfinite(v) for v in thr.values()) and any(v != 0 for v in thr.values())


def test_bad_settings_end_with_one_line_and_exit_2(data, tmp_path, capsys):
    _, table, cache = data
    other = tmp_path / "alexnet.pt"
    from extract.registry import get_spec

    torch.save(get_spec("alexnet").constructor().state_dict(), other)
    cases = [(["--reinit", "fc7"], "--reinit"),
             (["--train-from", "conv9"], "--train-from layer 'conv9'"),
             (["--weights", str(other)], "does not fit cnn_f"),
             (["--head", "softmax"], "--head")]
    for argv, message in cases:
        code = main(["--workspace", str(tmp_path), "finetune", "--model", "cnn_f",
                     "--input-size", "64", "--weights", "random:0"] + argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (argv, err)
    with pytest.raises(WeightsError):
        run(Workspace(tmp_path), table, cache, model="cnn_f", weights=str(other))
    with pytest.raises(UsageError, match="fc6 and fc7"):
        run(Workspace(tmp_path), table, cache, model="resnet50", reinit="fc6-fc7")
    crops = write_cache(tmp_path / "nolower.h5", table, empty_region="lower")
    with pytest.raises(DataError, match="no lower crop") as exc:
        run(Workspace(tmp_path), table, crops, region="lower")
    assert str(tmp_path / "nolower.h5") in str(exc.value) and "\n" not in str(exc.value)
    # the failure is the run's row in summary.csv, never silently dropped
    rows = read_summary(Workspace(tmp_path), "synth").set_index("run")
    assert "no lower crop" in rows.loc["timm-test_efficientnet__lower__ft__au1+12", "error"]


def test_ensembles_take_one_fine_tuned_run_per_network_and_region():
    from classify.ensemble import _finetuned_members

    runs = {"cnn_f__full__ft", "cnn_f__full__ft__ml", "cnn_f__auto__ft__fc67", "alexnet__full__svm",
            "cnn_f-ft__full__svm", "cnn_f__full__ft__ml-literature", "cnn_f__full__ft__thr"}
    assert _finetuned_members(runs, None) == ["cnn_f-ft__full__svm", "cnn_f__auto__ft__fc67",
                                              "cnn_f__full__ft"]
    assert _finetuned_members(runs, "literature") == ["cnn_f__full__ft__ml-literature"]
    assert _finetuned_members(runs - {"cnn_f__full__ft"}, None)[-1] == "cnn_f__full__ft__ml"


def test_the_mean_the_starting_weights_brought_travels_with_the_fine_tuned_file(tmp_path):
    """Weights that bring their own mean (MatConvNet files: a mean image) normalise the faces in
    training; the fine-tuned file carries that mean, so a run started from it, a unit rebuilt
    from its state alone (load_unit, predict) and featbench extract all normalise the same way."""
    from extract.encoders import create_encoder
    from extract.registry import get_spec
    from extract.weights import MEAN_KEY

    from classify.ft_net import create_finetune_net

    spec = get_spec("timm:test_efficientnet")
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.2, 0.8, (SIZE, SIZE, 3)).astype(np.float32)  # a mean image at SIZE
    net, _ = create_finetune_net(spec, "random:0", outputs=2, input_size=SIZE)
    assert MEAN_KEY not in net.export_state()  # no mean brought: the spec's, nothing saved
    sd = net.export_state()
    sd[MEAN_KEY] = torch.from_numpy(mean)
    path = tmp_path / "model.pt"
    torch.save(sd, path)

    faces = torch.from_numpy(rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8))
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    expected = (faces.permute(0, 3, 1, 2).float() * spec.pixel_scale
                - torch.from_numpy(mean).permute(2, 0, 1)[None]) / std
    ft, info = create_finetune_net(spec, str(path), outputs=2, input_size=SIZE, reinit="head")
    assert "mean image" in info["preprocessing"]["mean_source"]
    assert torch.allclose(ft.preprocess(faces).clone(), expected, atol=1e-4)
    assert torch.equal(ft.export_state()[MEAN_KEY], torch.from_numpy(mean))
    rebuilt, _ = create_finetune_net(spec, "random:0", outputs=2, input_size=SIZE)
    rebuilt.load_exported(ft.export_state())
    assert torch.allclose(rebuilt.preprocess(faces).clone(), expected, atol=1e-4)
    enc = create_encoder(spec.name, weights=str(path), input_size=SIZE, device="cpu")
    with torch.no_grad():
        assert torch.allclose(enc.module[0](faces).clone(), expected, atol=1e-4)
    assert "mean image" in enc.preprocessing["mean_source"]


def test_codes_of_a_network_fine_tuned_at_a_small_input_size(tmp_path):
    """CNN-F fine-tuned on 64-pixel faces has an fc6 of another width (256 inputs, not 9216):
    featbench extract --weights <its model.pt> rebuilds it and gives 4096-d fc6 codes of those
    weights, at the size the run trained at; a file that is not a run's still has to fit."""
    from extract.encoders import create_encoder
    from extract.registry import get_spec

    from classify.ft_net import create_finetune_net

    net, info = create_finetune_net(get_spec("cnn_f"), "random:0", outputs=12, input_size=64)
    run = tmp_path / "models" / "cnn_f__full__ft__ml"
    run.mkdir(parents=True)
    torch.save(net.export_state(), run / "model.pt")
    (run / "settings.json").write_text(json.dumps({"run": run.name, "clf": "ft",
                                                   "network": {"input_size": 64}}))
    enc = create_encoder("cnn_f", weights=str(run / "model.pt"), device="cpu")
    faces = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    codes = np.asarray(enc(faces))
    assert codes.shape == (3, 4096) and enc.spec.input_size == 64
    with torch.no_grad():  # the fine-tuned fc6 (+ ReLU) on the fine-tuned conv body
        z = net.net.classifier[0](torch.flatten(net.net.features(net.preprocess(torch.from_numpy(faces))), 1))
    assert np.allclose(codes, torch.relu(z).numpy(), atol=1e-4)
    torch.save(net.export_state(), tmp_path / "other.pt")  # no settings.json beside it
    with pytest.raises(WeightsError, match="classifier.0.weight"):
        create_encoder("cnn_f", weights=str(tmp_path / "other.pt"), device="cpu")


@pytest.mark.parametrize("lr", [-1, 0, float("nan")])
def test_a_learning_rate_that_is_not_positive_is_refused_before_any_unit_trains(lr):
    from classify.finetune import FinetuneConfig
    from featbench.core.errors import UsageError

    with pytest.raises(UsageError, match="--lr must be > 0"):
        FinetuneConfig(model="cnn_f", lr=lr)
