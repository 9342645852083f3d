"""Face geometry: template, similarity alignment, regions, dlib detection, frame reading."""

import numpy as np
import pytest

from featbench.core import faces
from featbench.core.errors import DataError
from featbench.core.faces import (CANONICAL_SIZE, TEMPLATE68, align_face, crop_region, region_boxes,
                             similarity_transform, transform_points)
from featbench.core.landmarks import LEFT_BROW, LEFT_EYE, OUTER_MOUTH, RIGHT_BROW, RIGHT_EYE


def _similarity(angle_deg, scale, shift):
    a = np.radians(angle_deg)
    m = np.zeros((2, 3))
    m[:, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m[:, 2] = shift
    return m


def _dot_face(landmarks, shape):
    """A grey image with a white 3x3 dot at every landmark: pixels that alignment must move."""
    img = np.full(shape + (3,), 60, np.uint8)
    for x, y in np.rint(landmarks).astype(int):
        img[y - 1:y + 2, x - 1:x + 2] = 255
    return img


def _in_box(pt, box):
    x0, y0, x1, y1 = box
    return x0 <= pt[0] < x1 and y0 <= pt[1] < y1


def test_template_is_a_face_inside_the_frame():
    assert TEMPLATE68.shape == (68, 2) and TEMPLATE68.dtype == np.float32
    assert (TEMPLATE68 > 10).all() and (TEMPLATE68 < CANONICAL_SIZE - 10).all()
    right, left = TEMPLATE68[list(RIGHT_EYE)].mean(0), TEMPLATE68[list(LEFT_EYE)].mean(0)
    assert right[0] < left[0] and abs(right[1] - left[1]) < 1e-4  # level eyes, mirrored
    assert TEMPLATE68[list(RIGHT_BROW), 1].max() < right[1] < TEMPLATE68[30, 1] < TEMPLATE68[57, 1]
    np.testing.assert_allclose(TEMPLATE68[:, 0] + TEMPLATE68[faces._mirror_index(), 0],
                               CANONICAL_SIZE, atol=1e-4)


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (10, 2))
    true = _similarity(23.0, 1.7, (5.0, -12.0))
    dst = transform_points(src, true)
    np.testing.assert_allclose(similarity_transform(src, dst), true, atol=1e-4)
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((3, 2)), np.zeros((3, 2)))


def test_aligning_the_template_is_the_identity():
    img = _dot_face(TEMPLATE68, (CANONICAL_SIZE, CANONICAL_SIZE))
    aligned, M = align_face(img, TEMPLATE68)
    np.testing.assert_allclose(M, [[1, 0, 0], [0, 1, 0]], atol=1e-5)
    np.testing.assert_array_equal(aligned, img)


@pytest.mark.parametrize("angle,scale,shift", [(17.0, 2.3, (140.0, -30.0)), (-35.0, 0.6, (20.0, 90.0))])
def test_a_moved_face_is_brought_back_within_a_pixel(angle, scale, shift):
    move = _similarity(angle, scale, shift)
    landmarks = transform_points(TEMPLATE68, move)
    frame = _dot_face(landmarks, (480, 640))
    aligned, M = align_face(frame, landmarks)
    back = transform_points(landmarks, M)
    assert np.abs(back - TEMPLATE68).max() < 1.0
    # and the pixels followed: the dots are back on the template points
    for x, y in np.rint(TEMPLATE68[list(RIGHT_EYE) + list(OUTER_MOUTH)]).astype(int):
        assert aligned[y - 1:y + 2, x - 1:x + 2].max() > 150


def test_alignment_ignores_missing_non_stable_points_but_not_stable_ones():
    lm = TEMPLATE68.copy()
    lm[60] = np.nan  # an inner-mouth corner: not used
    _, M = align_face(np.zeros((224, 224, 3), np.uint8), lm)
    np.testing.assert_allclose(M[:, :2], np.eye(2), atol=1e-5)
    lm[36] = np.nan
    with pytest.raises(ValueError):
        align_face(np.zeros((224, 224, 3), np.uint8), lm)


def test_region_boxes_hold_their_own_landmarks_and_not_the_others():
    for move in (_similarity(0, 1, (0, 0)), _similarity(8.0, 0.9, (15.0, 10.0))):
        lm = transform_points(TEMPLATE68, move)
        upper, middle, lower = region_boxes(lm)
        eye_centres = [lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0)]
        nose_tip, mouth_centre = lm[30], lm[list(OUTER_MOUTH)].mean(0)
        for i in list(RIGHT_BROW) + list(LEFT_BROW) + list(RIGHT_EYE) + list(LEFT_EYE):
            assert _in_box(lm[i], upper), i
        assert _in_box(nose_tip, middle) and _in_box(lm[33], middle)
        for i in OUTER_MOUTH:
            assert _in_box(lm[i], lower), i
        assert _in_box(lm[8], lower)  # the chin
        assert not _in_box(nose_tip, upper) and not _in_box(mouth_centre, upper)
        assert not any(_in_box(c, middle) for c in eye_centres) and not _in_box(mouth_centre, middle)
        assert not any(_in_box(c, lower) for c in eye_centres) and not _in_box(nose_tip, lower)


def test_region_boxes_are_clipped_to_the_image():
    big = transform_points(TEMPLATE68, _similarity(0, 1.8, (-100.0, -100.0)))
    boxes = region_boxes(big)
    assert (boxes >= 0).all() and (boxes <= CANONICAL_SIZE).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_crop_region_resizes():
    face = np.arange(224 * 224 * 3, dtype=np.uint32).reshape(224, 224, 3).astype(np.uint8)
    box = region_boxes(TEMPLATE68)[1]
    assert crop_region(face, box).shape == (box[3] - box[1], box[2] - box[0], 3)
    assert crop_region(face, box, 64).shape == (64, 64, 3)
    assert crop_region(face, box, (30, 50)).shape == (30, 50, 3)
    assert crop_region(face, box, 64).dtype == np.uint8


def test_no_face_in_noise_is_none():
    rng = np.random.default_rng(1)
    assert faces.detect_landmarks(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) is None


def test_astronaut_is_detected_and_aligned_onto_the_template():
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()
    lm = faces.detect_landmarks(photo)
    assert lm is not None and lm.shape == (68, 2)
    aligned, M = align_face(photo, lm)
    assert aligned.shape == (CANONICAL_SIZE, CANONICAL_SIZE, 3)
    got = transform_points(lm, M)
    for eye in (RIGHT_EYE, LEFT_EYE):
        err = np.linalg.norm(got[list(eye)].mean(0) - TEMPLATE68[list(eye)].mean(0))
        assert err < 4.0, err


def _image_table(tmp_path, images):
    import cv2

    from featbench.core.frames import FrameTable, build_frames

    rows = []
    for k, img in enumerate(images):
        path = tmp_path / f"img{k}.png"
        if img is None:
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), img[..., ::-1])
        rows.append(dict(subject="S1", video="v", frame=k, source=str(path), source_index=-1,
                         landmark_file="", split=""))
    return FrameTable("folder", tmp_path, ("AU01",), build_frames(rows, ("AU01",)))


def _video_table(tmp_path, n_frames, wanted):
    import cv2

    from featbench.core.frames import FrameTable, build_frames

    path = tmp_path / "v.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for k in range(n_frames):
        out.write(np.full((48, 64, 3), 10 * k, np.uint8))
    out.release()
    rows = [dict(subject="S1", video="v", frame=k, source=str(path), source_index=k,
                 landmark_file="", split="") for k in wanted]
    return FrameTable("synth", tmp_path, ("AU01",), build_frames(rows, ("AU01",)))


def test_iter_frames_reads_videos_in_order_and_images():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        table = _video_table(Path(d), 12, [0, 1, 2, 7, 3, 11])
        got = dict(faces.iter_frames(table))
        assert sorted(got) == list(range(6))
        for row, k in enumerate([0, 1, 2, 7, 3, 11]):
            assert abs(int(got[row][..., 0].mean()) - 10 * k) <= 3, (row, k)
        assert list(faces.reading_order(table)) == [0, 1, 2, 4, 3, 5]
        only = list(faces.iter_frames(table, [5, 3]))
        assert [r for r, _ in only] == [3, 5]


def test_iter_frames_past_the_end_of_a_video(tmp_path):
    table = _video_table(tmp_path, 4, [2, 3, 4])
    with pytest.raises(DataError, match="v.avi"):
        list(faces.iter_frames(table))
    got = dict(faces.iter_frames(table, missing="none"))
    assert got[0] is not None and got[1] is not None and got[2] is None


def test_unreadable_files_are_data_errors_naming_them(tmp_path):
    table = _image_table(tmp_path, [np.zeros((8, 8, 3), np.uint8), None])
    it = faces.iter_frames(table)
    row, img = next(it)
    assert row == 0 and img.shape == (8, 8, 3)
    with pytest.raises(DataError, match="img1.png"):
        next(it)
    table.frames.loc[0, "source"] = str(tmp_path / "gone.avi")
    table.frames.loc[0, "source_index"] = 0
    with pytest.raises(DataError, match="gone.avi"):
        list(faces.iter_frames(table, [0]))
