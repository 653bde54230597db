"""M3 flow images: known motions of a real face, the fixed scale, encode/decode."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from mer_jax.data import flow

# A 224 crop of skimage's 512x512 astronaut around her face (about x 140..310, y 30..215).
X0, Y0 = 113, 10
FACE = np.zeros((224, 224), bool)
FACE[35:190, 42:182] = True  # the face, 15 px inside its outline


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
  return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)


def _moved(gray, onset_matrix, frame_matrix, x0=X0, y0=Y0, noise=1.0, seed=0):
  """Onset and frame crops of `gray` after two affine moves, and the true flow between them.

  Each image is moved half way (in opposite directions), so both are resampled alike and
  neither is sharper than the other.
  """
  rng = np.random.default_rng(seed)

  def grab(m):
    out = cv2.warpAffine(gray, m, gray.shape[::-1], flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT)[y0:y0 + 224, x0:x0 + 224]
    return np.clip(out + rng.normal(0, noise, out.shape), 0, 255).round().astype(np.uint8)

  t = np.vstack([frame_matrix, [0, 0, 1]]) @ np.linalg.inv(np.vstack([onset_matrix, [0, 0, 1]]))
  ys, xs = np.mgrid[y0:y0 + 224, x0:x0 + 224].astype(np.float64)
  u = t[0, 0] * xs + t[0, 1] * ys + t[0, 2] - xs
  v = t[1, 0] * xs + t[1, 1] * ys + t[1, 2] - ys
  return grab(onset_matrix), grab(frame_matrix), u, v


def _shift(dx, dy):
  return np.array([[1.0, 0, dx], [0, 1, dy]])


def _translation(gray, dx, dy, **kw):
  return _moved(gray, _shift(-dx / 2, -dy / 2), _shift(dx / 2, dy / 2), **kw)


def _rotation(gray, degrees, centre=(225.0, 122.0)):
  return _moved(gray, cv2.getRotationMatrix2D(centre, -degrees / 2, 1.0),
                cv2.getRotationMatrix2D(centre, degrees / 2, 1.0))


def _assert_recovers(onset, frame, u, v):
  image = flow.flow_image(onset, frame)
  assert image.dtype == np.uint8 and image.shape == (224, 224, 3)
  du, dv = flow.decode_flow(image)
  assert du.dtype == np.float32 and dv.dtype == np.float32
  err = np.hypot(du - u, dv - v)[FACE]
  assert np.percentile(err, 95) < 0.5, np.percentile(err, 95)
  assert np.mean(err) < 0.2, np.mean(err)
  assert abs(np.mean((du - u)[FACE])) < 0.1 and abs(np.mean((dv - v)[FACE])) < 0.1  # no bias


# --- known motions of a real face ------------------------------------------------


@pytest.mark.parametrize("dx,dy", [(2.5, 1.5), (-3.4, 4.6), (0.6, -0.3)])
def test_translation_of_a_face_decodes_to_that_translation(astronaut, dx, dy):
  _assert_recovers(*_translation(astronaut, dx, dy))


@pytest.mark.parametrize("degrees", [2.0, -3.0])
def test_rotation_of_a_face_decodes_to_that_rotation(astronaut, degrees):
  onset, frame, u, v = _rotation(astronaut, degrees)
  assert np.abs(np.hypot(u, v)[FACE]).max() > 3  # a real test: the motion is pixels, not 0
  _assert_recovers(onset, frame, u, v)


def test_tvl1_option_recovers_a_translation(astronaut):
  onset, frame, u, v = _translation(astronaut, 2.5, 1.5)
  du, dv = flow.decode_flow(flow.flow_image(onset, frame, algorithm="tvl1"))
  assert np.percentile(np.hypot(du - u, dv - v)[FACE], 95) < 0.5


def test_still_face_is_no_motion(astronaut):
  face = np.ascontiguousarray(astronaut[Y0:Y0 + 224, X0:X0 + 224])
  image = flow.flow_image(face, face)
  np.testing.assert_array_equal(image[..., :2], flow.ZERO)
  np.testing.assert_array_equal(image[..., 2], 0)


# --- the fixed scale ----------------------------------------------------------------


def test_same_motion_same_pixels_in_different_images(astronaut):
  """No per-image normalisation: another face, darker and lower in contrast, moving the same
  way gives the same codes."""
  camera = cv2.resize(skimage.data.camera(), (512, 512))  # another scene, another person
  other = (0.6 * camera + 30).astype(np.uint8)
  a = flow.flow_image(*_translation(astronaut, 2.5, 1.5)[:2])
  b = flow.flow_image(*_translation(other, 2.5, 1.5, x0=140, y0=40)[:2])
  expected = (flow.ZERO + round(2.5 * 127 / flow.SCALE), flow.ZERO + round(1.5 * 127 / flow.SCALE))
  for image in (a, b):
    centre = image[60:170, 60:170]
    assert np.median(centre[..., 0]) == pytest.approx(expected[0], abs=1)
    assert np.median(centre[..., 1]) == pytest.approx(expected[1], abs=1)
  assert abs(int(np.median(a[60:170, 60:170, 2])) - int(np.median(b[60:170, 60:170, 2]))) <= 1


def test_codes_grow_with_the_motion(astronaut):
  """Twice the motion, twice the distance from ZERO: per-image scaling would give both 255."""
  small = flow.flow_image(*_translation(astronaut, 1.5, 0)[:2])[FACE]
  large = flow.flow_image(*_translation(astronaut, 3.0, 0)[:2])[FACE]
  assert np.median(large[:, 0].astype(int) - flow.ZERO) == pytest.approx(
      2 * np.median(small[:, 0].astype(int) - flow.ZERO), abs=2)
  assert np.median(large[:, 0]) < 200


# --- encode / decode ---------------------------------------------------------------


def test_encode_decode_round_trip_within_the_step():
  rng = np.random.default_rng(0)
  f = rng.uniform(-flow.SCALE, flow.SCALE, (64, 64, 2)).astype(np.float32)
  u, v = flow.decode_flow(flow.encode_flow(f))
  assert np.abs(u - f[..., 0]).max() <= flow.STEP / 2 + 1e-5
  assert np.abs(v - f[..., 1]).max() <= flow.STEP / 2 + 1e-5


def test_encoding_by_hand():
  f = np.array([[[0.0, 0.0], [flow.SCALE, -flow.SCALE], [25.0, -40.0], [3.0, 4.0]]], np.float32)
  image = flow.encode_flow(f)
  assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
  np.testing.assert_array_equal(image[0, 0], (128, 128, 0))
  np.testing.assert_array_equal(image[0, 1], (255, 1, 255))
  np.testing.assert_array_equal(image[0, 2], (255, 1, 255))  # beyond the scale: clipped
  np.testing.assert_array_equal(image[0, 3], (128 + round(3 * 12.7), 128 + round(4 * 12.7),
                                              round(5 * 25.5)))
  u, v = flow.decode_flow(image)
  np.testing.assert_allclose(u[0, :3], (0, flow.SCALE, flow.SCALE), atol=1e-5)
  np.testing.assert_allclose(v[0, :3], (0, -flow.SCALE, -flow.SCALE), atol=1e-5)


def test_flow_images_match_flow_image(astronaut):
  onset, frame, _, _ = _translation(astronaut, 2.5, 1.5)
  _, other, _, _ = _rotation(astronaut, 2.0)
  many = flow.flow_images(onset, [frame, other, onset])
  assert len(many) == 3
  np.testing.assert_array_equal(many[0], flow.flow_image(onset, frame))
  np.testing.assert_array_equal(many[1], flow.flow_image(onset, other))
  np.testing.assert_array_equal(many[2][..., :2], flow.ZERO)


def test_bad_inputs_are_refused(astronaut):
  face = np.ascontiguousarray(astronaut[:224, :224])
  with pytest.raises(ValueError, match="differ in shape"):
    flow.flow_image(face, astronaut[:200, :224])
  with pytest.raises(ValueError, match="gray uint8"):
    flow.flow_image(face, np.dstack([face] * 3))
  with pytest.raises(ValueError, match="gray uint8"):
    flow.flow_image(face.astype(np.float32), face)
  with pytest.raises(ValueError, match="unknown algorithm"):
    flow.flow_image(face, face, algorithm="farneback")
  with pytest.raises(ValueError, match="flow image"):
    flow.decode_flow(np.zeros((4, 4, 2), np.uint8))


# --- the mirrored pair ---------------------------------------------------------------


def test_hflip_decodes_to_the_mirrored_flow_with_u_negated():
  rng = np.random.default_rng(1)
  f = rng.uniform(-1.2 * flow.SCALE, 1.2 * flow.SCALE, (20, 30, 2)).astype(np.float32)
  image = flow.encode_flow(f)
  flipped = flow.hflip(image)
  assert flipped.dtype == np.uint8 and flipped.shape == image.shape
  u, v = flow.decode_flow(flipped)
  want = np.clip(f[:, ::-1], -flow.SCALE, flow.SCALE)  # mirrored, by hand
  assert np.abs(u + want[..., 0]).max() <= flow.STEP / 2 + 1e-5
  assert np.abs(v - want[..., 1]).max() <= flow.STEP / 2 + 1e-5
  u0, v0 = flow.decode_flow(image)  # and exactly the image's own decoded flow, mirrored
  np.testing.assert_array_equal(u, -u0[:, ::-1])
  np.testing.assert_array_equal(v, v0[:, ::-1])
  np.testing.assert_array_equal(flipped[..., 2], image[:, ::-1, 2])
  np.testing.assert_array_equal(flow.hflip(flipped), image)
  # A batch [..., H, W, 3], and jax arrays (the on-device namespace), alike.
  batch = np.stack([image, flow.encode_flow(-f)])
  np.testing.assert_array_equal(flow.hflip(batch), np.stack([flipped, flow.hflip(batch[1])]))
  import jax.numpy as jnp
  np.testing.assert_array_equal(np.asarray(flow.hflip(jnp.asarray(batch))), flow.hflip(batch))


def _smooth_pair(n: int = 112, pad: int = 20, seed: int = 0):
  """A blurred random texture and the same texture moved by a smooth field (u about 2 px
  right, v about 1 px up, each varying by up to 1 px across the image), and that field."""
  rng = np.random.default_rng(seed)
  tex = cv2.GaussianBlur(rng.uniform(0, 255, (n + 2 * pad,) * 2).astype(np.float32), (0, 0), 2.5)
  tex = (tex - tex.mean()) / tex.std() * 40 + 128
  ys, xs = np.mgrid[:n + 2 * pad, :n + 2 * pad].astype(np.float32)
  u = 2.0 + np.sin(2 * np.pi * ys / 96)
  v = -1.0 + 0.8 * np.cos(2 * np.pi * xs / 96)
  # Content at p moves to p + d(p): frame(q) = onset(q - d(q)) to first order.
  frame = cv2.remap(tex, xs - u, ys - v, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
  inner = (slice(pad, -pad), slice(pad, -pad))
  grab = lambda a: np.clip(a[inner], 0, 255).round().astype(np.uint8)  # noqa: E731
  return grab(tex), grab(frame), u[inner], v[inner]


def test_hflip_is_the_flow_of_the_mirrored_pair():
  """DIS on the mirrored pair against hflip of DIS on the pair, on the interior (12 px from
  the edges, where DIS extrapolates). Tolerance: two estimates quantised to STEP agree
  within a step per component at best, and each is within DIS's own error of the truth
  (asserted below, 95th percentile < 0.25 px); so mean < STEP / 2 and 95th percentile <
  0.25 px. Without the u negation the two differ by 2|u|, about 4 px."""
  onset, frame, u, v = _smooth_pair()
  inner = (slice(12, -12), slice(12, -12))
  direct = flow.flow_image(onset, frame)
  du, dv = flow.decode_flow(direct)
  assert np.percentile(np.hypot(du - u, dv - v)[inner], 95) < 0.25  # DIS follows this motion
  mirrored = flow.flow_image(np.ascontiguousarray(onset[:, ::-1]),
                             np.ascontiguousarray(frame[:, ::-1]))
  mu, mv = flow.decode_flow(mirrored)
  hu, hv = flow.decode_flow(flow.hflip(direct))
  err = np.hypot(hu - mu, hv - mv)[inner]
  assert err.mean() < flow.STEP / 2, err.mean()
  assert np.percentile(err, 95) < 0.25, np.percentile(err, 95)
  assert np.median(mu[inner]) < -1.5  # the mirrored pair moves left
