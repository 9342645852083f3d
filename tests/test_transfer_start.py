"""Method B starts from a pretrained network on every machine: dlib_face when ResNet-50's file is not here."""

import pytest

from featbench.app.commands.transfer import resolve_start


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)


def test_without_resnet50s_file_stage_1_starts_from_dlib_face(no_cache):
    from classify.transfer import StartWeights
    from extract.registry import get_spec
    from featbench.core.identity import WeightsId

    backbone, weights, note = resolve_start(None, "auto")
    assert backbone == "dlib_face" and "resnet50-0676ba61.pth not cached" in note
    _, _, identity = StartWeights(get_spec(backbone), weights).load()
    assert WeightsId.parse(identity).is_pretrained  # dlib's shipped weights, not random


def test_a_named_backbone_and_named_weights_are_kept(no_cache):
    backbone, weights, note = resolve_start("tv:mobilenet_v2", "auto")
    assert (backbone, weights) == ("tv:mobilenet_v2", "random:0")
    assert "not pretrained" in note and "--backbone dlib_face" in note
    assert resolve_start(None, "random:3")[:2] == ("resnet50", "random:3")
    assert resolve_start("dlib_face", "auto")[:2] == ("dlib_face", "imagenet")
