"""ViT-B/32 (Dosovitskiy et al., 2021) in Flax linen, an exact port of timm.

Mirrors timm 1.0.31 `vit_base_patch32_224` / `vit_base_patch32_384`
(`timm.models.vision_transformer.VisionTransformer`) so that timm's ImageNet
weights, converted by `mer_jax.models.convert.from_timm`, give the same logits:

  patch_embed (32x32 conv, stride 32) -> [cls] + patches -> + pos_embed
  (pos_embed has a slot for the cls token) -> 12 pre-norm Blocks
  (LayerNorm eps 1e-6, fused-qkv attention, exact-GELU Mlp) -> final norm
  -> cls token -> head dropout -> head.

Module and parameter names follow timm's (`blocks_3/attn/qkv`), so the
converter is a plain renaming. Parameters are float32; `dtype` sets the
compute dtype (e.g. bfloat16) while layer norms and the attention softmax stay
float32, because bf16 softmax over 145 tokens loses the small weights.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mer_jax.models.layers import (DropPath, Dtype, Mlp, check_nhwc, classifier,
                                   remat_block, trunc_normal)

# timm initialises the class token with normal(std=1e-6): it starts as ~zero
# so the first updates come from the position embedding's cls slot.
_cls_init = nn.initializers.normal(stddev=1e-6)


@dataclasses.dataclass(frozen=True)
class ViTArch:
  """The architecture hyper-parameters timm fixes per model name."""
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  init_values: Optional[float] = None  # LayerScale; None (ViT-B/32) = identity


ARCHS = {
    # timm `vit_base_patch32_224` / `_384`: model_args
    # dict(patch_size=32, embed_dim=768, depth=12, num_heads=12).
    "vit_b32": ViTArch(patch_size=32, embed_dim=768, depth=12, num_heads=12),
}


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
  """timm's stochastic-depth rule: 0 at the first block, `drop_path_rate` at
  the last, linear in between (`calculate_drop_path_rates`).

  Computed as torch.linspace does in float32 (each half stepped from its own
  end): bit-exact for ViT-B's 12 blocks (tested); for depths above 16 torch's
  vectorised loop can differ in the last bit.
  """
  if depth == 1:
    return [0.0]
  f32 = np.float32
  end = f32(drop_path_rate)
  step = end / f32(depth - 1)
  return [float(step * f32(i) if i < depth // 2 else end - step * f32(depth - 1 - i))
          for i in range(depth)]


def _layer_norm(dtype, name):
  """timm's LayerNorm(eps=1e-6). Two-pass variance as torch computes it: the
  one-pass E[x^2]-E[x]^2 form loses digits on pretrained ViTs' large
  activations. Flax keeps the statistics in float32 under a bf16 dtype."""
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, use_fast_variance=False, name=name)


class LayerScale(nn.Module):
  """timm's LayerScale: a learned per-channel gain on a residual branch."""
  init_values: float = 1e-5

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_values),
                       (x.shape[-1],), jnp.float32)
    return x * gamma.astype(x.dtype)


class PatchEmbed(nn.Module):
  """Non-overlapping patch_size x patch_size conv -> [B, patches, dim]."""
  patch_size: int
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, name="proj")(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])  # row-major = torch flatten(2)


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv projection (timm `Attention`).

  The qkv output is laid out [3, heads, head_dim] along features, as timm's
  `qkv.weight` rows, so converted weights need no reordering.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=trunc_normal, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, head_dim), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    attn = nn.softmax(logits * (head_dim ** -0.5), axis=-1)
    x = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(self.dtype), v)
    return nn.Dense(dim, dtype=self.dtype, kernel_init=trunc_normal,
                    name="proj")(x.reshape(b, n, dim))


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  init_values: Optional[float] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    y = Attention(self.num_heads, dtype=self.dtype, name="attn")(
        _layer_norm(self.dtype, "norm1")(x))
    if self.init_values is not None:
      y = LayerScale(self.init_values, name="ls1")(y)
    x = x + DropPath(self.drop_path, name="drop_path1")(y, train=train)
    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
        _layer_norm(self.dtype, "norm2")(x), train=train)
    if self.init_values is not None:
      y = LayerScale(self.init_values, name="ls2")(y)
    return x + DropPath(self.drop_path, name="drop_path2")(y, train=train)


class VisionTransformer(nn.Module):
  """timm's VisionTransformer with cls-token pooling (global_pool='token').

  Attributes follow timm's constructor. `drop_rate` is what timm 1.0.31 calls
  it: dropout on the pooled features before the head only (timm's pos/proj/
  attention dropouts are separate arguments, all 0 for ViT-B/32).
  `num_classes=0` returns the 768-d pre-logits features.
  """
  img_size: int = 224
  patch_size: int = 32
  in_chans: int = 3
  num_classes: int = 7
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  init_values: Optional[float] = None
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  remat: str = ""

  @property
  def grid_size(self) -> int:
    return self.img_size // self.patch_size

  def _check_input(self, x):
    check_nhwc("ViT", x, self.img_size, self.in_chans,
               "The position embedding is fixed to img_size")

  @nn.compact
  def __call__(self, x, train: bool = False):
    self._check_input(x)
    x = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype,
                   name="patch_embed")(jnp.asarray(x, self.dtype))
    b = x.shape[0]
    cls_token = self.param("cls_token", _cls_init, (1, 1, self.embed_dim), jnp.float32)
    pos_embed = self.param("pos_embed", trunc_normal,
                           (1, self.grid_size ** 2 + 1, self.embed_dim), jnp.float32)
    cls = jnp.broadcast_to(cls_token.astype(x.dtype), (b, 1, self.embed_dim))
    # Original ViT: concatenate the cls token, then add pos_embed (cls slot included).
    x = jnp.concatenate([cls, x], axis=1) + pos_embed.astype(x.dtype)

    block = remat_block(Block, self.remat)
    for i, rate in enumerate(drop_path_rates(self.drop_path_rate, self.depth)):
      x = block(self.num_heads, self.mlp_ratio, drop_path=rate,
                init_values=self.init_values, dtype=self.dtype,
                name=f"blocks_{i}")(x, train)
    x = _layer_norm(self.dtype, "norm")(x)[:, 0]  # fc_norm is identity for token pooling

    return classifier(x, self.num_classes, self.drop_rate, train, self.dtype)


def create(name: str, *, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
           drop_rate: float = 0.0, drop_path_rate: float = 0.0,
           dtype=jnp.float32, remat: str = "") -> VisionTransformer:
  """The Flax ViT for a registry name (see `mer_jax.models.create_model`)."""
  if name not in ARCHS:
    raise ValueError(f"Unknown ViT {name!r}; valid names: {', '.join(ARCHS)}")
  arch = ARCHS[name]
  if img_size % arch.patch_size:
    raise ValueError(
        f"img_size {img_size} is not a multiple of the patch size {arch.patch_size} "
        f"of {name}; use e.g. 224 or 384 (the paper's sizes).")
  return VisionTransformer(
      img_size=img_size, patch_size=arch.patch_size, in_chans=in_chans,
      num_classes=num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
      num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio,
      init_values=arch.init_values, drop_rate=drop_rate,
      drop_path_rate=drop_path_rate, dtype=dtype, remat=remat)
