"""M2A alignment: template geometry by hand, dlib's landmarks (faces.py) on a rotated real face."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from mer_jax.data import align, faces

SIZE = align.SIZE
LEFT_EYE = np.array([SIZE / 2 - align.EYE_DISTANCE * SIZE / 2, align.EYE_Y * SIZE])
RIGHT_EYE = np.array([SIZE / 2 + align.EYE_DISTANCE * SIZE / 2, align.EYE_Y * SIZE])


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
  return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope="module")
def detector():
  return faces.FaceDetector(scales=(1.0,))


@pytest.fixture(scope="module")
def landmarker():
  return faces.LandmarkDetector()


def _face_box(detector, gray):
  found = detector(np.dstack([gray] * 3))
  if not found:
    return None
  return max(found, key=faces.box_score)[:4]  # the astronaut's suit also scores, lower


def _rotated(gray, degrees):
  """`gray` rotated about a point beside the face; the 2x3 matrix of that rotation."""
  m = cv2.getRotationMatrix2D((200.0, 140.0), degrees, 1.0)
  return cv2.warpAffine(gray, m, gray.shape[::-1], flags=cv2.INTER_CUBIC,
                        borderMode=cv2.BORDER_REFLECT), m


def _apply(m, p):
  return m[:, :2] @ np.asarray(p, np.float64) + m[:, 2]


def _angle(m):
  return np.degrees(np.arctan2(m[1, 0], m[0, 0]))


# --- geometry, by hand ----------------------------------------------------------


@pytest.mark.parametrize("left,right", [((100.0, 80.0), (160.0, 95.0)),
                                        ((300.0, 250.0), (330.0, 230.0)),
                                        ((10.0, 10.0), (90.0, 10.0))])
def test_similarity_puts_the_eyes_at_the_template(left, right):
  m = align.similarity_to_template(left, right)
  np.testing.assert_allclose(_apply(m, left), LEFT_EYE, atol=1e-9)
  np.testing.assert_allclose(_apply(m, right), RIGHT_EYE, atol=1e-9)
  a = m[:, :2]  # a similarity: rotation times one scale, no shear, no mirror
  np.testing.assert_allclose(a @ a.T, np.eye(2) * np.linalg.det(a), atol=1e-9)
  assert np.linalg.det(a) > 0


def test_similarity_template_is_configurable():
  m = align.similarity_to_template((0, 0), (10, 0), size=100, eye_y=0.5, eye_distance=0.2)
  np.testing.assert_allclose(_apply(m, (0, 0)), (40, 50), atol=1e-9)
  np.testing.assert_allclose(_apply(m, (10, 0)), (60, 50), atol=1e-9)
  with pytest.raises(ValueError, match="coincide"):
    align.similarity_to_template((5, 5), (5, 5))


def test_warp_shape_dtype_and_translation(astronaut):
  m = np.array([[1.0, 0, -100], [0, 1, -50]])  # output pixel (x, y) shows input (x+100, y+50)
  out = align.warp(astronaut, m, 64)
  assert out.dtype == np.uint8 and out.shape == (64, 64)
  np.testing.assert_array_equal(out, astronaut[50:114, 100:164])
  with pytest.raises(ValueError, match="gray uint8"):
    align.warp(astronaut.astype(np.float32), m)


def test_eye_centres_5_and_68_points():
  five = np.array([[50, 10], [40, 12], [10, 10], [20, 12], [30, 30]], float)
  left, right = align.eye_centres(five)
  np.testing.assert_allclose(left, (15, 11))
  np.testing.assert_allclose(right, (45, 11))
  sixty_eight = np.zeros((68, 2))
  sixty_eight[36:42] = (10, 20)
  sixty_eight[42:48] = (50, 22)
  left, right = align.eye_centres(sixty_eight)
  np.testing.assert_allclose(left, (10, 20))
  np.testing.assert_allclose(right, (50, 22))
  with pytest.raises(ValueError):
    align.eye_centres(np.zeros((7, 2)))


def test_warp_shrinks_without_aliasing():
  """A 1-px checkerboard shrunk 4x is flat grey, not a moire (area averaging first)."""
  board = (np.indices((400, 400)).sum(0) % 2 * 255).astype(np.uint8)
  m = np.array([[1 / 4, 0, 0], [0, 1 / 4, 0]])
  out = align.warp(board, m, 100)
  assert abs(out[5:-5, 5:-5].mean() - 127.5) < 1 and out[5:-5, 5:-5].std() < 1
  assert align.scale_of(m) == pytest.approx(1 / 4)
  np.testing.assert_allclose(align.apply(m, [(40, 80), (4, 8)]), [(10, 20), (1, 2)])


def test_implausible_landmarks_are_refused():
  box = (100, 100, 200, 200)
  eyes_level = np.array([[170, 140], [160, 140], [120, 140], [130, 140], [150, 180]], float)
  assert align.landmarks(np.zeros((300, 300), np.uint8), box,
                         lambda g, b: eyes_level) is not None
  for bad in (eyes_level[[2, 3, 0, 1, 4]],                     # eyes swapped (mirror)
              eyes_level + [[0, 60], [0, 60], [0, 0], [0, 0], [0, 0]],  # tilt > 45 deg
              eyes_level + [150, 0]):                         # eyes outside the box
    assert align.landmarks(np.zeros((300, 300), np.uint8), box, lambda g, b: bad) is None
  assert align.landmarks(np.zeros((300, 300), np.uint8), box, lambda g, b: None) is None


# --- dlib on a real face -------------------------------------------------------


@pytest.mark.parametrize("degrees", [12.0, -12.0])
def test_aligned_rotated_face_has_level_eyes_at_the_template(astronaut, detector, landmarker,
                                                             degrees):
  gray, _ = _rotated(astronaut, degrees)
  box = _face_box(detector, gray)
  assert box is not None
  m = align.video_transform(gray, box, landmarker)
  assert m is not None
  assert abs(abs(_angle(m)) - 12) < 6  # it did rotate the face back
  out = align.warp(gray, m)
  assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
  again = _face_box(detector, out)  # landmarks found anew on the aligned face
  assert again is not None
  left, right = align.eye_centres(align.landmarks(out, again, landmarker))
  assert abs(left[1] - right[1]) <= 1.0
  assert np.hypot(*(left - LEFT_EYE)) <= 3.0
  assert np.hypot(*(right - RIGHT_EYE)) <= 3.0


def test_alignment_undoes_a_known_rotation(astronaut, detector, landmarker):
  upright = align.video_transform(astronaut, _face_box(detector, astronaut), landmarker)
  for degrees in (12.0, -12.0):
    gray, rotation = _rotated(astronaut, degrees)
    m = align.video_transform(gray, _face_box(detector, gray), landmarker)
    total = m @ np.vstack([rotation, [0, 0, 1]])
    # The same face, wherever it was turned, comes out the same: angle, scale, place.
    assert abs(_angle(total) - _angle(upright)) < 1.0
    assert abs(np.linalg.det(total[:, :2]) / np.linalg.det(upright[:, :2]) - 1) < 0.03
    for corner in ((180, 80), (270, 170)):
      assert np.hypot(*(_apply(total, corner) - _apply(upright, corner))) < 2.0


def test_no_face_no_transform(astronaut, detector, landmarker):
  background = np.ascontiguousarray(astronaut[300:500, 300:500])  # suit and flag only
  assert _face_box(detector, background) is None
  assert align.video_transform(background, None, landmarker) is None
  assert align.landmarks(background, None, landmarker) is None
  assert align.landmarks(astronaut, (600, 600, 700, 700), landmarker) is None  # outside
  assert align.landmarks(astronaut, (100, 100, 103, 103), landmarker) is None  # degenerate
