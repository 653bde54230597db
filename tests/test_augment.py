"""On-device augmentation of M3 flow images (input_pipeline.augment, is_flow): the vectors
follow the pixels. Each flow batch has a twin batch of position ramps augmented with the
same key, so the crop and flip each image got are read off the ramp, not the code."""
from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np

from mer_jax.run import input_pipeline
from mer_jax.data import flow

B, SIDE, OUT = 16, 48, 32    # images, their side, the model's input size
RAMP = 5                     # ramp codes per source pixel


def _cfg(**kw) -> tuple:
  c = dict(enabled=True, scale_min=1.0, rotate_deg=0.0, flip=False, brightness=0.0,
           contrast=0.0)
  return tuple({**c, **kw}.items())


@functools.cache
def _jitted(cfg: tuple, is_flow: bool):
  aug = ml_collections.ConfigDict(dict(cfg))
  return jax.jit(lambda k, x: input_pipeline.augment(k, x, aug, OUT, is_flow=is_flow))


def _augment(key, images, cfg, is_flow):
  out = np.asarray(_jitted(cfg, is_flow)(key, images), np.float64)
  mean, std = np.array(input_pipeline.IMAGENET_MEAN), np.array(input_pipeline.IMAGENET_STD)
  return (out * std + mean) * 255  # the codes again, unrounded


def _constant_flow(u_codes: int, v_codes: int) -> np.ndarray:
  """B images of one flow, u and v a whole number of codes from ZERO (no rounding)."""
  f = np.zeros((SIDE, SIDE, 2), np.float32)
  f[..., 0], f[..., 1] = u_codes * flow.STEP, v_codes * flow.STEP
  return np.repeat(flow.encode_flow(f)[None], B, axis=0)


def _zoom_and_flip(key, cfg):
  """Per image, the crop's zoom (source side / crop side) along x and y, signed (negative
  when mirrored), measured as the slope of augmented position ramps."""
  ys, xs = np.mgrid[:SIDE, :SIDE]
  ramp = np.stack([RAMP * xs, RAMP * ys, np.zeros_like(xs)], -1).astype(np.uint8)
  out = _augment(key, np.repeat(ramp[None], B, axis=0), cfg, is_flow=False)
  inner = out[:, 2:-2, 2:-2]  # away from the edge, where sampling clamps
  slope_x = np.mean(np.diff(inner[..., 0], axis=2), axis=(1, 2))  # codes per output pixel
  slope_y = np.mean(np.diff(inner[..., 1], axis=1), axis=(1, 2))
  # A whole image resized to OUT has slope RAMP * SIDE / OUT: the zoom is relative to it.
  return RAMP * SIDE / OUT / slope_x, RAMP * SIDE / OUT / slope_y


def test_flip_negates_u_of_a_constant_flow():
  cfg, key = _cfg(flip=True), jax.random.PRNGKey(0)
  sx, sy = _zoom_and_flip(key, cfg)
  np.testing.assert_allclose(np.abs(sx), 1, atol=1e-3)  # no crop: only flips
  np.testing.assert_allclose(sy, 1, atol=1e-3)
  flipped = sx < 0
  assert 0 < flipped.sum() < B
  out = _augment(key, _constant_flow(38, -25), cfg, is_flow=True)
  for image, f in zip(out, flipped):
    np.testing.assert_allclose(image[..., 0], flow.ZERO + (-38 if f else 38), atol=1e-3)
    np.testing.assert_allclose(image[..., 1], flow.ZERO - 25, atol=1e-3)
    np.testing.assert_allclose(image[..., 2], np.hypot(38, 25) * flow.STEP * 25.5, atol=1e-3)


def test_crop_scales_u_and_v_by_its_zoom_per_axis():
  """A crop zoomed by s shows a displacement s times larger (in the whole image's
  units, the ones evaluation keeps); u with the x zoom, v with the y zoom."""
  cfg, key = _cfg(scale_min=0.5, flip=True), jax.random.PRNGKey(3)
  sx, sy = _zoom_and_flip(key, cfg)
  assert np.all(np.abs(sx) >= 1 - 1e-3) and np.abs(sx).max() > 1.2
  assert np.abs(np.abs(sx) - sy).max() > 0.1  # the aspect ratio changes too
  out = _augment(key, _constant_flow(20, -30), cfg, is_flow=True)
  u = (out[..., 0] - flow.ZERO) * flow.STEP  # decoded, px
  v = (out[..., 1] - flow.ZERO) * flow.STEP
  for k in range(B):
    np.testing.assert_allclose(u[k], 20 * flow.STEP * sx[k], atol=flow.STEP / 2)
    np.testing.assert_allclose(v[k], -30 * flow.STEP * sy[k], atol=flow.STEP / 2)
    magnitude = np.minimum(np.hypot(u[k], v[k]), flow.SCALE) * 255 / flow.SCALE
    np.testing.assert_allclose(out[k, ..., 2], magnitude, atol=0.5)


def test_flow_augmentation_is_deterministic_with_a_fixed_key():
  cfg, images = _cfg(scale_min=0.5, flip=True), _constant_flow(20, -30)
  a = _augment(jax.random.PRNGKey(7), images, cfg, is_flow=True)
  np.testing.assert_array_equal(a, _augment(jax.random.PRNGKey(7), images, cfg, is_flow=True))
  assert not np.allclose(a, _augment(jax.random.PRNGKey(8), images, cfg, is_flow=True))


def test_flow_vectors_do_not_change_without_augmentation():
  """The crop's rule is relative to the whole image: a full crop resized to OUT keeps
  the codes, as evaluation's resize does."""
  images = _constant_flow(20, -30)
  out = _augment(jax.random.PRNGKey(0), images, _cfg(), is_flow=True)
  np.testing.assert_allclose(out, np.broadcast_to(images[:, :OUT, :OUT], out.shape), atol=0.6)
