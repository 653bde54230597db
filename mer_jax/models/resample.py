"""Resampling position tables as timm does when a checkpoint meets a model of
another size: ViT's absolute position embedding (`resample_abs_pos_embed`,
through a numpy port of torch's `F.interpolate`) and Swin's relative position
bias tables (`resize_rel_pos_bias_table`, BEiT's geometric grid). timm keeps
both in `timm.layers`; here in numpy, so converting needs no torch.
"""
from __future__ import annotations

import logging

import numpy as np

from mer_jax.models.state_dict import ConversionError

# torch's F.interpolate in numpy, for position-embedding resampling as timm
# does it. torch has two bicubics: antialias=True (timm's rule for timm
# checkpoints) is PIL's Keys a=-0.5 with renormalised edge weights, which
# `jax.image.resize(..., "cubic")` happens to reproduce; antialias=False is
# a=-0.75 with clamped border taps, which no jax function computes, and its
# bilinear without antialias (timm's .npz rule) differs from jax's when
# downsampling. One numpy port covers all of them, with the weights computed
# in float32 step by step as ATen's CPU kernels do (aten/src/ATen/native/
# UpSample.h, cpu/UpSampleKernel.cpp).


def _cubic(x, a):
  """Keys' cubic convolution kernel (ATen cubic_convolution1/2), float32."""
  x = np.float32(abs(x))
  a = np.float32(a)
  if x < 1:
    return ((a + 2) * x - (a + 3)) * x * x + np.float32(1)
  if x < 2:
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.float32(0)


def _triangle(x):
  x = np.float32(abs(x))
  return np.float32(1) - x if x < 1 else np.float32(0)


def _torch_interp_matrix(in_size: int, out_size: int, mode: str,
                         antialias: bool) -> np.ndarray:
  """[out_size, in_size] matrix M with torch's 1-D resampling = M @ x.

  align_corners=False and no scale_factor (timm passes `size`). Taps that
  torch clamps to the border add into the border column.
  """
  m = np.zeros((out_size, in_size), np.float64)
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)  # area_pixel_compute_scale<float>
  if antialias:
    # _compute_indices_min_size_weights_aa: PIL's filters, widened when
    # downsampling, weights normalised over the in-range taps.
    interp_size, filt = {"bilinear": (2, _triangle),
                         "bicubic": (4, lambda x: _cubic(x, -0.5))}[mode]
    support = f32(interp_size * 0.5 * scale) if scale >= 1 else f32(interp_size * 0.5)
    max_interp = int(np.ceil(support)) * 2 + 1
    invscale = f32(1.0 / scale) if scale >= 1 else f32(1.0)
    for i in range(out_size):
      center = f32(float(scale) * (i + 0.5))
      xmin = max(int(float(f32(center - support)) + 0.5), 0)
      xsize = min(int(float(f32(center + support)) + 0.5), in_size) - xmin
      xsize = min(max(xsize, 0), max_interp)
      w = [filt(f32((float(f32(j + xmin) - center) + 0.5) * float(invscale)))
           for j in range(xsize)]
      total = f32(0)
      for v in w:
        total = f32(total + v)
      if total != 0:
        w = [f32(v / total) for v in w]
      m[i, xmin:xmin + xsize] = w
    return m
  for i in range(out_size):
    real = scale * f32(i + 0.5) - f32(0.5)  # area_pixel_compute_source_index
    if mode == "bilinear":
      real = max(real, f32(0))
    idx = min(int(np.floor(real)), in_size - 1)  # guard_index_and_lambda
    t = min(max(real - f32(idx), f32(0)), f32(1))
    if mode == "bilinear":
      m[i, idx] += f32(1) - t
      m[i, min(idx + 1, in_size - 1)] += t
    elif mode == "bicubic":  # get_cubic_upsample_coefficients, A = -0.75
      coeffs = (_cubic(t + 1, -0.75), _cubic(t, -0.75),
                _cubic(1 - t, -0.75), _cubic(f32(2) - t, -0.75))
      for j, c in enumerate(coeffs):
        m[i, min(max(idx + j - 1, 0), in_size - 1)] += c
    else:
      raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
  return m


def torch_interpolate(x_hwc: np.ndarray, size: tuple[int, int], mode: str = "bicubic",
                      antialias: bool = False) -> np.ndarray:
  """`F.interpolate(x, size, mode=mode, align_corners=False, antialias=antialias)`
  for one channels-last image [H, W, C], in numpy, float32 out.

  Equal to torch's CPU result up to float32 rounding (the sums run in float64).
  """
  x = np.asarray(x_hwc, np.float32)
  mh = _torch_interp_matrix(x.shape[0], size[0], mode, antialias)
  mw = _torch_interp_matrix(x.shape[1], size[1], mode, antialias)
  return np.einsum("oh,hwc,pw->opc", mh, x.astype(np.float64), mw).astype(np.float32)


def resample_abs_pos_embed(posemb: np.ndarray, new_grid: int, num_prefix_tokens: int = 1,
                           mode: str = "bicubic", antialias: bool = True) -> np.ndarray:
  """timm's `resample_abs_pos_embed` for a square grid: [1, prefix + g*g, D] ->
  [1, prefix + new_grid**2, D]; the prefix (cls) slots are kept as they are.

  Defaults are what timm 1.0.31's `checkpoint_filter_fn` uses for timm
  checkpoints (bicubic, antialias=True); its `.npz` loader uses bilinear
  without antialias (see `vit.npz_to_timm`).
  """
  posemb = np.asarray(posemb, np.float32)
  n = posemb.shape[1] - num_prefix_tokens
  old_grid = int(round(np.sqrt(n)))
  if old_grid * old_grid != n:
    raise ConversionError(
        f"pos_embed has {posemb.shape[1]} tokens: not {num_prefix_tokens} prefix token(s) "
        "plus a square grid.")
  if old_grid == new_grid:
    return posemb
  logging.info("Resampling pos_embed grid %dx%d -> %dx%d (%s, antialias=%s), as timm does",
               old_grid, old_grid, new_grid, new_grid, mode, antialias)
  grid = posemb[0, num_prefix_tokens:].reshape(old_grid, old_grid, -1)
  grid = torch_interpolate(grid, (new_grid, new_grid), mode, antialias)
  return np.concatenate([posemb[:, :num_prefix_tokens],
                         grid.reshape(1, new_grid * new_grid, -1)], axis=1)


def _geometric_positions(src: int, dst: int) -> list:
  """The source sample positions of timm's `resize_rel_pos_bias_table` (BEiT's
  rule): offsets growing geometrically from the centre so the `src` table
  spans the `dst` one; the ratio is found by bisection in float64, as timm."""
  left, right = 1.01, 1.5
  q = (left + right) / 2.0
  while right - left > 1e-6:
    q = (left + right) / 2.0
    gp = (1.0 - q ** (src // 2)) / (1.0 - q)
    if gp > dst // 2:
      right = q
    else:
      left = q
  dis, cur = [], 1
  for i in range(src // 2):
    dis.append(cur)
    cur += q ** (i + 1)
  return [-d for d in reversed(dis)] + [0] + dis


def _linear_axis(points: np.ndarray, x: np.ndarray):
  """One axis of timm's `RegularGridInterpolator` (torch_interpolations), float32."""
  n = points.shape[0]
  right = np.minimum(np.searchsorted(points, x, side="left"), n - 1)  # torch.bucketize
  left = np.clip(right - 1, 0, n - 1)
  d_left = np.maximum(x - points[left], np.float32(0))
  d_right = np.maximum(points[right] - x, np.float32(0))
  both = (d_left == 0) & (d_right == 0)
  d_left = np.where(both, np.float32(1), d_left)
  d_right = np.where(both, np.float32(1), d_right)
  return (left, right), (d_left, d_right)


def resize_rel_pos_bias_table(table: np.ndarray, window: int,
                              key: str = "relative_position_bias_table") -> np.ndarray:
  """timm 1.0.31's `resize_rel_pos_bias_table` for a flat [(2w-1)**2, heads]
  table, as its swin `checkpoint_filter_fn` calls it (square source window
  inferred from the table size, default linear interpolation on BEiT's
  geometric grid, TIMM_USE_SCIPY_INTERP unset), in numpy float32. `key`
  names the tensor in errors."""
  table = np.asarray(table, np.float32)
  dst = 2 * window - 1
  if table.ndim != 2:
    raise ConversionError(f"checkpoint tensor {key!r} has shape {table.shape}, expected "
                          "[(2*window-1)**2, heads]")
  src = int(round(np.sqrt(table.shape[0])))
  if src * src != table.shape[0]:
    raise ConversionError(
        f"checkpoint tensor {key!r} has shape {table.shape}: {table.shape[0]} positions is "
        "not a square (2*window-1)**2 table, so it cannot be resized to window "
        f"{window}")
  if src == dst:
    return table
  logging.info("Resizing %s from window %d to %d, as timm does", key, (src + 1) // 2, window)
  y = np.asarray(_geometric_positions(src, dst), np.float32)
  x = np.asarray(_geometric_positions(src, dst), np.float32)
  t = dst // 2
  d = np.arange(-t, t + 0.1, 1.0).astype(np.float32)
  dy, dx = np.meshgrid(d, d, indexing="ij")
  (yl, yr), (dyl, dyr) = _linear_axis(y, dy)
  (xl, xr), (dxl, dxr) = _linear_axis(x, dx)
  idx_y, dist_y, idx_x, dist_x = (yl, yr), (dyl, dyr), (xl, xr), (dxl, dxr)
  heads = []
  for h in range(table.shape[1]):
    z = table[:, h].reshape(src, src)
    num = np.zeros((dst, dst), np.float32)
    for a in (0, 1):
      for b in (0, 1):  # itertools.product order, as timm accumulates
        num = num + z[idx_y[a], idx_x[b]] * (dist_y[1 - a] * dist_x[1 - b])
    heads.append((num / ((dyl + dyr) * (dxl + dxr))).reshape(-1, 1))
  return np.concatenate(heads, axis=-1).astype(np.float32)
