"""timm checkpoints -> Flax parameters. The only module that knows timm's names.

Layout: shared helpers (key accounting, kernel layouts, timm's
`adapt_input_conv`), then one section per family (`_vit_from_timm`,
`_swin_from_timm`, `_poolformer_from_timm`), then `from_timm` dispatching on
the family and the weight-file loaders. Training never imports torch.
"""
from __future__ import annotations

import numpy as np

from mer_jax import models


class ConversionError(ValueError):
  """A checkpoint that does not fit the model; the message names the keys."""


class StateDict:
  """A timm state dict that remembers which keys were used.

  `finish()` raises if any key was left unused, so a partial load is never silent.
  """

  def __init__(self, state_dict):
    self._sd = {k: np.asarray(v) for k, v in state_dict.items()}
    self._used = set()

  def __contains__(self, key):
    return key in self._sd

  def keys(self):
    return self._sd.keys()

  def take(self, key: str) -> np.ndarray:
    if key not in self._sd:
      raise ConversionError(f"checkpoint has no key {key!r}")
    self._used.add(key)
    return self._sd[key]

  def skip(self, key: str):
    """Marks a key as deliberately unused (e.g. a buffer the port recomputes)."""
    self._used.add(key)

  def finish(self):
    left = sorted(set(self._sd) - self._used)
    if left:
      raise ConversionError(
          f"{len(left)} checkpoint tensors were not used: {', '.join(left[:20])}"
          + (" ..." if len(left) > 20 else ""))


def conv_kernel(w_oihw: np.ndarray) -> np.ndarray:
  """torch Conv2d weight [O, I, H, W] -> flax [H, W, I, O]."""
  return np.transpose(w_oihw, (2, 3, 1, 0))


def dense_kernel(w_out_in: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> flax [in, out]."""
  return np.transpose(w_out_in)


def adapt_input_conv(in_chans: int, w_oihw: np.ndarray) -> np.ndarray:
  """timm's rule for a stem conv with a different number of input channels.

  1 channel: sum over the RGB channels (a gray image then gives the same
  output as the RGB model on that image repeated to three channels).
  """
  w = np.asarray(w_oihw, np.float32)
  i = w.shape[1]
  if in_chans == i:
    return w
  if in_chans == 1:
    if i > 3:
      assert i % 3 == 0
      w = w.reshape(w.shape[0], i // 3, 3, *w.shape[2:]).sum(axis=2)
    else:
      w = w.sum(axis=1, keepdims=True)
    return w
  if i != 3:
    raise ConversionError("weight format not supported for input-channel adaptation")
  repeat = int(np.ceil(in_chans / 3))
  w = np.tile(w, (1, repeat, 1, 1))[:, :in_chans]
  return w * (3 / float(in_chans))


def take_shaped(sd: StateDict, key: str, shape: tuple) -> np.ndarray:
  """sd.take(key) as float32, checked against the shape the model needs."""
  w = np.asarray(sd.take(key), np.float32)
  if w.shape != tuple(shape):
    raise ConversionError(
        f"checkpoint tensor {key!r} has shape {w.shape}, the model needs {tuple(shape)}: "
        "is this a checkpoint of the same architecture?")
  return w


def classifier_head(sd: StateDict, prefix: str, dim: int, num_classes: int, seed: int) -> dict:
  """The checkpoint's `{prefix}.weight/bias` if it has `num_classes` outputs,
  else a fresh head initialised as timm does (trunc_normal std .02, zero bias):
  an ImageNet head (1000 classes) is replaced for the 7 emotions."""
  import logging

  import jax  # only for the initializer the Flax models themselves use

  from mer_jax.models import layers
  wkey, bkey = f"{prefix}.weight", f"{prefix}.bias"
  if wkey in sd:
    w = np.asarray(sd.take(wkey), np.float32)
    if w.shape == (num_classes, dim):
      return {"kernel": dense_kernel(w), "bias": take_shaped(sd, bkey, (num_classes,))}
    if w.ndim != 2 or w.shape[1] != dim:
      raise ConversionError(
          f"checkpoint tensor {wkey!r} has shape {w.shape}: a head on {w.shape[-1]} "
          f"features, the model's has {dim}")
    if bkey in sd:
      sd.skip(bkey)
    logging.info("Re-initialising the classifier head: checkpoint has %d classes, model %d.",
                 w.shape[0], num_classes)
  kernel = layers.trunc_normal(jax.random.PRNGKey(seed), (dim, num_classes), np.float32)
  return {"kernel": np.asarray(kernel), "bias": np.zeros((num_classes,), np.float32)}


def finish_with_head(sd: StateDict, params: dict, prefix: str, dim: int, num_classes: int,
                     seed: int) -> dict:
  """Adds the classifier head (see `classifier_head`; with num_classes=0 the
  model has none and the checkpoint's is dropped), then checks that every
  checkpoint tensor was used (`sd.finish()`)."""
  if num_classes > 0:
    params["head"] = classifier_head(sd, prefix, dim, num_classes, seed)
  else:
    for key in (f"{prefix}.weight", f"{prefix}.bias"):
      if key in sd:
        sd.skip(key)
  sd.finish()
  return params


# --- families -------------------------------------------------------------
# Each returns a Flax params tree for `models.create_model(name, ...)` and
# calls `sd.finish()`. Heads of another size than `num_classes` are re-initialised.


def _vit_from_timm(name, sd: StateDict, *, img_size, in_chans, num_classes, seed):
  """timm `vit_base_patch32_*` state dict -> params of `vit.create(name, ...)`.

  Does what timm's `checkpoint_filter_fn` + `load_state_dict` do when a timm
  checkpoint is loaded into a model of another size: the position embedding
  is resampled to the model's grid (bicubic, antialias=True, cls slot kept),
  the patch kernel is adapted to `in_chans`, and `pre_logits.*` is dropped.
  """
  from mer_jax.models import vit  # the family module; lazily, as models/__init__ does
  arch = vit.ARCHS[name]
  return _vit_params(sd, arch, img_size=img_size, in_chans=in_chans,
                     num_classes=num_classes, seed=seed)


def _vit_take(sd: StateDict, key: str, shape: tuple) -> np.ndarray:
  return take_shaped(sd, key, shape)


def _vit_dense(sd: StateDict, prefix: str, d_in: int, d_out: int) -> dict:
  return {"kernel": dense_kernel(_vit_take(sd, f"{prefix}.weight", (d_out, d_in))),
          "bias": _vit_take(sd, f"{prefix}.bias", (d_out,))}


def _vit_norm(sd: StateDict, prefix: str, dim: int) -> dict:
  return {"scale": _vit_take(sd, f"{prefix}.weight", (dim,)),
          "bias": _vit_take(sd, f"{prefix}.bias", (dim,))}


def _vit_params(sd: StateDict, arch, *, img_size: int, in_chans: int,
                num_classes: int, seed: int) -> dict:
  """The renaming for any timm VisionTransformer with cls token and token pooling.

  Separate from `_vit_from_timm` so that small architectures (tests) use the
  very same code as ViT-B/32.
  """
  import logging

  d, p = arch.embed_dim, arch.patch_size
  hidden = int(d * arch.mlp_ratio)
  params = {}

  w = np.asarray(sd.take("patch_embed.proj.weight"), np.float32)
  if w.ndim != 4 or w.shape[0] != d or w.shape[2:] != (p, p):
    raise ConversionError(
        f"checkpoint tensor 'patch_embed.proj.weight' has shape {w.shape}, expected "
        f"[{d}, C, {p}, {p}]: not a patch-{p} ViT with width {d}.")
  params["patch_embed"] = {"proj": {
      "kernel": conv_kernel(adapt_input_conv(in_chans, w)),
      "bias": _vit_take(sd, "patch_embed.proj.bias", (d,))}}
  params["cls_token"] = _vit_take(sd, "cls_token", (1, 1, d))
  pos = np.asarray(sd.take("pos_embed"), np.float32)
  if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d:
    raise ConversionError(f"checkpoint tensor 'pos_embed' has shape {pos.shape}, expected [1, N, {d}]")
  params["pos_embed"] = resample_abs_pos_embed(pos, img_size // p)

  for i in range(arch.depth):
    b = f"blocks.{i}"
    block = {
        "norm1": _vit_norm(sd, f"{b}.norm1", d),
        "attn": {"qkv": _vit_dense(sd, f"{b}.attn.qkv", d, 3 * d),
                 "proj": _vit_dense(sd, f"{b}.attn.proj", d, d)},
        "norm2": _vit_norm(sd, f"{b}.norm2", d),
        "mlp": {"fc1": _vit_dense(sd, f"{b}.mlp.fc1", d, hidden),
                "fc2": _vit_dense(sd, f"{b}.mlp.fc2", hidden, d)},
    }
    if arch.init_values is not None:  # LayerScale; absent (identity) in ViT-B/32
      block["ls1"] = {"gamma": _vit_take(sd, f"{b}.ls1.gamma", (d,))}
      block["ls2"] = {"gamma": _vit_take(sd, f"{b}.ls2.gamma", (d,))}
    params[f"blocks_{i}"] = block
  params["norm"] = _vit_norm(sd, "norm", d)

  # timm's checkpoint_filter_fn drops the old representation layer (21k
  # pre-training only); fine-tuning never used it.
  for key in [k for k in sd.keys() if k.startswith("pre_logits.")]:
    logging.warning("Dropping %s (pre-logits layer, unused by timm's ViT)", key)
    sd.skip(key)

  return finish_with_head(sd, params, "head", d, num_classes, seed)


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
  without antialias (see `vit_npz_to_timm`).
  """
  import logging

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


def vit_npz_to_timm(npz, img_size: int | None = None) -> dict[str, np.ndarray]:
  """Google's ViT `.npz` (vit_jax / augreg names) -> a timm state dict.

  The mapping of timm 1.0.31's `_load_weights`: query/key/value kernels
  [D, heads, head_dim] fused into `attn.qkv`, `out` [heads, head_dim, D] into
  `attn.proj`, HWIO -> OIHW patch kernel, LayerNorm_0/2 -> norm1/2,
  MlpBlock_3 -> mlp; `pre_logits` dropped as timm drops it. Input channels
  are adapted later, by `from_timm`. With `img_size`, the position
  embedding is resampled here with timm's `.npz` rule (bilinear, no
  antialias), which differs from its rule for timm checkpoints (bicubic,
  antialias), so that `from_timm(...)` of the result equals what timm loads.
  """
  import logging

  w = {k: np.asarray(v) for k, v in dict(npz).items()}
  prefix = "opt/target/" if "opt/target/embedding/kernel" in w else ""
  if any(k.startswith("params/") for k in w) or "pos_embedding" in w \
      or "Transformer/encoderblock/LayerNorm_0/scale" in w:
    raise ConversionError(
        "This looks like a big_vision ViT checkpoint (params/, pos_embedding or "
        "scanned encoderblock): its position embedding has no cls slot, so it is not "
        "a vit_base_patch32 checkpoint. Use a vit_jax/augreg .npz "
        "(e.g. B_32-i21k-300ep-...-res_224.npz) or timm's model.safetensors.")
  if f"{prefix}embedding/kernel" not in w:
    raise ConversionError(
        "Not a Google ViT .npz: no 'embedding/kernel'. Expected the vit_jax/augreg "
        "names (embedding/kernel, cls, Transformer/encoderblock_0/...).")
  if f"{prefix}conv_root/kernel" in w:
    raise ConversionError("This is a hybrid (ResNet + ViT) checkpoint, not ViT-B/32.")

  def get(key):
    if prefix + key not in w:
      raise ConversionError(f".npz checkpoint has no key {prefix + key!r}")
    return np.asarray(w[prefix + key], np.float32)

  sd = {
      "patch_embed.proj.weight": get("embedding/kernel").transpose(3, 2, 0, 1),
      "patch_embed.proj.bias": get("embedding/bias"),
      "cls_token": get("cls"),
      "pos_embed": get("Transformer/posembed_input/pos_embedding"),
      "norm.weight": get("Transformer/encoder_norm/scale"),
      "norm.bias": get("Transformer/encoder_norm/bias"),
  }
  i = 0
  while f"{prefix}Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
    src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    mha = src + "MultiHeadDotProductAttention_1/"
    sd[dst + "norm1.weight"] = get(src + "LayerNorm_0/scale")
    sd[dst + "norm1.bias"] = get(src + "LayerNorm_0/bias")
    qkv = [get(f"{mha}{n}/kernel") for n in ("query", "key", "value")]
    sd[dst + "attn.qkv.weight"] = np.concatenate([k.reshape(k.shape[0], -1).T for k in qkv])
    sd[dst + "attn.qkv.bias"] = np.concatenate(
        [get(f"{mha}{n}/bias").reshape(-1) for n in ("query", "key", "value")])
    out = get(mha + "out/kernel")
    sd[dst + "attn.proj.weight"] = out.transpose(2, 0, 1).reshape(out.shape[-1], -1)
    sd[dst + "attn.proj.bias"] = get(mha + "out/bias")
    sd[dst + "norm2.weight"] = get(src + "LayerNorm_2/scale")
    sd[dst + "norm2.bias"] = get(src + "LayerNorm_2/bias")
    for r in range(2):
      sd[dst + f"mlp.fc{r + 1}.weight"] = get(src + f"MlpBlock_3/Dense_{r}/kernel").T
      sd[dst + f"mlp.fc{r + 1}.bias"] = get(src + f"MlpBlock_3/Dense_{r}/bias")
    i += 1
  if f"{prefix}head/kernel" in w:
    sd["head.weight"] = get("head/kernel").T
    sd["head.bias"] = get("head/bias")
  if f"{prefix}pre_logits/kernel" in w:
    logging.warning("Dropping pre_logits from the .npz, as timm does (unused by its ViT).")
  if img_size is not None:
    patch = sd["patch_embed.proj.weight"].shape[-1]
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], img_size // patch,
                                             mode="bilinear", antialias=False)
  return sd


def _swin_geometric_positions(src: int, dst: int) -> list:
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


def _swin_linear_axis(points: np.ndarray, x: np.ndarray):
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


def _swin_resize_rel_pos_bias_table(table: np.ndarray, window: int, key: str) -> np.ndarray:
  """timm 1.0.31's `resize_rel_pos_bias_table` for a flat [(2w-1)**2, heads]
  table, as its swin `checkpoint_filter_fn` calls it (square source window
  inferred from the table size, default linear interpolation on BEiT's
  geometric grid, TIMM_USE_SCIPY_INTERP unset), in numpy float32."""
  import logging

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
  y = np.asarray(_swin_geometric_positions(src, dst), np.float32)
  x = np.asarray(_swin_geometric_positions(src, dst), np.float32)
  t = dst // 2
  d = np.arange(-t, t + 0.1, 1.0).astype(np.float32)
  dy, dx = np.meshgrid(d, d, indexing="ij")
  (yl, yr), (dyl, dyr) = _swin_linear_axis(y, dy)
  (xl, xr), (dxl, dxr) = _swin_linear_axis(x, dx)
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


def _swin_original_to_timm(sd: StateDict) -> StateDict:
  """timm's swin `checkpoint_filter_fn` renaming: buffers (relative_position_index,
  attn_mask) dropped; original Microsoft checkpoints, which downsample at the
  end of a stage, get `layers.N.downsample` -> `layers.N+1.downsample` and
  `head.` -> `head.fc.`."""
  import re

  old = "layers.0.downsample.reduction.weight" in sd
  out = {}
  for k in list(sd.keys()):
    if "relative_position_index" in k or "attn_mask" in k:
      sd.skip(k)
      continue
    v = sd.take(k)
    if old:
      k = re.sub(r"layers.(\d+).downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
      k = k.replace("head.", "head.fc.")
    out[k] = v
  return StateDict(out)


def _swin_dense(sd: StateDict, prefix: str, d_in: int, d_out: int, bias: bool = True) -> dict:
  p = {"kernel": dense_kernel(take_shaped(sd, f"{prefix}.weight", (d_out, d_in)))}
  if bias:
    p["bias"] = take_shaped(sd, f"{prefix}.bias", (d_out,))
  return p


def _swin_norm(sd: StateDict, prefix: str, dim: int) -> dict:
  return {"scale": take_shaped(sd, f"{prefix}.weight", (dim,)),
          "bias": take_shaped(sd, f"{prefix}.bias", (dim,))}


def _swin_params(sd: StateDict, arch, *, img_size: int, in_chans: int, num_classes: int,
                 seed: int, window_size: int | None = None) -> dict:
  """The renaming for any timm SwinTransformer (v1, avg pool), for the layout
  `swin.stage_layouts` gives at `img_size`. Bias tables of another window
  are resized as timm's `checkpoint_filter_fn` does."""
  from mer_jax.models import swin

  if window_size is None:
    window_size = swin.default_window_size(img_size)
  sd = _swin_original_to_timm(sd)
  d0, p = arch.embed_dim, arch.patch_size
  w = np.asarray(sd.take("patch_embed.proj.weight"), np.float32)
  if w.ndim != 4 or w.shape[0] != d0 or w.shape[2:] != (p, p):
    raise ConversionError(
        f"checkpoint tensor 'patch_embed.proj.weight' has shape {w.shape}, expected "
        f"[{d0}, C, {p}, {p}]: not a patch-{p} Swin with width {d0}.")
  params = {"patch_embed": {
      "proj": {"kernel": conv_kernel(adapt_input_conv(in_chans, w)),
               "bias": take_shaped(sd, "patch_embed.proj.bias", (d0,))},
      "norm": _swin_norm(sd, "patch_embed.norm", d0)}}
  layouts = swin.stage_layouts(img_size, p, len(arch.depths), window_size)
  for i, (depth, heads, layout) in enumerate(zip(arch.depths, arch.num_heads, layouts)):
    d = d0 * 2 ** i
    hidden = int(d * arch.mlp_ratio)
    stage = {}
    if i > 0:
      stage["downsample"] = {
          "norm": _swin_norm(sd, f"layers.{i}.downsample.norm", 2 * d),
          "reduction": _swin_dense(sd, f"layers.{i}.downsample.reduction", 2 * d, d,
                                   bias=False)}
    for j in range(depth):
      b = f"layers.{i}.blocks.{j}"
      key = f"{b}.attn.relative_position_bias_table"
      table = np.asarray(sd.take(key), np.float32)
      if table.ndim != 2 or table.shape[1] != heads:
        raise ConversionError(f"checkpoint tensor {key!r} has shape {table.shape}, the "
                              f"model needs [{(2 * layout.window - 1) ** 2}, {heads}]")
      stage[f"blocks_{j}"] = {
          "norm1": _swin_norm(sd, f"{b}.norm1", d),
          "attn": {"qkv": _swin_dense(sd, f"{b}.attn.qkv", d, 3 * d),
                   "proj": _swin_dense(sd, f"{b}.attn.proj", d, d),
                   "relative_position_bias_table":
                       _swin_resize_rel_pos_bias_table(table, layout.window, key)},
          "norm2": _swin_norm(sd, f"{b}.norm2", d),
          "mlp": {"fc1": _swin_dense(sd, f"{b}.mlp.fc1", d, hidden),
                  "fc2": _swin_dense(sd, f"{b}.mlp.fc2", hidden, d)},
      }
    params[f"layers_{i}"] = stage
  d_last = d0 * 2 ** (len(arch.depths) - 1)
  params["norm"] = _swin_norm(sd, "norm", d_last)
  return finish_with_head(sd, params, "head.fc", d_last, num_classes, seed)


def _swin_from_timm(name, sd: StateDict, *, img_size, in_chans, num_classes, seed):
  """timm `swin_base_patch4_window7_224` / `_window12_384` state dict -> params
  of `swin.create(name, ...)`.

  Does what timm's swin `checkpoint_filter_fn` + `load_state_dict` do: the
  recomputed buffers (relative_position_index, attn_mask) are skipped,
  original Microsoft names are renamed, bias tables of another window (a 224
  checkpoint in a 384 model) are resized, and the patch kernel is adapted to
  `in_chans`.
  """
  from mer_jax.models import swin
  return _swin_params(sd, swin.ARCHS[name], img_size=img_size, in_chans=in_chans,
                      num_classes=num_classes, seed=seed)


def poolformer_original_to_timm(state_dict) -> dict:
  """The original sail-sg PoolFormer checkpoint names (`network.0.0.mlp.fc1`,
  `patch_embed`, `layer_scale_1`, `norm`, `head`) -> timm's MetaFormer names,
  by the renaming of timm 1.0.31's `metaformer.checkpoint_filter_fn`. A timm
  state dict (has `stem.conv.weight`) is returned as is."""
  import re

  if "stem.conv.weight" in state_dict:
    return dict(state_dict)
  out = {}
  v1 = "network.0.0.mlp.fc1.weight" in state_dict
  for k, v in state_dict.items():
    if v1:
      k = re.sub(r"layer_scale_([0-9]+)", r"layer_scale\1.scale", k)
      for a, b in (("network.1", "downsample_layers.1"), ("network.3", "downsample_layers.2"),
                   ("network.5", "downsample_layers.3"), ("network.2", "network.1"),
                   ("network.4", "network.2"), ("network.6", "network.3"),
                   ("network", "stages")):
        k = k.replace(a, b)
    k = re.sub(r"downsample_layers.([0-9]+)", r"stages.\1.downsample", k)
    k = k.replace("downsample.proj", "downsample.conv").replace("patch_embed.proj", "patch_embed.conv")
    k = re.sub(r"([0-9]+).([0-9]+)", r"\1.blocks.\2", k)
    k = k.replace("stages.0.downsample", "patch_embed").replace("patch_embed", "stem")
    k = k.replace("post_norm", "norm").replace("pre_norm", "norm")
    k = re.sub(r"^head", "head.fc", k)
    k = re.sub(r"^norm", "head.norm", k)
    out[k] = np.asarray(v)
  return out


def _poolformer_conv(sd: StateDict, prefix: str, c_in: int, c_out: int, k: int) -> dict:
  return {"kernel": conv_kernel(take_shaped(sd, f"{prefix}.weight", (c_out, c_in, k, k))),
          "bias": take_shaped(sd, f"{prefix}.bias", (c_out,))}


def _poolformer_pointwise(sd: StateDict, prefix: str, c_in: int, c_out: int) -> dict:
  """A 1x1 conv [O, I, 1, 1] (or a Linear [O, I]) -> Dense on the channel axis."""
  w = np.asarray(sd.take(f"{prefix}.weight"), np.float32)
  if w.shape not in ((c_out, c_in, 1, 1), (c_out, c_in)):
    raise ConversionError(f"checkpoint tensor '{prefix}.weight' has shape {w.shape}, "
                          f"the model needs ({c_out}, {c_in}, 1, 1)")
  return {"kernel": dense_kernel(w.reshape(c_out, c_in)),
          "bias": take_shaped(sd, f"{prefix}.bias", (c_out,))}


def _poolformer_from_timm(name, sd: StateDict, *, img_size, in_chans, num_classes, seed):
  """timm `poolformer_*` (MetaFormer) state dict -> params of `poolformer.create`.

  Original sail-sg names are accepted too (see `poolformer_original_to_timm`).
  The stem kernel is adapted to `in_chans`; `img_size` plays no role.
  """
  del img_size
  from mer_jax.models import poolformer
  arch = poolformer.ARCHS[name]
  sd = StateDict(poolformer_original_to_timm({k: sd.take(k) for k in list(sd.keys())}))
  dims = arch.dims
  w = np.asarray(sd.take("stem.conv.weight"), np.float32)
  if w.ndim != 4 or w.shape[0] != dims[0] or w.shape[2:] != (7, 7):
    raise ConversionError(f"checkpoint tensor 'stem.conv.weight' has shape {w.shape}, "
                          f"expected [{dims[0]}, C, 7, 7]: not a {name} checkpoint")
  params = {"stem": {"kernel": conv_kernel(adapt_input_conv(in_chans, w)),
                     "bias": take_shaped(sd, "stem.conv.bias", (dims[0],))}}
  for i, (depth, d) in enumerate(zip(arch.depths, dims)):
    if i > 0:
      params[f"stages_{i}_downsample"] = _poolformer_conv(
          sd, f"stages.{i}.downsample.conv", dims[i - 1], d, 3)
    hidden = int(d * arch.mlp_ratio)
    for j in range(depth):
      b = f"stages.{i}.blocks.{j}"
      params[f"stages_{i}_blocks_{j}"] = {
          "norm1": {"scale": take_shaped(sd, f"{b}.norm1.weight", (d,)),
                    "bias": take_shaped(sd, f"{b}.norm1.bias", (d,))},
          "layer_scale1": {"scale": take_shaped(sd, f"{b}.layer_scale1.scale", (d,))},
          "norm2": {"scale": take_shaped(sd, f"{b}.norm2.weight", (d,)),
                    "bias": take_shaped(sd, f"{b}.norm2.bias", (d,))},
          "mlp": {"fc1": _poolformer_pointwise(sd, f"{b}.mlp.fc1", d, hidden),
                  "fc2": _poolformer_pointwise(sd, f"{b}.mlp.fc2", hidden, d)},
          "layer_scale2": {"scale": take_shaped(sd, f"{b}.layer_scale2.scale", (d,))},
      }
  params["head_norm"] = {"scale": take_shaped(sd, "head.norm.weight", (dims[-1],)),
                         "bias": take_shaped(sd, "head.norm.bias", (dims[-1],))}
  return finish_with_head(sd, params, "head.fc", dims[-1], num_classes, seed)


_CONVERTERS = {"vit": _vit_from_timm, "swin": _swin_from_timm,
               "poolformer": _poolformer_from_timm}


def from_timm(name: str, state_dict, img_size: int = 224, in_chans: int = 3,
              num_classes: int = 7, seed: int = 0) -> dict:
  """Flax variables ({'params': ...}) for `create_model(name, ...)` from timm weights.

  state_dict: {timm key: array}. Every tensor is used or the call fails,
  except a classifier head of another size, which is re-initialised.
  """
  sd = StateDict(state_dict)
  params = _CONVERTERS[models.family(name)](
      name, sd, img_size=img_size, in_chans=in_chans,
      num_classes=num_classes, seed=seed)
  return {"params": params}


# --- weight files ---------------------------------------------------------
# A weight source is a local file (model.safetensors, a timm or Google .npz,
# a PyTorch .pth/.bin read with weights_only=True), a folder holding one, or a
# hub id ("timm/poolformer_m36.sail_in1k", optionally "hf-hub:"-prefixed).

_HUB = "https://huggingface.co"


class WeightsNotFound(FileNotFoundError):
  """A weight source that is neither a readable file nor a reachable hub id."""


def _hub_id(source: str) -> str | None:
  s = source[len("hf-hub:"):] if source.startswith("hf-hub:") else source
  parts = s.split("/")
  if len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) \
      and not any(s.endswith(e) for e in (".safetensors", ".npz", ".pth", ".pt", ".bin")):
    return s
  return None


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
  import os
  import socket

  if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or \
      os.environ.get("MER_JAX_OFFLINE", "0") not in ("", "0"):
    return False
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _download_hint(hub_id: str) -> str:
  return (f"download {_HUB}/{hub_id}/resolve/main/model.safetensors on a machine with "
          "internet access, copy it here and pass its path instead of the hub id "
          "(--config.init.weights=/path/to/model.safetensors, or "
          "`python -m mer_jax.convert --weights /path/to/model.safetensors ...`).")


def _from_hub(hub_id: str, cache_dir: str | None) -> str:
  if not _online():
    raise WeightsNotFound(
        f"Cannot fetch {hub_id!r}: this machine is offline (no connection to huggingface.co). "
        + _download_hint(hub_id))
  import huggingface_hub

  try:
    return huggingface_hub.hf_hub_download(hub_id, "model.safetensors", cache_dir=cache_dir)
  except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
    raise WeightsNotFound(f"Could not download {hub_id!r} from the hub ({e}). "
                          + _download_hint(hub_id)) from e


def _torch_file(path) -> dict:
  try:
    import torch
  except ImportError as e:
    raise ConversionError(
        f"{path} is a PyTorch pickle, which needs torch to read; convert it to "
        "model.safetensors on a machine with torch, or install torch.") from e
  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
      break
  return {k.removeprefix("module."): v.detach().cpu().float().numpy()
          for k, v in obj.items() if hasattr(v, "detach")}


def resolve_weights(source: str, cache_dir: str | None = None) -> str:
  """The local file a weight source stands for (downloading a hub id when online).

  Raises WeightsNotFound saying where it looked and what to do.
  """
  import os
  import pathlib

  p = pathlib.Path(os.path.expanduser(str(source)))
  if p.is_dir():
    for name in ("model.safetensors", "pytorch_model.bin", "model.npz"):
      if (p / name).is_file():
        return str(p / name)
    raise WeightsNotFound(f"No model.safetensors, pytorch_model.bin or model.npz in {p.resolve()}")
  if p.is_file():
    return str(p)
  hub = _hub_id(str(source))
  if hub is not None:
    return _from_hub(hub, cache_dir)
  raise WeightsNotFound(
      f"Weights file not found: {source!r} (looked for {p.resolve()}; working directory "
      f"{os.getcwd()}). Pass a model.safetensors / .npz / .pth file, a folder holding one, "
      "or a timm hub id such as timm/poolformer_m36.sail_in1k.")


def load_state_dict(source: str, img_size: int | None = None,
                    cache_dir: str | None = None) -> dict[str, np.ndarray]:
  """{timm key: float32 array} from a weight source (see `resolve_weights`).

  Google ViT `.npz` files are renamed to timm's keys (their position
  embedding resampled to `img_size` by timm's .npz rule). safetensors and npz
  are read with numpy; only `.pth/.pt/.bin` files import torch.
  """
  path = resolve_weights(source, cache_dir)
  suffix = path.rsplit(".", 1)[-1].lower()
  if suffix == "safetensors":
    import safetensors.numpy
    try:
      sd = safetensors.numpy.load_file(path)
    except Exception as e:  # noqa: BLE001
      raise ConversionError(f"{path} is not a readable safetensors file: {e}") from e
  elif suffix == "npz":
    with np.load(path) as z:
      sd = {k: z[k] for k in z.files}
    if "embedding/kernel" in sd or "opt/target/embedding/kernel" in sd:
      sd = vit_npz_to_timm(sd, img_size=img_size)
  elif suffix in ("pth", "pt", "bin", "ckpt"):
    sd = _torch_file(path)
  else:
    raise ConversionError(f"Unknown weight file type {path!r}: expected .safetensors, "
                          ".npz, or a PyTorch .pth/.pt/.bin")
  return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
          else np.asarray(v) for k, v in sd.items()}


def default_cache_dir() -> str:
  import os
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                      "mer_jax", "converted")


def _source_fingerprint(source: str) -> str:
  """Identifies a weight source's content cheaply: path, size and mtime of a
  local file; the id itself for a hub id."""
  import hashlib
  import os

  p = os.path.expanduser(str(source))
  if os.path.exists(p):
    st = os.stat(p)
    key = f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}"
  else:
    key = str(source)
  return hashlib.sha1(key.encode()).hexdigest()[:12]


def load_pretrained(name: str, source: str, img_size: int = 224, in_chans: int = 3,
                    num_classes: int = 7, seed: int = 0, cache_dir: str | None = None) -> dict:
  """Flax variables for `create_model(name, ...)` from a weight source,
  converted once and cached (flax msgpack) under `cache_dir`."""
  import logging
  import os

  import flax.serialization

  cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
  tag = f"{name}_{img_size}_c{in_chans}_n{num_classes}_s{seed}_{_source_fingerprint(source)}"
  cached = os.path.join(cache_dir, tag + ".msgpack")
  if os.path.exists(cached):
    with open(cached, "rb") as f:
      logging.info("Converted weights from cache %s", cached)
      return flax.serialization.msgpack_restore(f.read())
  sd = load_state_dict(source, img_size=img_size, cache_dir=os.path.join(cache_dir, "hub"))
  variables = from_timm(name, sd, img_size=img_size, in_chans=in_chans,
                        num_classes=num_classes, seed=seed)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = cached + f".tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(variables))
  os.replace(tmp, cached)  # a killed conversion never leaves a truncated cache entry
  logging.info("Converted %s for %s and cached it at %s", source, name, cached)
  return variables
