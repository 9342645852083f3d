"""The backbone registry, the network definitions and the weights paths — all offline.

Every network is built with random weights (timm's ``pretrained=False`` habit); pretrained
files are stand-ins the tests write themselves under the names the real files have.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from extract.encoders import create_encoder, hog_batch  # noqa: E402
from extract.registry import BackboneSpec, get_spec, list_specs, register  # noqa: E402
from extract.weights import (convert_matconvnet, convert_vgg_face_dag, load_network,  # noqa: E402
                             parse_weights, read_state_dict, weights_status)
from featbench.core.errors import UsageError, WeightsError  # noqa: E402

PAPER = ("alexnet", "zfnet", "cnn_f", "cnn_m", "cnn_s", "vgg16", "vgg_face", "googlenet",
         "resnet50", "resnet152")
#: 224-input networks too slow for the default run at batch 1 on 2 cores (covered by -m slow);
#: vgg16 shares VGG-Face's architecture, which stays in the fast run
SLOW = {"vgg16", "resnet152"}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty $TORCH_HOME, and any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    return ckpt


def _faces(n=2, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _codes(net, faces):
    """Codes of a LoadedNetwork (no preprocessing: plain float input) for comparisons."""
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        return net.module(x).numpy()


# --- the registry ----------------------------------------------------------------------------
def test_registry_holds_every_network_of_the_paper_and_the_baselines():
    names = [s.name for s in list_specs()]
    assert set(PAPER) | {"hog", "dlib_face"} <= set(names)
    dims = {s.name: s.dims for s in list_specs()}
    assert dims["googlenet"] == 1024 and dims["resnet152"] == 2048 and dims["dlib_face"] == 128
    assert all(dims[n] == 4096 for n in ("alexnet", "zfnet", "cnn_f", "cnn_m", "cnn_s", "vgg16",
                                         "vgg_face"))


def test_register_refuses_a_duplicate_name():
    with pytest.raises(UsageError, match="already registered"):
        register(BackboneSpec("alexnet", "alexnet", "torch"))


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(UsageError) as err:
        get_spec("resnet125")
    assert str(err.value) == ("unknown model 'resnet125'; did you mean 'resnet152'? "
                              "(featbench models lists all)")


def test_cli_unknown_model_is_one_line_and_exit_2(capsys):
    from featbench.app.cli import main

    assert main(["extract", "--model", "resnet125"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["featbench: error: unknown model 'resnet125'; did you mean 'resnet152'? "
                   "(featbench models lists all)"]


def test_models_json_lists_name_dims_and_weights_status(capsys, torch_home):
    import json

    from featbench.app.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rows}
    assert by["resnet50"]["dims"] == 2048
    assert by["alexnet"]["weights_status"] == "not cached (alexnet-owt-7be5be79.pth)"
    assert by["hog"]["weights_status"] == "n/a"
    assert by["dlib_face"]["weights_status"] == "built-in"


def test_torchvision_cache_file_names_match_the_weights_enums():
    import torchvision.models as tvm

    for spec in list_specs():
        if spec.pretrained and spec.pretrained.startswith("torchvision:"):
            enum, _, member = spec.pretrained.split(":")[1].partition(".")
            assert getattr(getattr(tvm, enum), member).url.endswith("/" + spec.weights_file)


# --- contract: real code size == declared, no NaN --------------------------------------------
@pytest.mark.parametrize("name", [
    pytest.param(s.name, marks=pytest.mark.slow) if s.name in SLOW else s.name
    for s in list_specs()])
def test_every_network_codes_have_the_declared_size(name):
    spec = get_spec(name)
    enc = create_encoder(spec, weights="random:0" if spec.kind == "torch" else None, device="cpu")
    codes = enc(_faces(1 if spec.input_size >= 224 and spec.kind == "torch" else 2))
    assert codes.dtype == np.float32
    assert codes.shape[1] == spec.dims
    assert np.isfinite(codes).all()


@pytest.mark.parametrize("name", ["tv:resnet18", "timm:resnet18"])
def test_open_families_resolve_with_their_real_code_size(name):
    spec = get_spec(name)
    assert spec.dims == 512
    codes = create_encoder(spec, weights="random:0")(_faces(1, spec.input_size))
    assert codes.shape == (1, 512) and np.isfinite(codes).all()


def test_regions_of_another_size_are_resized_in_the_forward():
    enc = create_encoder("cnn_f", weights="random:0")
    assert enc(_faces(2, size=96)).shape == (2, 4096)


# --- CNN-F / M / S: the PROTOCOL.md table ---------------------------------------------------
TABLE = {  # conv: (filters, size, stride, pad); lrn after conv1/2; pool factor after conv
    "cnn_f": [(64, 11, 4, 0), (256, 5, 1, 2), (256, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)],
    "cnn_m": [(96, 7, 2, 0), (256, 5, 2, 1), (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1)],
    "cnn_s": [(96, 7, 2, 0), (256, 5, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1)],
}
LRN = {"cnn_f": (0, 1), "cnn_m": (0, 1), "cnn_s": (0,)}
POOL_STRIDE = {"cnn_f": {0: 2, 1: 2, 4: 2}, "cnn_m": {0: 2, 1: 2, 4: 2},
               "cnn_s": {0: 3, 1: 2, 4: 3}}


@pytest.mark.parametrize("arch", sorted(TABLE))
def test_cnn_fms_layers_match_the_protocol_table(arch):
    from torch import nn

    from extract.nets import build_convnet

    model = build_convnet(arch)
    blocks, current = [], None
    for m in model.features:  # group the flat Sequential into conv blocks
        if isinstance(m, nn.Conv2d):
            current = {"conv": m, "lrn": False, "pool": None}
            blocks.append(current)
        elif isinstance(m, nn.LocalResponseNorm):
            current["lrn"] = True
        elif isinstance(m, nn.Sequential) or isinstance(m, nn.MaxPool2d):
            pool = m[-1] if isinstance(m, nn.Sequential) else m
            current["pool"] = pool.stride
    assert len(blocks) == 5
    for i, (block, (filters, size, stride, pad)) in enumerate(zip(blocks, TABLE[arch])):
        c = block["conv"]
        assert (c.out_channels, c.kernel_size, c.stride, c.padding) == (
            filters, (size, size), (stride, stride), (pad, pad)), f"{arch} conv{i + 1}"
        assert block["lrn"] == (i in LRN[arch]), f"{arch} conv{i + 1} LRN"
        assert block["pool"] == POOL_STRIDE[arch].get(i), f"{arch} conv{i + 1} pool"
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [4096, 4096, 1000]
    with torch.inference_mode():
        assert model.features(torch.zeros(1, 3, 224, 224)).shape[-2:] == (6, 6)


# --- weights, offline ------------------------------------------------------------------------
def test_random_weights_are_seeded():
    a = _codes(load_network(get_spec("cnn_f"), "random:0"), _faces(1))
    b = _codes(load_network(get_spec("cnn_f"), "random:0"), _faces(1))
    c = _codes(load_network(get_spec("cnn_f"), "random:1"), _faces(1))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_a_stand_in_under_torchvisions_file_name_is_not_labelled_imagenet(torch_home):
    """Random weights saved as ``alexnet-owt-7be5be79.pth``: refused as imagenet (issue 25, 3);
    the same file given as --weights PATH loads, named by its own sha256."""
    spec = get_spec("alexnet")
    src = load_network(spec, "random:3")
    path = torch_home / "alexnet-owt-7be5be79.pth"
    torch.save(_full_state(spec, 3), path)
    assert weights_status(spec) == "cached"
    with pytest.raises(WeightsError, match="not alexnet IMAGENET1K_V1's published file") as err:
        load_network(spec, "imagenet")
    assert str(err.value).startswith(str(path)) and "does not start with 7be5be79" in str(err.value)
    net = load_network(spec, str(path))
    assert net.weights_id.startswith("file sha256:")
    assert np.array_equal(_codes(net, _faces(1)), _codes(src, _faces(1)))


def _full_state(spec, seed):
    """The whole network's state dict as ``random:<seed>`` initialises it."""
    torch.manual_seed(seed)
    return spec.constructor().state_dict()


def test_imagenet_not_cached_offline_names_file_folder_and_url(torch_home):
    with pytest.raises(WeightsError) as err:  # tests run offline (conftest)
        load_network(get_spec("alexnet"), "imagenet")
    msg = str(err.value)
    assert msg.startswith(f"alexnet-owt-7be5be79.pth is not in {torch_home} and featbench is offline")
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert msg.endswith("or use --weights random:0")


def test_state_dict_file_loads_strictly_and_mismatches_name_keys(tmp_path):
    spec = get_spec("cnn_f")
    sd = _full_state(spec, 5)
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    net = load_network(spec, str(good))
    assert net.weights_id.startswith("file sha256:") and len(net.weights_id) == 12 + 64
    assert np.array_equal(_codes(net, _faces(1)), _codes(load_network(spec, "random:5"), _faces(1)))

    bad = dict(sd)
    bad["features.0.weight"] = bad["features.0.weight"][:32]
    del bad["classifier.0.bias"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"bad.pt does not fit cnn_f: shape mismatch at "
                                           r"features.0.weight.*missing keys classifier.0.bias"):
        load_network(spec, str(tmp_path / "bad.pt"))


def test_fine_tuned_head_after_the_code_layer_is_allowed(tmp_path):
    spec = get_spec("cnn_f")
    sd = _full_state(spec, 6)
    sd["classifier.6.weight"] = torch.zeros(2, 4096)  # a 2-way fine-tuned fc8
    sd["classifier.6.bias"] = torch.zeros(2)
    torch.save(sd, tmp_path / "ft.pt")
    net = load_network(spec, str(tmp_path / "ft.pt"))
    assert np.array_equal(_codes(net, _faces(1)), _codes(load_network(spec, "random:6"), _faces(1)))


def test_weights_choices_are_validated(tmp_path):
    spec = get_spec("alexnet")
    assert parse_weights(None, spec).mode == "pretrained"
    assert parse_weights("random", spec).seed == 0
    assert parse_weights("random:7", spec).seed == 7
    with pytest.raises(WeightsError, match="seed must be an integer"):
        parse_weights("random:x", spec)
    with pytest.raises(WeightsError, match="no such weights file"):
        parse_weights(str(tmp_path / "nope.pt"), spec)
    with pytest.raises(WeightsError, match="zfnet has no published pretrained weights"):
        load_network(get_spec("zfnet"), "imagenet")


def test_vgg_face_dag_port_converts_and_loads_strictly(torch_home):
    from extract.weights import _VGG16_CONVS, _VGG_FACE_DAG_CONVS

    spec = get_spec("vgg_face")
    torch.manual_seed(11)
    model = spec.constructor()
    names = {f"features.{i}": c for c, i in zip(_VGG_FACE_DAG_CONVS, _VGG16_CONVS)}
    names.update({"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"})
    dag = {f"{names[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v
           for k, v in model.state_dict().items()}
    assert "conv1_1.weight" in dag and "fc6.weight" in dag and len(dag) == 32
    assert convert_vgg_face_dag(dag).keys() == model.state_dict().keys()
    torch.save(dag, torch_home / "vgg_face_dag.pth")
    net = load_network(spec, "imagenet")
    assert net.weights_id.startswith("vggface sha256:")
    ref = spec.truncate(model).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(net.module(x), ref(x))


def _to_matconvnet(model, mean_image):
    """A MatConvNet SimpleNN dict (what scipy.io.savemat writes as imagenet-vgg-f.mat)."""
    from torch import nn

    layers = []
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for i, m in enumerate(convs):
        w = m.weight.detach().numpy()
        if isinstance(m, nn.Linear):
            side = 6 if i == 5 else 1
            w = w.reshape(w.shape[0], -1, side, side)
        filters = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # O,I,H,W -> H,W,I,O
        weights = np.empty((1, 2), dtype=object)
        weights[0, 0], weights[0, 1] = filters, m.bias.detach().numpy().reshape(-1, 1)
        name = f"conv{i + 1}" if i < 5 else f"fc{i + 1}"
        layers.append({"name": name, "type": "conv", "weights": weights, "stride": [[1, 1]],
                       "pad": [[0, 0, 0, 0]]})
        layers.append({"name": f"relu{i + 1}", "type": "relu"})
        if i < 2:
            layers.append({"name": f"norm{i + 1}", "type": "lrn",
                           "param": np.array([[5, 1, 1e-4 / 5, 0.75]])})
    cell = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cell[0, i] = layer
    return {"layers": cell, "meta": {"normalization": {"averageImage": mean_image}}}


def test_matconvnet_file_converts_and_loads_strictly(torch_home):
    import scipy.io

    from extract.encoders import create_preprocess

    spec = get_spec("cnn_f")
    torch.manual_seed(12)
    model = spec.constructor()
    mean_rgb = np.array([[[120.0, 110.0, 100.0]]], np.float32)  # (1, 1, 3) as MatConvNet's
    scipy.io.savemat(torch_home / "imagenet-vgg-f.mat", _to_matconvnet(model, mean_rgb))
    mat = read_state_dict(torch_home / "imagenet-vgg-f.mat")
    sd, mean = convert_matconvnet(mat, spec.constructor())
    assert sd.keys() == model.state_dict().keys() and np.allclose(mean, [120, 110, 100])
    net = load_network(spec, "imagenet")
    assert net.weights_id.startswith("imagenet sha256:")
    assert np.allclose(net.mean, [120, 110, 100])
    ref = spec.truncate(model).eval()
    x = torch.rand(1, 3, 224, 224) * 50
    with torch.inference_mode():
        assert torch.allclose(net.module(x), ref(x), rtol=1e-5, atol=1e-5)
        pre = create_preprocess(spec, mean=net.mean)
        y = pre(torch.full((1, 224, 224, 3), 130, dtype=torch.uint8))
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([10.0, 20.0, 30.0]))


# --- HOG and dlib ----------------------------------------------------------------------------
def test_hog_equals_scikit_image():
    feature = pytest.importorskip("skimage.feature")
    rng = np.random.default_rng(0)
    grey = rng.random((2, 112, 112)).astype(np.float32)
    ours = hog_batch(grey)
    for i in range(2):
        ref = feature.hog(grey[i], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                          block_norm="L2-Hys", feature_vector=True)
        assert ref.shape == (6084,)
        assert np.allclose(ours[i], ref, atol=2e-3), np.abs(ours[i] - ref).max()


def test_dlib_reference_takes_no_random_weights():
    with pytest.raises(WeightsError, match="cannot be randomly initialised"):
        create_encoder("dlib_face_ref", weights="random:0")
    assert create_encoder("dlib_face_ref").weights_id == "dlib"
    assert create_encoder("hog").weights_id == "none"


def test_fast_lrn_equals_torchs():
    import torch.nn.functional as F

    from extract.nets import LocalResponseNorm

    x = torch.rand(2, 64, 9, 9) * 40
    for lrn in (LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
                LocalResponseNorm(4, alpha=2e-3, beta=0.5, k=2.0)):
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            ref = F.local_response_norm(xx, lrn.size, lrn.alpha, lrn.beta, lrn.k)
            assert torch.allclose(lrn(xx), ref, rtol=1e-5, atol=1e-6)
