"""Layers shared by the model families, with timm's semantics."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# timm initialises Linear layers with trunc_normal(std=.02) and zero bias.
trunc_normal = nn.initializers.truncated_normal(stddev=0.02)
Dtype = Any


_SQRT_HALF = np.float32(1.0 / np.sqrt(2.0))


def gelu(x):
  """Exact (erf) GELU in torch's form, 0.5 * x * (1 + erf(x / sqrt(2))).

  Same function as `jax.nn.gelu(x, approximate=False)`, which XLA lowers via
  erfc: a two-branch polynomial plus an exp evaluated for every element, and
  for the backward pass again. lax.erf is a single clamped rational
  polynomial: a training step of the three families is 6-33 % faster
  on CPU (BENCHMARKS.md) and the values stay within float32 rounding of
  torch's (this is torch's own formula).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))


REMAT_POLICIES = ("", "block", "dots")


def remat_block(block_cls, remat: str):
  """`block_cls` itself, or wrapped in `nn.remat` so its activations are
  recomputed in the backward pass instead of kept (memory for time).

  "block": keep only each block's input; "dots": also keep the outputs of the
  weight matmuls (jax's dots_with_no_batch_dims_saveable), recompute norms,
  GELU and attention. Parameter names and values are unchanged. The block is
  called as `block(x, train)` (train positional: it is static for remat).

  What the backward pass keeps (Swin-B, 384, batch 8, jaxpr residuals): 11.3 GB
  off, 3.1 GB "dots", 0.7 GB "block". This is for accelerators: XLA's CPU
  compiler undoes it (peak RSS of a Swin-B 384 training step 14.2 GB either
  way, measured), so on CPU leave it off.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {REMAT_POLICIES} ('' = off), got {remat!r}")
  if not remat:
    return block_cls
  policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "dots" else None
  return nn.remat(block_cls, static_argnums=(2,), policy=policy)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm's `drop_path`): drop the residual
  branch with probability `rate`, scale kept samples by 1/(1-rate)."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  """fc1 -> exact GELU -> dropout -> fc2 -> dropout (timm's `Mlp`).

  Works on the last axis, so it serves tokens [B, N, C] and NHWC maps
  (PoolFormer's 1x1 convs are the same matmul).
  """
  hidden_features: int
  out_features: int | None = None
  drop: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = self.out_features or x.shape[-1]
    x = nn.Dense(self.hidden_features, dtype=self.dtype, kernel_init=trunc_normal,
                 name="fc1")(x)
    x = gelu(x)
    x = nn.Dropout(self.drop, deterministic=not train)(x)
    x = nn.Dense(out, dtype=self.dtype, kernel_init=trunc_normal, name="fc2")(x)
    return nn.Dropout(self.drop, deterministic=not train)(x)


def check_nhwc(family: str, x, img_size: int, in_chans: int, why: str) -> None:
  """Raises a ValueError naming the expected [B, img_size, img_size, in_chans]."""
  expected = (img_size, img_size, in_chans)
  if x.ndim != 4 or tuple(x.shape[1:]) != expected:
    raise ValueError(
        f"{family} expects NHWC images of shape [B, {img_size}, {img_size}, {in_chans}], "
        f"got {tuple(x.shape)}. {why}: resize the images, or create the model (and "
        "convert its weights) with the matching img_size / in_chans.")


def classifier(x, num_classes: int, drop_rate: float, train: bool, dtype: Dtype):
  """timm's head: dropout (`head_drop`) then Linear (`head`); float32 logits.

  Call from a compact `__call__`: the layers become the caller's submodules.
  """
  x = nn.Dropout(drop_rate, deterministic=not train, name="head_drop")(x)
  if num_classes > 0:
    x = nn.Dense(num_classes, dtype=dtype, kernel_init=trunc_normal, name="head")(x.astype(dtype))
  return x.astype(jnp.float32)
