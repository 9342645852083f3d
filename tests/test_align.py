"""The aligned-face cache: build, skip counting, caching, staleness, resume, reading."""

import multiprocessing
import os
import pickle

import cv2
import numpy as np
import pytest

from featbench.core import align
from featbench.core.align import AlignedFaces, align_dataset, ensure_aligned
from featbench.core.errors import DataError, StoreError, UsageError
from featbench.core.faces import CANONICAL_SIZE, TEMPLATE68, region_boxes, transform_points
from featbench.core.frames import FrameTable, build_frames
from featbench.core.workspace import Workspace

AUS = ("AU01", "AU12")


def _moved(k):
    """A different similarity per frame: the template turned, scaled and shifted."""
    a, s = np.radians(-12 + 6 * k), 1.1 + 0.15 * k
    m = np.array([[s * np.cos(a), -s * np.sin(a), 60 + 9 * k], [s * np.sin(a), s * np.cos(a), 20 + 4 * k]])
    return transform_points(TEMPLATE68, m)


def _face_image(landmarks, shape=(360, 480)):
    img = np.full(shape + (3,), 40, np.uint8)
    for x, y in np.rint(landmarks).astype(int):
        cv2.circle(img, (int(x), int(y)), 2, (250, 220, 200), -1)
    return img


def _write(path, rgb):
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return str(path)


def _table(rows, root, *, landmark_points=0, pre_aligned=False, dataset="t"):
    return FrameTable(dataset, root, AUS, build_frames(rows, AUS), {}, False, pre_aligned,
                      landmark_points)


def _row(k, source, *, index=-1, landmark_file="", subject="S1"):
    return dict(subject=subject, video="v1", frame=k, source=source, source_index=index,
                landmark_file=landmark_file, split="", AU01=k % 2, AU12=1 - k % 2)


def _landmark_table(tmp_path, n=6, missing=(4,)):
    """n images with 68-point .mat landmark files; frames in ``missing`` have no file."""
    import scipy.io

    rows = []
    for k in range(n):
        lm = _moved(k)
        src = _write(tmp_path / f"f{k}.png", _face_image(lm))
        lm_file = ""
        if k not in missing:
            lm_file = str(tmp_path / f"f{k}_lm.mat")
            scipy.io.savemat(lm_file, {"pts": lm})
        rows.append(_row(k, src, landmark_file=lm_file))
    return _table(rows, tmp_path, landmark_points=68)


def test_landmark_frames_are_aligned_and_missing_landmarks_counted(tmp_path):
    table = _landmark_table(tmp_path)
    report = align_dataset(table, tmp_path / "faces.h5", progress=False)
    assert report.built and report.frames == 6 and report.aligned == 5
    assert report.skipped["no landmarks"] == 1 and report.processed == 6
    with AlignedFaces(report.path) as af:
        assert len(af) == 6 and af.size == CANONICAL_SIZE
        np.testing.assert_array_equal(af.keys, table.keys())
        assert af.valid.tolist() == [True, True, True, True, False, True]
        assert af.skipped == report.skipped
        lms = af.landmarks
        assert np.abs(lms[af.valid] - TEMPLATE68).max() < 0.05
        assert np.isnan(lms[4]).all()
        faces = af.read([0, 1, 4])
        assert faces.shape == (3, CANONICAL_SIZE, CANONICAL_SIZE, 3) and faces.dtype == np.uint8
        assert faces[2].max() == 0  # no face: black, and flagged invalid
        # the dots are back on the template: bright at the eye corners of every valid face
        for x, y in np.rint(TEMPLATE68[[36, 45, 48, 54]]).astype(int):
            assert (faces[:2, y, x] > 150).all()
        np.testing.assert_array_equal(af.boxes[0], region_boxes(lms[0]))


def test_second_call_reads_the_cache_and_a_changed_table_rebuilds(tmp_path):
    table = _landmark_table(tmp_path, n=4, missing=())
    ws = Workspace(tmp_path / "ws")
    path = ensure_aligned(table, ws, progress=False)
    assert path == ws.aligned_path("t") and path.exists()
    mtime = path.stat().st_mtime_ns
    again = align_dataset(table, path, progress=False)
    assert not again.built and again.processed == 0 and again.aligned == 4
    assert "up to date" in again.summary()
    assert ensure_aligned(table, ws, progress=False) == path
    assert path.stat().st_mtime_ns == mtime
    # a different frame list is a different data set: rebuilt, not mixed
    smaller = table.subset(np.array([True, True, False, True]))
    rebuilt = align_dataset(smaller, path, progress=False)
    assert rebuilt.built and rebuilt.processed == 3
    with AlignedFaces(path) as af:
        np.testing.assert_array_equal(af.keys, smaller.keys())
    # so is a changed pixel source
    _write(table.frames["source"][1], np.zeros((50, 60, 3), np.uint8))
    assert align_dataset(smaller, path, progress=False).built


def test_a_photo_without_a_face_is_a_counted_skip(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    rows = [_row(0, _write(tmp_path / "noise.png", rng.integers(0, 256, (200, 260, 3), dtype=np.uint8))),
            _row(1, _write(tmp_path / "astronaut.png", skimage_data.astronaut()))]
    report = align_dataset(_table(rows, tmp_path), tmp_path / "faces.h5", progress=False)
    assert report.skipped == {"no landmarks": 0, "no face detected": 1, "frame unreadable": 0}
    assert report.aligned == 1 and "1 no face detected" in report.summary()
    with AlignedFaces(report.path) as af:
        assert af.valid.tolist() == [False, True]
        eyes = af.landmarks[1]
        for eye in (slice(36, 42), slice(42, 48)):
            assert np.linalg.norm(eyes[eye].mean(0) - TEMPLATE68[eye].mean(0)) < 4.0


def test_pre_aligned_crops_pass_through_with_template_regions(tmp_path):
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[:56] = (200, 10, 10)
    rows = [_row(0, _write(tmp_path / "00001.jpg", crop))]
    report = align_dataset(_table(rows, tmp_path, pre_aligned=True), tmp_path / "faces.h5",
                           progress=False)
    assert report.aligned == 1
    with AlignedFaces(report.path) as af:
        face = af.read([0])[0]
        assert face.shape == (224, 224, 3)
        assert face[:100, :, 0].min() > 180 and face[124:, :, 0].max() < 30
        assert np.isnan(af.landmarks).all()
        np.testing.assert_array_equal(af.boxes[0], region_boxes(TEMPLATE68))


def test_frames_missing_from_a_video_are_counted(tmp_path):
    path = str(tmp_path / "v.avi")
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (480, 360))
    for k in range(3):
        out.write(_face_image(_moved(k))[..., ::-1].copy())
    out.release()
    table = _table([_row(k, path, index=k) for k in range(5)], tmp_path, landmark_points=68)
    lms = np.stack([_moved(k) for k in range(5)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("featbench.core.datasets.load_landmarks", lambda t, **kw: lms)
        report = align_dataset(table, tmp_path / "faces.h5", progress=False)
    assert report.aligned == 3 and report.skipped["frame unreadable"] == 2


def test_an_unreadable_image_is_a_data_error_and_leaves_no_cache(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"no image")
    table = _table([_row(0, str(tmp_path / "bad.png"))], tmp_path)
    with pytest.raises(DataError, match="bad.png"):
        align_dataset(table, tmp_path / "faces.h5", progress=False)
    assert not (tmp_path / "faces.h5").exists()


def test_a_crash_leaves_no_valid_looking_cache_and_the_rerun_resumes(tmp_path, monkeypatch):
    table = _landmark_table(tmp_path, n=6, missing=())
    path = tmp_path / "faces.h5"
    monkeypatch.setattr(align, "BLOCK_ROWS", 2)
    real_write, calls = align._Block.write, []

    def crash_on_second_write(self):
        calls.append(len(self))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(self)

    monkeypatch.setattr(align._Block, "write", crash_on_second_write)
    with pytest.raises(KeyboardInterrupt):
        align_dataset(table, path, progress=False)
    assert not path.exists() and path.with_name("faces.h5.partial").exists()
    monkeypatch.setattr(align._Block, "write", real_write)
    report = align_dataset(table, path, progress=False)
    assert report.built and report.processed == 4 and report.aligned == 6
    assert not path.with_name("faces.h5.partial").exists()
    with AlignedFaces(path) as af:
        assert af.valid.all() and np.abs(af.landmarks - TEMPLATE68).max() < 0.05


def test_read_regions_orders_and_sizes(tmp_path):
    table = _landmark_table(tmp_path, n=6, missing=())
    path = align_dataset(table, tmp_path / "faces.h5", progress=False).path
    af = AlignedFaces(path)
    full = af.read(range(6))
    np.testing.assert_array_equal(af.read([5, 0, 3, 3]), full[[5, 0, 3, 3]])
    assert af.read([1, 2], size=112).shape == (2, 112, 112, 3)
    for region, box in zip(("upper", "middle", "lower"), region_boxes(TEMPLATE68)):
        crops = af.read([2, 0], region=region, size=64)
        assert crops.shape == (2, 64, 64, 3) and crops.dtype == np.uint8
        native = af.read([2, 0], region=region)
        assert native.shape == (2, box[3] - box[1], box[2] - box[0], 3)
        x0, y0, x1, y1 = af.boxes[0, ["upper", "middle", "lower"].index(region)]
        np.testing.assert_array_equal(af.read([0], region=region, size=(y1 - y0, x1 - x0))[0],
                                      full[0, y0:y1, x0:x1])
    assert af.read([], region="upper", size=32).shape == (0, 32, 32, 3)
    with pytest.raises(UsageError, match="did you mean 'upper'"):
        af.read([0], region="uper")
    # a copy travels to another process (DataLoader workers) and opens its own handle
    clone = pickle.loads(pickle.dumps(af))
    np.testing.assert_array_equal(clone.read([4]), full[[4]])
    if "fork" in multiprocessing.get_all_start_methods():
        # a forked child inherits the parent's open handle and must not use it
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        child = ctx.Process(target=lambda: q.put((os.getpid(), int(af.read([1, 2, 3]).sum()))))
        child.start()
        pid, total = q.get(timeout=60)
        child.join(60)
        assert pid != os.getpid() and total == int(full[1:4].sum())
        assert af._pid == os.getpid()  # the parent's handle is untouched
    af.close()


def test_reader_refuses_what_it_does_not_understand(tmp_path):
    with pytest.raises(StoreError, match="featbench align"):
        AlignedFaces(tmp_path / "nothing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(StoreError, match="junk.h5"):
        AlignedFaces(tmp_path / "junk.h5")
    import h5py

    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["format_version"] = 99
        f.attrs["complete"] = True
    with pytest.raises(StoreError, match="format 99"):
        AlignedFaces(tmp_path / "old.h5")


def test_cli_builds_reports_and_draws_the_sheet(tmp_path, capsys):
    from featbench.app.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        _write(photos / f"p{k}.png", _face_image(_moved(k)))
    (photos / "manifest.csv").write_text("image,subject,AU12\n" + "".join(
        f"p{k}.png,S{k},{k % 2}\n" for k in range(3)))
    ws = str(tmp_path / "ws")
    args = ["--workspace", ws, "align", "--dataset", "folder", "--root", str(photos)]
    # drawn dots are no face for dlib: every photo is a counted skip, and --show says so
    assert main(args) == 0
    assert "skipped: 3 no face detected" in capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("cache up to date")
    assert main(args + ["--show"]) == 2
    assert "no frame has a face" in capsys.readouterr().err


def test_sheet_shows_aligned_frames(tmp_path):
    table = _landmark_table(tmp_path, n=6, missing=(2,))
    path = align_dataset(table, tmp_path / "faces.h5", progress=False).path
    out = align.render_sheet(table, path, tmp_path / "sheet" / "s.png", n=3)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 500


def test_disfa_quirks_are_counted_not_fatal(disfa_tree, tmp_path):
    from featbench.core.datasets import load_dataset

    table = load_dataset("disfa", root=disfa_tree)
    report = align_dataset(table, tmp_path / "faces.h5", progress=False)
    assert report.skipped["no landmarks"] == 1  # SN002 frame 3 has no landmark file
    assert report.aligned + sum(report.skipped.values()) == len(table)
    with AlignedFaces(report.path) as af:
        np.testing.assert_array_equal(af.keys, table.keys())
        assert int(af.valid.sum()) == report.aligned


def test_synthetic_set_end_to_end(tmp_path):
    synth = pytest.importorskip("featbench.core.synth")
    from featbench.core.datasets import load_dataset

    root = tmp_path / "synth"
    synth.generate_dataset(root, layout="disfa", subjects=3, frames=12, progress=False)
    table = load_dataset("synth", root=root)
    ws = Workspace(tmp_path)
    path = ensure_aligned(table, ws, progress=False)
    with AlignedFaces(path) as af:
        assert len(af) == len(table) and af.valid.all()
        lm = af.landmarks
        # every synthetic face lands on the template: head roll gone (level eyes), each eye
        # within a tenth of the eye distance of the template's (the synthetic faces'
        # proportions and expressions are not the template's; a photo's are, see test_faces)
        right, left = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
        assert np.abs(right[:, 1] - left[:, 1]).max() < 2.0
        iod = np.linalg.norm(TEMPLATE68[42:48].mean(0) - TEMPLATE68[36:42].mean(0))
        for got, eye in ((right, slice(36, 42)), (left, slice(42, 48))):
            assert np.linalg.norm(got - TEMPLATE68[eye].mean(0), axis=1).max() < 0.1 * iod
        crops = af.read(np.arange(len(af)), region="lower", size=48)
        assert crops.shape == (len(table), 48, 48, 3) and crops.std() > 5
    assert not align_dataset(table, path, progress=False).built
