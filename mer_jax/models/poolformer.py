"""PoolFormer (Yu et al., CVPR 2022) in Flax linen, an exact port of timm.

Mirrors timm 1.0.31 `poolformer_{s12,s24,m36,m48}`
(`timm.models.metaformer.MetaFormer` with the PoolFormer v1 arguments):

  stem: 7x7 conv stride 4 pad 2 (no norm)
  4 stages: [3x3 conv stride 2 pad 1 downsampling before stages 1-3]
    blocks: x + ls1 * pool(gn1(x))  with pool(x) = avgpool3x3(x) - x
            x + ls2 * mlp(gn2(x))   with 1x1-conv Mlp (exact GELU)
    (GroupNorm with one group, eps 1e-5; LayerScale per channel, timm's `Scale`)
  head: global average pool -> LayerNorm (eps 1e-6) -> dropout -> Linear.

The average pool excludes padding from the count (count_include_pad=False), as
timm's. The model is fully convolutional: any input size works, so the same
parameters serve M1 (384) and M2 (224). NHWC throughout; 1x1 convs are Dense
layers on the channel axis (same matmul, no conv dispatch). Parameters are
float32; `dtype` sets the compute dtype while norms run in float32.

`convert_timm` reads timm's checkpoints (and the original sail-sg ones, as
timm's metaformer `checkpoint_filter_fn` does) into these parameters.
"""
from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.models import state_dict as sdict
from mer_jax.models.layers import (DropPath, Dtype, LayerScale, Mlp, PatchConv, classifier,
                                   drop_path_rates, remat_block, trunc_normal)
from mer_jax.models.state_dict import ConversionError, StateDict


@dataclasses.dataclass(frozen=True)
class PoolFormerArch:
  depths: tuple[int, ...]
  dims: tuple[int, ...]
  layer_scale_init: float
  mlp_ratio: float = 4.0
  pool_size: int = 3


ARCHS = {
    # timm.models.metaformer.poolformer_*: depths, dims, layer_scale_init_values.
    "poolformer_s12": PoolFormerArch((2, 2, 6, 2), (64, 128, 320, 512), 1e-5),
    "poolformer_s24": PoolFormerArch((4, 4, 12, 4), (64, 128, 320, 512), 1e-5),
    "poolformer_m36": PoolFormerArch((6, 6, 18, 6), (96, 192, 384, 768), 1e-6),
    "poolformer_m48": PoolFormerArch((8, 8, 24, 8), (96, 192, 384, 768), 1e-6),
}


def _group_norm(dtype, name):
  """timm's GroupNorm1: one group, statistics over H, W and C per sample."""
  return nn.GroupNorm(num_groups=1, epsilon=1e-5, dtype=dtype, use_fast_variance=False,
                      name=name)


def _pool_counts(h: int, w: int, k: int) -> np.ndarray:
  """How many in-image pixels each k x k window (stride 1, pad k//2) covers."""
  def counts(n):
    i = np.arange(n)
    return np.minimum(i + k // 2, n - 1) - np.maximum(i - k // 2, 0) + 1
  return (counts(h)[:, None] * counts(w)[None, :]).astype(np.float32)[..., None]


def pool_mixer(x, pool_size: int = 3):
  """avgpool(x, k, stride 1, pad k//2, count_include_pad=False) - x, NHWC.

  The window sum is k*k shifted slices of the zero-padded map added up: one fused
  elementwise pass each way, where XLA:CPU's reduce_window and its gradient were
  slower (BENCHMARKS "The MLPs' weight gradient ...")."""
  k, p = pool_size, pool_size // 2
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  summed = sum(padded[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k))
  counts = _pool_counts(h, w, k)
  return summed * jnp.asarray(1.0 / counts, x.dtype) - x


class PoolFormerBlock(nn.Module):
  mlp_ratio: float = 4.0
  pool_size: int = 3
  layer_scale_init: float = 1e-5
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    y = pool_mixer(_group_norm(self.dtype, "norm1")(x), self.pool_size)
    y = LayerScale(self.layer_scale_init, "scale", name="layer_scale1")(y)
    x = x + DropPath(self.drop_path, name="drop_path1")(y, train=train)
    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(
        _group_norm(self.dtype, "norm2")(x), train=train)
    y = LayerScale(self.layer_scale_init, "scale", name="layer_scale2")(y)
    return x + DropPath(self.drop_path, name="drop_path2")(y, train=train)


class PoolFormer(nn.Module):
  """timm's MetaFormer with PoolFormer v1 settings. `num_classes=0` returns
  the pooled, normalised features."""
  depths: tuple[int, ...] = (6, 6, 18, 6)
  dims: tuple[int, ...] = (96, 192, 384, 768)
  layer_scale_init: float = 1e-6
  mlp_ratio: float = 4.0
  pool_size: int = 3
  in_chans: int = 3
  num_classes: int = 7
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  remat: str = ""

  @property
  def last_stage(self) -> str:
    """The submodule whose output is the last stage's feature map (Grad-CAM's layer)."""
    return f"stages_{len(self.depths) - 1}_blocks_{self.depths[-1] - 1}"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f"PoolFormer expects NHWC images with {self.in_chans} channel(s), "
                       f"got shape {tuple(x.shape)}")
    x = nn.Conv(self.dims[0], (7, 7), strides=(4, 4), padding=((2, 2), (2, 2)),
                dtype=self.dtype, kernel_init=trunc_normal, name="stem")(
                    jnp.asarray(x, self.dtype))
    rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
    block_cls = remat_block(PoolFormerBlock, self.remat)
    block = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = PatchConv(dim, 3, 2, 1, dtype=self.dtype, name=f"stages_{i}_downsample")(x)
      for j in range(depth):
        x = block_cls(self.mlp_ratio, self.pool_size, self.layer_scale_init,
                      drop_path=rates[block], dtype=self.dtype,
                      name=f"stages_{i}_blocks_{j}")(x, train)
        block += 1
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name="head_norm")(x)
    return classifier(x, self.num_classes, self.drop_rate, train, self.dtype)


def _arch(name: str) -> PoolFormerArch:
  if name not in ARCHS:
    raise ValueError(f"Unknown PoolFormer {name!r}; valid names: {', '.join(ARCHS)}")
  return ARCHS[name]


def create(name: str, *, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
           drop_rate: float = 0.0, drop_path_rate: float = 0.0,
           dtype=jnp.float32, remat: str = "") -> PoolFormer:
  """The Flax PoolFormer for a registry name (see `mer_jax.models.create_model`).

  `img_size` is accepted for a uniform interface; PoolFormer is size-agnostic.
  """
  del img_size
  a = _arch(name)
  return PoolFormer(depths=a.depths, dims=a.dims, layer_scale_init=a.layer_scale_init,
                    mlp_ratio=a.mlp_ratio, pool_size=a.pool_size, in_chans=in_chans,
                    num_classes=num_classes, drop_rate=drop_rate,
                    drop_path_rate=drop_path_rate, dtype=dtype, remat=remat)


# --- timm checkpoint -> params ------------------------------------------------


def original_to_timm(state_dict) -> dict:
  """The original sail-sg PoolFormer checkpoint names (`network.0.0.mlp.fc1`,
  `patch_embed`, `layer_scale_1`, `norm`, `head`) -> timm's MetaFormer names,
  by the renaming of timm 1.0.31's `metaformer.checkpoint_filter_fn`. A timm
  state dict (has `stem.conv.weight`) is returned as is."""
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
    k = k.replace("downsample.proj", "downsample.conv")
    k = k.replace("patch_embed.proj", "patch_embed.conv")
    k = re.sub(r"([0-9]+).([0-9]+)", r"\1.blocks.\2", k)
    k = k.replace("stages.0.downsample", "patch_embed").replace("patch_embed", "stem")
    k = k.replace("post_norm", "norm").replace("pre_norm", "norm")
    k = re.sub(r"^head", "head.fc", k)
    k = re.sub(r"^norm", "head.norm", k)
    out[k] = np.asarray(v)
  return out


def _conv(sd: StateDict, prefix: str, c_in: int, c_out: int, k: int) -> dict:
  w = sdict.take_shaped(sd, f"{prefix}.weight", (c_out, c_in, k, k))
  return {"kernel": sdict.conv_kernel(w), "bias": sdict.take_shaped(sd, f"{prefix}.bias", (c_out,))}


def _pointwise(sd: StateDict, prefix: str, c_in: int, c_out: int) -> dict:
  """A 1x1 conv [O, I, 1, 1] (or a Linear [O, I]) -> Dense on the channel axis."""
  w = np.asarray(sd.take(f"{prefix}.weight"), np.float32)
  if w.shape not in ((c_out, c_in, 1, 1), (c_out, c_in)):
    raise ConversionError(f"checkpoint tensor '{prefix}.weight' has shape {w.shape}, "
                          f"the model needs ({c_out}, {c_in}, 1, 1)")
  return {"kernel": sdict.dense_kernel(w.reshape(c_out, c_in)),
          "bias": sdict.take_shaped(sd, f"{prefix}.bias", (c_out,))}


def convert_timm(name: str, state_dict, *, img_size: int = 224, in_chans: int = 3,
                 num_classes: int = 7, seed: int = 0) -> dict:
  """timm `poolformer_*` (MetaFormer) state dict -> params of `create(name, ...)`.

  Original sail-sg names are accepted too (see `original_to_timm`). The stem
  kernel is adapted to `in_chans`; `img_size` plays no role (the model is
  fully convolutional). Every tensor is used or the call fails, except a
  classifier head of another size, which is re-initialised from `seed`.
  """
  del img_size
  arch = _arch(name)
  sd = StateDict(original_to_timm(state_dict))
  dims = arch.dims
  params = {"stem": sdict.stem_conv(sd, "stem.conv", dims[0], 7, in_chans,
                                    f"a {name} checkpoint")}
  for i, (depth, d) in enumerate(zip(arch.depths, dims)):
    if i > 0:
      params[f"stages_{i}_downsample"] = _conv(
          sd, f"stages.{i}.downsample.conv", dims[i - 1], d, 3)
    hidden = int(d * arch.mlp_ratio)
    for j in range(depth):
      b = f"stages.{i}.blocks.{j}"
      params[f"stages_{i}_blocks_{j}"] = {
          "norm1": sdict.norm(sd, f"{b}.norm1", d),
          "layer_scale1": {"scale": sdict.take_shaped(sd, f"{b}.layer_scale1.scale", (d,))},
          "norm2": sdict.norm(sd, f"{b}.norm2", d),
          "mlp": {"fc1": _pointwise(sd, f"{b}.mlp.fc1", d, hidden),
                  "fc2": _pointwise(sd, f"{b}.mlp.fc2", hidden, d)},
          "layer_scale2": {"scale": sdict.take_shaped(sd, f"{b}.layer_scale2.scale", (d,))},
      }
  params["head_norm"] = sdict.norm(sd, "head.norm", dims[-1])
  return sdict.finish_with_head(sd, params, "head.fc", dims[-1], num_classes, seed)
