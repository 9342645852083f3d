"""extract.weights' source types: one class per source; files describe the weights they used."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from extract.registry import get_spec  # noqa: E402
from extract.weights import (_SOURCES, WeightsSource, load_network, weights_source,  # noqa: E402
                             weights_status)
from featbench.core.errors import WeightsError  # noqa: E402

from test_models import _full_state, _to_matconvnet, torch_home  # noqa: E402,F401


def test_a_mat_files_mean_is_what_the_encoder_records(torch_home):
    """The forward subtracts the .mat file's mean, and the preprocessing written into the
    feature file says so (it used to record the spec's mean)."""
    import scipy.io

    from extract.encoders import create_encoder

    spec = get_spec("cnn_f")
    mean_rgb = np.array([[[120.0, 110.0, 100.0]]], np.float32)
    scipy.io.savemat(torch_home / "imagenet-vgg-f.mat", _to_matconvnet(spec.constructor(), mean_rgb))
    enc = create_encoder(spec, weights="imagenet", device="cpu")
    assert enc.preprocessing["mean"] == pytest.approx([120.0, 110.0, 100.0])
    assert enc.preprocessing["mean"] != pytest.approx(list(spec.mean))
    assert "mean_source" in enc.preprocessing
    rnd = create_encoder(spec, weights="random:0", device="cpu")
    assert rnd.preprocessing["mean"] == pytest.approx(list(spec.mean))


def test_vgg_face_key_names_are_converted_only_for_vgg_face(tmp_path):
    """A VGG-16 file with VGG-Face port's names is not silently renamed into VGG-16."""
    from extract.weights import _VGG16_CONVS, _VGG_FACE_DAG_CONVS

    spec = get_spec("vgg_face")
    names = {f"features.{i}": c for c, i in zip(_VGG_FACE_DAG_CONVS, _VGG16_CONVS)}
    names.update({"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"})
    dag = {f"{names[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v
           for k, v in _full_state(spec, 2).items()}
    torch.save(dag, tmp_path / "dag.pth")
    assert load_network(spec, str(tmp_path / "dag.pth")).weights_id.startswith("file sha256:")
    with pytest.raises(WeightsError, match="does not fit vgg16: .*missing keys features.0.weight"):
        load_network(get_spec("vgg16"), str(tmp_path / "dag.pth"))


class MirrorWeights(WeightsSource):
    """Toy source: a network's published file, read from a local mirror folder."""

    prefix = "mirror"
    folder = None

    def locate(self):
        path = self.folder / self.spec.weights_file
        return path, path.is_file()

    def identity(self):
        return "mirror"


def test_a_new_weights_source_is_one_class(tmp_path, monkeypatch):
    monkeypatch.setitem(_SOURCES, "mirror", MirrorWeights)  # the one line that registers it
    monkeypatch.setattr(MirrorWeights, "folder", tmp_path)
    spec = dataclasses.replace(get_spec("cnn_f"), pretrained="mirror:cnn_f", weights_file="cnn_f.pt")
    assert isinstance(weights_source(spec), MirrorWeights)
    assert weights_status(spec) == "not cached (cnn_f.pt)"
    with pytest.raises(WeightsError, match=f"cnn_f.pt not in {tmp_path}"):
        load_network(spec, "imagenet")
    torch.save(_full_state(spec, 4), tmp_path / "cnn_f.pt")
    net = load_network(spec, "imagenet")
    ref = load_network(spec, "random:4")
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert net.weights_id == "mirror" and torch.equal(net.module(x), ref.module(x))
