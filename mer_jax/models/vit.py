"""ViT-B/32 (Dosovitskiy et al., 2021) in Flax linen, an exact port of timm.

Mirrors timm 1.0.31 `vit_base_patch32_224` / `vit_base_patch32_384`
(`timm.models.vision_transformer.VisionTransformer`) so that timm's ImageNet
weights, converted by `convert_timm` below, give the same logits:

  patch_embed (32x32 conv, stride 32) -> [cls] + patches -> + pos_embed
  (pos_embed has a slot for the cls token) -> 12 pre-norm Blocks
  (LayerNorm eps 1e-6, fused-qkv attention, exact-GELU Mlp) -> final norm
  -> cls token -> head dropout -> head.

Module and parameter names follow timm's (`blocks_3/attn/qkv`), so the
converter (`convert_timm`, timm's `checkpoint_filter_fn`; `npz_to_timm` for
Google's .npz files) is a plain renaming. Parameters are float32; `dtype`
sets the compute dtype (e.g. bfloat16) while layer norms and the attention
softmax stay float32, because a bf16 softmax over the tokens loses the small
weights.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mer_jax.plumbing.errors import UsageError
from mer_jax.models import state_dict as sdict
from mer_jax.models.layers import (DropPath, Dtype, LayerScale, Mlp, PatchEmbed, check_nhwc,
                                   classifier, drop_path_rates, layer_norm, materialize,
                                   remat_block, trunc_normal)
from mer_jax.models.resample import resample_abs_pos_embed
from mer_jax.models.state_dict import ConversionError, StateDict

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


def _layer_norm(dtype, name):
  """timm's ViT LayerNorm: eps 1e-6."""
  return layer_norm(1e-6, dtype, name)


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
    # Slice q, k, v in place: moving the 3-axis to the front (moveaxis) makes
    # XLA's CPU compiler copy the whole qkv tensor per block, and again in the
    # backward pass (BENCHMARKS.md, "Models").
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    attn = nn.softmax(logits * (head_dim ** -0.5), axis=-1)
    # For attention rollout (mer_jax.explain): kept only when the caller asks,
    # `apply(..., mutable=["intermediates"])`; otherwise a no-op, nothing traced.
    self.sow("intermediates", "attention", attn)
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
      y = LayerScale(self.init_values, "gamma", name="ls1")(y)
    x = x + DropPath(self.drop_path, name="drop_path1")(y, train=train)
    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
        _layer_norm(self.dtype, "norm2")(x), train=train)
    if self.init_values is not None:
      y = LayerScale(self.init_values, "gamma", name="ls2")(y)
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
      x = materialize(x)
    x = _layer_norm(self.dtype, "norm")(x)[:, 0]  # fc_norm is identity for token pooling

    return classifier(x, self.num_classes, self.drop_rate, train, self.dtype)


def _arch(name: str) -> ViTArch:
  if name not in ARCHS:
    raise ValueError(f"Unknown ViT {name!r}; valid names: {', '.join(ARCHS)}")
  return ARCHS[name]


def create(name: str, *, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
           drop_rate: float = 0.0, drop_path_rate: float = 0.0,
           dtype=jnp.float32, remat: str = "") -> VisionTransformer:
  """The Flax ViT for a registry name (see `mer_jax.models.create_model`)."""
  arch = _arch(name)
  if img_size % arch.patch_size:
    raise UsageError(
        f"img_size {img_size} is not a multiple of the patch size {arch.patch_size} "
        f"of {name}; use e.g. 224 or 384 (the paper's sizes).")
  return VisionTransformer(
      img_size=img_size, patch_size=arch.patch_size, in_chans=in_chans,
      num_classes=num_classes, embed_dim=arch.embed_dim, depth=arch.depth,
      num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio,
      init_values=arch.init_values, drop_rate=drop_rate,
      drop_path_rate=drop_path_rate, dtype=dtype, remat=remat)


# --- timm checkpoint -> params ------------------------------------------------


def convert_timm(name: str, state_dict, *, img_size: int = 224, in_chans: int = 3,
                 num_classes: int = 7, seed: int = 0) -> dict:
  """timm `vit_base_patch32_*` state dict -> params of `create(name, ...)`.

  Does what timm's `checkpoint_filter_fn` + `load_state_dict` do when a timm
  checkpoint is loaded into a model of another size: the position embedding
  is resampled to the model's grid (bicubic, antialias=True, cls slot kept),
  the patch kernel is adapted to `in_chans`, and `pre_logits.*` is dropped.
  Every tensor is used or the call fails (ConversionError naming it), except
  a classifier head of another size, which is re-initialised from `seed`.
  """
  arch = _arch(name)
  sd = StateDict(state_dict)
  d, p = arch.embed_dim, arch.patch_size
  hidden = int(d * arch.mlp_ratio)
  params = {"patch_embed": {"proj": sdict.stem_conv(
      sd, "patch_embed.proj", d, p, in_chans, f"a patch-{p} ViT with width {d}")}}
  params["cls_token"] = sdict.take_shaped(sd, "cls_token", (1, 1, d))
  pos = np.asarray(sd.take("pos_embed"), np.float32)
  if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d:
    raise ConversionError(f"checkpoint tensor 'pos_embed' has shape {pos.shape}, "
                          f"expected [1, N, {d}]")
  params["pos_embed"] = resample_abs_pos_embed(pos, img_size // p)

  for i in range(arch.depth):
    b = f"blocks.{i}"
    block = {
        "norm1": sdict.norm(sd, f"{b}.norm1", d),
        "attn": {"qkv": sdict.dense(sd, f"{b}.attn.qkv", d, 3 * d),
                 "proj": sdict.dense(sd, f"{b}.attn.proj", d, d)},
        "norm2": sdict.norm(sd, f"{b}.norm2", d),
        "mlp": {"fc1": sdict.dense(sd, f"{b}.mlp.fc1", d, hidden),
                "fc2": sdict.dense(sd, f"{b}.mlp.fc2", hidden, d)},
    }
    if arch.init_values is not None:  # LayerScale; absent (identity) in ViT-B/32
      block["ls1"] = {"gamma": sdict.take_shaped(sd, f"{b}.ls1.gamma", (d,))}
      block["ls2"] = {"gamma": sdict.take_shaped(sd, f"{b}.ls2.gamma", (d,))}
    params[f"blocks_{i}"] = block
  params["norm"] = sdict.norm(sd, "norm", d)

  # timm's checkpoint_filter_fn drops the old representation layer (21k
  # pre-training only); fine-tuning never used it.
  for key in [k for k in sd.keys() if k.startswith("pre_logits.")]:
    logging.warning("Dropping %s (pre-logits layer, unused by timm's ViT)", key)
    sd.skip(key)
  return sdict.finish_with_head(sd, params, "head", d, num_classes, seed)


def is_google_npz(arrays) -> bool:
  """Whether a .npz holds Google's vit_jax / augreg names (`npz_to_timm` reads it)."""
  return "embedding/kernel" in arrays or "opt/target/embedding/kernel" in arrays


def npz_to_timm(npz, img_size: int | None = None) -> dict[str, np.ndarray]:
  """Google's ViT `.npz` (vit_jax / augreg names) -> a timm state dict.

  The mapping of timm 1.0.31's `_load_weights`: query/key/value kernels
  [D, heads, head_dim] fused into `attn.qkv`, `out` [heads, head_dim, D] into
  `attn.proj`, HWIO -> OIHW patch kernel, LayerNorm_0/2 -> norm1/2,
  MlpBlock_3 -> mlp; `pre_logits` dropped as timm drops it. Input channels
  are adapted later, by `convert_timm`. With `img_size`, the position
  embedding is resampled here with timm's `.npz` rule (bilinear, no
  antialias), which differs from its rule for timm checkpoints (bicubic,
  antialias), so that `convert_timm(...)` of the result equals what timm loads.
  """
  w = {k: np.asarray(v) for k, v in dict(npz).items()}
  prefix = "opt/target/" if "opt/target/embedding/kernel" in w else ""
  if any(k.startswith("params/") for k in w) or "pos_embedding" in w \
      or "Transformer/encoderblock/LayerNorm_0/scale" in w:
    raise ConversionError(
        "This looks like a big_vision ViT checkpoint (params/, pos_embedding or "
        "scanned encoderblock): its position embedding has no cls slot, so it is not "
        "a vit_base_patch32 checkpoint. Use a vit_jax/augreg .npz "
        "(e.g. B_32-i21k-300ep-...-res_224.npz) or timm's model.safetensors.")
  if not is_google_npz(w):
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
