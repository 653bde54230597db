"""Swin-B (Liu et al., 2021) in Flax linen, an exact port of timm.

Mirrors timm 1.0.31 `swin_base_patch4_window7_224` / `swin_base_patch4_window12_384`
(`timm.models.swin_transformer.SwinTransformer`) so that timm's ImageNet
weights, converted by `convert_timm` below, give the same logits:

  patch_embed (4x4 conv, stride 4, then LayerNorm; NHWC) -> 4 stages, each
  `layers_i`: [PatchMerging for i > 0: 2x2 neighbours concatenated, LayerNorm,
  Linear 4C -> 2C without bias] -> pre-norm Swin blocks (window attention with
  a relative position bias; every odd block's windows are cyclically shifted
  by window // 2, with timm's -100 attention mask) -> final norm -> global
  average pool -> head dropout -> head.

Everything timm does for a feature map that does not fit the window is
reproduced: a map no larger than the window gets window = map size and no
shift (`_calc_window_shift`); a map larger than the window but not a multiple
of it is zero-padded at the bottom/right before windowing (the padded tokens
are attended to, as in timm); odd maps are zero-padded before PatchMerging.

Module and parameter names follow timm's (`layers_2/blocks_5/attn/qkv`,
`layers_1/downsample/reduction`), so the converter (`convert_timm`, timm's
swin `checkpoint_filter_fn`) is a renaming; timm's `head.fc` is `head`, as in
the other families. The relative position index and the attention masks are
numpy constants computed here (timm's buffers are not loaded). Parameters are
float32; `dtype` sets the compute dtype (e.g. bfloat16) while layer norms and
the attention softmax stay float32.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.plumbing.errors import UsageError
from mer_jax.models import state_dict as sdict
from mer_jax.models.layers import (DropPath, Dtype, Mlp, PatchEmbed, check_nhwc, classifier,
                                   drop_path_rates, layer_norm, materialize, remat_block,
                                   trunc_normal)
from mer_jax.models.resample import resize_rel_pos_bias_table
from mer_jax.models.state_dict import ConversionError, StateDict


@dataclasses.dataclass(frozen=True)
class SwinArch:
  """The architecture hyper-parameters timm fixes per model name."""
  embed_dim: int
  depths: tuple[int, ...]
  num_heads: tuple[int, ...]
  patch_size: int = 4
  mlp_ratio: float = 4.0


ARCHS = {
    # timm `swin_base_patch4_window7_224` / `swin_base_patch4_window12_384`:
    # model_args dict(patch_size=4, window_size=7|12, embed_dim=128,
    # depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)).
    "swin_b": SwinArch(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

# timm's pretrained Swin-B configurations: window 7 at 224, window 12 at 384.
# Any other size keeps window 7, as timm's `swin_base_patch4_window7_224` does
# when created with another img_size.
_WINDOW_FOR_SIZE = {224: 7, 384: 12}


def default_window_size(img_size: int) -> int:
  """The window timm's Swin-B uses at `img_size` (7 at 224, 12 at 384, else 7)."""
  return _WINDOW_FOR_SIZE.get(img_size, 7)


@dataclasses.dataclass(frozen=True)
class StageLayout:
  resolution: int  # feature map side of the stage's blocks (after PatchMerging)
  window: int      # effective window side (the map side when the map is smaller)
  shift: int       # shift of the odd blocks (0 when the map fits in one window)


def stage_layouts(img_size: int, patch_size: int, num_stages: int,
                  window_size: int) -> list[StageLayout]:
  """Per stage: feature map side, effective window and shift, as timm computes them.

  Stage i's map is ceil(grid / 2**i) (PatchMerging pads odd maps); timm's
  `_calc_window_shift` clamps the window to the map and drops the shift when
  the map is no larger than the window.
  """
  res = img_size // patch_size
  out = []
  for i in range(num_stages):
    if i > 0:
      res = (res + 1) // 2
    if res <= window_size:
      out.append(StageLayout(res, res, 0))
    else:
      out.append(StageLayout(res, window_size, window_size // 2))
  return out


def relative_position_index(window: int) -> np.ndarray:
  """timm's `get_relative_position_index` for a square window: [N, N] ints
  into the ((2w-1)**2, heads) bias table, N = w*w."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  flat = coords.reshape(2, -1)
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)
  rel[:, :, 0] += window - 1
  rel[:, :, 1] += window - 1
  rel[:, :, 0] *= 2 * window - 1
  return rel.sum(-1)


def _padded(size: int, window: int) -> int:
  return math.ceil(size / window) * window


def attention_mask(resolution: int, window: int, shift: int) -> np.ndarray:
  """timm's SW-MSA mask [num_windows, N, N]: 0 within a region, -100 across.

  Built on the padded map (as timm's `get_attn_mask`), regions split at
  -window and -shift from the padded end.
  """
  hp = _padded(resolution, window)
  img = np.zeros((hp, hp), np.float32)
  cnt = 0
  bounds = ((0, -window), (-window, -shift), (-shift, None))
  for h in bounds:
    for w in bounds:
      img[h[0]:h[1], w[0]:w[1]] = cnt
      cnt += 1
  n = hp // window
  win = img.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, window * window)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, np.float32(-100.0), np.float32(0.0)).astype(np.float32)


@jax.custom_vjp
def add_window_bias(logits, bias):
  """`logits` [B, windows, heads, N, N] + `bias` [heads, N, N], the same for
  every image and window.

  Its gradient for `bias` sums the logits' gradient over images and windows
  as one matrix-vector product: XLA's CPU reduction over those two leading
  axes, what autodiff would emit, is many times slower (BENCHMARKS.md).
  """
  return logits + bias.astype(logits.dtype)


def _add_window_bias_fwd(logits, bias):
  return add_window_bias(logits, bias), None


def _add_window_bias_bwd(_, g):
  lead = g.shape[0] * g.shape[1]
  ones = jnp.ones((lead,), g.dtype)
  return g, (ones @ g.reshape(lead, -1)).reshape(g.shape[2:])


add_window_bias.defvjp(_add_window_bias_fwd, _add_window_bias_bwd)


def _layer_norm(dtype, name):
  """timm's Swin uses torch's nn.LayerNorm: eps 1e-5."""
  return layer_norm(1e-5, dtype, name)


class WindowAttention(nn.Module):
  """Multi-head self-attention within windows, with timm's relative position bias.

  Input [B, num_windows, N, C] (N = window**2); `mask` [num_windows, N, N] or None.
  The qkv output is laid out [3, heads, head_dim] as timm's `qkv.weight` rows.
  """
  num_heads: int
  window: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[np.ndarray] = None):
    b, nw, n, dim = x.shape
    head_dim = dim // self.num_heads
    table = self.param("relative_position_bias_table", trunc_normal,
                       ((2 * self.window - 1) ** 2, self.num_heads), jnp.float32)
    index = relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)  # [h, N, N]

    qkv = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=trunc_normal, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, nw, n, 3, self.num_heads, head_dim), 3, 0)
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=jnp.float32)
    logits = add_window_bias(logits * (head_dim ** -0.5), bias)
    if mask is not None:
      logits = logits + jnp.asarray(mask)[None, :, None]
    attn = nn.softmax(logits, axis=-1)
    x = jnp.einsum("bwhqk,bwkhd->bwqhd", attn.astype(self.dtype), v)
    return nn.Dense(dim, dtype=self.dtype, kernel_init=trunc_normal,
                    name="proj")(x.reshape(b, nw, n, dim))


class SwinBlock(nn.Module):
  """timm's SwinTransformerBlock on an NHWC map [B, H, W, C] (H == W)."""
  num_heads: int
  window: int
  shift: int = 0
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32

  def _attn(self, x):
    b, h, w, c = x.shape
    ws, s = self.window, self.shift
    if s:
      x = jnp.roll(x, (-s, -s), axis=(1, 2))
    hp, wp = _padded(h, ws), _padded(w, ws)
    if (hp, wp) != (h, w):
      x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    nh, nw = hp // ws, wp // ws
    win = x.reshape(b, nh, ws, nw, ws, c).transpose(0, 1, 3, 2, 4, 5)
    win = win.reshape(b, nh * nw, ws * ws, c)
    mask = attention_mask(h, ws, s) if s else None
    win = WindowAttention(self.num_heads, ws, dtype=self.dtype, name="attn")(win, mask)
    x = win.reshape(b, nh, nw, ws, ws, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    x = x[:, :h, :w]
    if s:
      x = jnp.roll(x, (s, s), axis=(1, 2))
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    y = self._attn(_layer_norm(self.dtype, "norm1")(x))
    x = x + DropPath(self.drop_path, name="drop_path1")(y, train=train)
    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
        _layer_norm(self.dtype, "norm2")(x), train=train)
    return x + DropPath(self.drop_path, name="drop_path2")(y, train=train)


class PatchMerging(nn.Module):
  """timm 1.0's PatchMerging: pad odd maps, concatenate each 2x2 neighbourhood
  in timm's order (reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5)),
  LayerNorm(4C), Linear(4C -> out_dim, no bias)."""
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
      h, w = h + h % 2, w + w % 2
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    x = _layer_norm(self.dtype, "norm")(x)
    return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                    kernel_init=trunc_normal, name="reduction")(x)


class SwinStage(nn.Module):
  """timm's SwinTransformerStage: optional PatchMerging, then blocks whose odd
  members shift their windows."""
  dim: int
  depth: int
  num_heads: int
  layout: StageLayout
  downsample: bool
  mlp_ratio: float = 4.0
  drop_paths: tuple[float, ...] = ()
  dtype: Dtype = jnp.float32
  remat: str = ""

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = PatchMerging(self.dim, dtype=self.dtype, name="downsample")(x)
    block = remat_block(SwinBlock, self.remat)
    for j in range(self.depth):
      x = block(self.num_heads, self.layout.window,
                self.layout.shift if j % 2 else 0, self.mlp_ratio,
                drop_path=self.drop_paths[j], dtype=self.dtype,
                name=f"blocks_{j}")(x, train)
      x = materialize(x)
    return x


class SwinTransformer(nn.Module):
  """timm's SwinTransformer (global_pool='avg', NHWC throughout).

  `window_size` is the target window of every stage (timm clamps it per stage,
  see `stage_layouts`). `drop_rate` is dropout on the pooled features before
  the head (timm's ClassifierHead); timm's attention/projection dropouts are
  0 for Swin-B. Stochastic depth rises linearly from 0 to `drop_path_rate`
  over all blocks (timm's `calculate_drop_path_rates`, split by stage).
  `num_classes=0` returns the pooled features.
  """
  img_size: int = 224
  patch_size: int = 4
  in_chans: int = 3
  num_classes: int = 7
  embed_dim: int = 128
  depths: tuple[int, ...] = (2, 2, 18, 2)
  num_heads: tuple[int, ...] = (4, 8, 16, 32)
  window_size: int = 7
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  remat: str = ""

  @property
  def last_stage(self) -> str:
    """The submodule whose output is the last stage's feature map (Grad-CAM's layer)."""
    return f"layers_{len(self.depths) - 1}"

  def layouts(self) -> list[StageLayout]:
    return stage_layouts(self.img_size, self.patch_size, len(self.depths), self.window_size)

  def _check_input(self, x):
    check_nhwc("Swin", x, self.img_size, self.in_chans,
               "Its windows and attention masks are fixed to img_size")

  @nn.compact
  def __call__(self, x, train: bool = False):
    self._check_input(x)
    x = PatchEmbed(self.patch_size, self.embed_dim, flatten=False, norm_eps=1e-5,
                   dtype=self.dtype, name="patch_embed")(jnp.asarray(x, self.dtype))
    rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
    start = 0
    for i, (depth, heads, layout) in enumerate(zip(self.depths, self.num_heads,
                                                   self.layouts())):
      x = SwinStage(self.embed_dim * 2 ** i, depth, heads, layout, downsample=i > 0,
                    mlp_ratio=self.mlp_ratio,
                    drop_paths=tuple(rates[start:start + depth]), dtype=self.dtype,
                    remat=self.remat, name=f"layers_{i}")(x, train=train)
      start += depth
    x = _layer_norm(self.dtype, "norm")(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # timm's avg pool over H, W

    return classifier(x, self.num_classes, self.drop_rate, train, self.dtype)


def _arch(name: str) -> SwinArch:
  if name not in ARCHS:
    raise ValueError(f"Unknown Swin {name!r}; valid names: {', '.join(ARCHS)}")
  return ARCHS[name]


def create(name: str, *, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
           drop_rate: float = 0.0, drop_path_rate: float = 0.0, dtype=jnp.float32,
           window_size: Optional[int] = None, remat: str = "") -> SwinTransformer:
  """The Flax Swin for a name in ARCHS (see `mer_jax.models.create_model`).

  `window_size` defaults to timm's choice for `img_size` (7 at 224, 12 at 384).
  """
  arch = _arch(name)
  if img_size % arch.patch_size or img_size < arch.patch_size:
    raise UsageError(
        f"img_size {img_size} is not a positive multiple of the patch size "
        f"{arch.patch_size} of {name}; use e.g. 224 or 384 (the paper's sizes).")
  if window_size is None:
    window_size = default_window_size(img_size)
  if window_size < 1:
    raise ValueError(f"window_size must be positive, got {window_size}")
  return SwinTransformer(
      img_size=img_size, patch_size=arch.patch_size, in_chans=in_chans,
      num_classes=num_classes, embed_dim=arch.embed_dim, depths=arch.depths,
      num_heads=arch.num_heads, window_size=window_size, mlp_ratio=arch.mlp_ratio,
      drop_rate=drop_rate, drop_path_rate=drop_path_rate, dtype=dtype, remat=remat)


# --- timm checkpoint -> params ------------------------------------------------


def _original_to_timm(sd: StateDict) -> StateDict:
  """timm's swin `checkpoint_filter_fn` renaming: buffers (relative_position_index,
  attn_mask) dropped; original Microsoft checkpoints, which downsample at the
  end of a stage, get `layers.N.downsample` -> `layers.N+1.downsample` and
  `head.` -> `head.fc.`."""
  old = "layers.0.downsample.reduction.weight" in sd
  out = {}
  for k in list(sd.keys()):
    if "relative_position_index" in k or "attn_mask" in k:
      sd.skip(k)
      continue
    v = sd.take(k)
    if old:
      k = re.sub(r"layers.(\d+).downsample",
                 lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
      k = k.replace("head.", "head.fc.")
    out[k] = v
  return StateDict(out)


def convert_timm(name: str, state_dict, *, img_size: int = 224, in_chans: int = 3,
                 num_classes: int = 7, seed: int = 0, window_size: int | None = None) -> dict:
  """timm `swin_base_patch4_window7_224` / `_window12_384` state dict -> params
  of `create(name, ...)` (same `window_size`: default timm's for `img_size`).

  Does what timm's swin `checkpoint_filter_fn` + `load_state_dict` do: the
  recomputed buffers (relative_position_index, attn_mask) are skipped,
  original Microsoft names are renamed, bias tables of another window (a 224
  checkpoint in a 384 model) are resized (BEiT's geometric grid), and the
  patch kernel is adapted to `in_chans`. Every tensor is used or the call
  fails, except a classifier head of another size, re-initialised from `seed`.
  """
  arch = _arch(name)
  if window_size is None:
    window_size = default_window_size(img_size)
  sd = _original_to_timm(StateDict(state_dict))
  d0, p = arch.embed_dim, arch.patch_size
  params = {"patch_embed": {
      "proj": sdict.stem_conv(sd, "patch_embed.proj", d0, p, in_chans,
                              f"a patch-{p} Swin with width {d0}"),
      "norm": sdict.norm(sd, "patch_embed.norm", d0)}}
  layouts = stage_layouts(img_size, p, len(arch.depths), window_size)
  for i, (depth, heads, layout) in enumerate(zip(arch.depths, arch.num_heads, layouts)):
    d = d0 * 2 ** i
    hidden = int(d * arch.mlp_ratio)
    stage = {}
    if i > 0:
      stage["downsample"] = {
          "norm": sdict.norm(sd, f"layers.{i}.downsample.norm", 2 * d),
          "reduction": sdict.dense(sd, f"layers.{i}.downsample.reduction", 2 * d, d,
                                   bias=False)}
    for j in range(depth):
      b = f"layers.{i}.blocks.{j}"
      key = f"{b}.attn.relative_position_bias_table"
      table = np.asarray(sd.take(key), np.float32)
      if table.ndim != 2 or table.shape[1] != heads:
        raise ConversionError(f"checkpoint tensor {key!r} has shape {table.shape}, the "
                              f"model needs [{(2 * layout.window - 1) ** 2}, {heads}]")
      stage[f"blocks_{j}"] = {
          "norm1": sdict.norm(sd, f"{b}.norm1", d),
          "attn": {"qkv": sdict.dense(sd, f"{b}.attn.qkv", d, 3 * d),
                   "proj": sdict.dense(sd, f"{b}.attn.proj", d, d),
                   "relative_position_bias_table":
                       resize_rel_pos_bias_table(table, layout.window, key)},
          "norm2": sdict.norm(sd, f"{b}.norm2", d),
          "mlp": {"fc1": sdict.dense(sd, f"{b}.mlp.fc1", d, hidden),
                  "fc2": sdict.dense(sd, f"{b}.mlp.fc2", hidden, d)},
      }
    params[f"layers_{i}"] = stage
  d_last = d0 * 2 ** (len(arch.depths) - 1)
  params["norm"] = sdict.norm(sd, "norm", d_last)
  return sdict.finish_with_head(sd, params, "head.fc", d_last, num_classes, seed)
