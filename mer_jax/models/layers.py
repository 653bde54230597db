"""Layers shared by the model families, with timm's semantics.

timm keeps these in `timm.layers`; the family files build their blocks from
them: exact GELU, stochastic depth (`DropPath`, `drop_path_rates`), `Mlp`,
`LayerScale`, the conv `PatchEmbed`, torch-style `layer_norm`, the
classifier head, the remat wrapper for blocks, the fusion boundary
between blocks (`materialize`), and two layers with nn.Dense's and nn.Conv's parameters
and values whose training steps XLA's CPU backend runs faster (`Dense`, `PatchConv`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

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

  The same function as `jax.nn.gelu(x, approximate=False)`, whose erfc
  lowering evaluates a two-branch polynomial and an exp per element in both
  passes; lax.erf is one rational polynomial, so training steps are faster on
  CPU (BENCHMARKS.md), and the values stay within float32 rounding of torch's.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))


def materialize(x):
  """`x`, computed once and stored: a fusion boundary for XLA's CPU compiler.

  Put between residual blocks. Without it, XLA on CPU fuses the residual
  stream's backward pass (each block's add plus its LayerNorm gradient, all
  elementwise) into every fusion that reads it, so each block's gradient
  recomputes the chain from the top of its stage: work quadratic in depth
  (BENCHMARKS.md has what it cost). `optimization_barrier` would say this,
  but the CPU compiler removes it; a conditional is a boundary it keeps. Both
  branches give `x`'s values (the second multiplies by 1: JAX drops a
  conditional's output that every branch passes through untouched), so values
  and gradients are unchanged. Other platforms get `x` itself.
  """
  def stored(v):
    return jax.lax.cond(jnp.isfinite(v.reshape(-1)[0]), lambda u: u, lambda u: u * 1, v)

  return jax.lax.platform_dependent(x, cpu=stored, default=lambda v: v)


@jax.custom_vjp
def dense_matmul(x, kernel):
  """x [..., C] @ kernel [C, D], as nn.Dense computes it.

  Its weight gradient on CPU is x^T g with the narrower of x and g transposed first, so
  that the product is the plain [M, K] @ [K, N] that XLA:CPU hands to its fast matmul
  library; left to itself XLA transposes the wider one and runs the product in a slower
  kernel (PoolFormer-s12's MLPs: BENCHMARKS "The MLPs' weight gradient ..."). Other
  platforms contract as autodiff would.
  """
  return jnp.dot(x, kernel)


def _dense_matmul_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def kernel_grad_cpu(x2, g2):
  """x2^T g2 for x2 [N, C], g2 [N, D], as XLA:CPU runs it fastest: the narrower operand
  transposed, then a plain [M, K] @ [K, N] product."""
  if x2.shape[1] <= g2.shape[1]:
    return jnp.dot(x2.T, g2)
  return jnp.dot(g2.T, x2).T


def kernel_grad_plain(x2, g2):
  """x2^T g2 as autodiff writes it (a contraction over N): every platform but the CPU."""
  return jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))


def _dense_matmul_bwd(res, g):
  x, kernel = res
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  d_kernel = jax.lax.platform_dependent(x2, g2, cpu=kernel_grad_cpu, default=kernel_grad_plain)
  return jnp.dot(g, kernel.T), d_kernel


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


class Dense(nn.Module):
  """nn.Dense (kernel [C, D], bias [D], the same initialisation and values) through
  `dense_matmul`: the MLPs' layers, where a training step spends most of its time."""
  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Callable = trunc_normal

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return dense_matmul(x, kernel) + bias


class PatchConv(nn.Module):
  """A k x k, stride-s conv with explicit padding: nn.Conv's parameters (kernel
  [k, k, C, D], bias [D]) and values. On CPU it is one matmul over the k*k strided
  slices of the padded input; XLA:CPU runs the convolution's input gradient (a
  base-dilated convolution) and kernel flip slowly at these sizes (PoolFormer's
  downsampling: BENCHMARKS "The MLPs' weight gradient ..."). Other platforms run the
  convolution."""
  features: int
  kernel_size: int
  stride: int
  pad: int
  dtype: Dtype = jnp.float32
  kernel_init: Callable = trunc_normal

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel_size, self.stride, self.pad
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jax.lax.platform_dependent(
        x, kernel, cpu=functools.partial(conv_as_matmul, stride=s, pad=p),
        default=functools.partial(conv_direct, stride=s, pad=p)) + bias


def conv_as_matmul(x, kernel, *, stride: int, pad: int):
  """NHWC x, HWIO kernel [k, k, C, D]: the conv as one matmul over the k*k strided slices
  of the padded input (PatchConv on CPU)."""
  k, s, p = kernel.shape[0], stride, pad
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  cols = [jax.lax.slice(xp, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                        (1, s, s, 1)) for i in range(k) for j in range(k)]
  return jnp.dot(jnp.concatenate(cols, axis=-1), kernel.reshape(k * k * c, -1))


def conv_direct(x, kernel, *, stride: int, pad: int):
  """The same conv as XLA's convolution (PatchConv on every platform but the CPU)."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


REMAT_POLICIES = ("", "block", "dots")


def remat_block(block_cls, remat: str):
  """`block_cls` itself, or wrapped in `nn.remat` so its activations are
  recomputed in the backward pass instead of kept (memory for time).

  "block": keep only each block's input; "dots": also keep the outputs of the
  weight matmuls (jax's dots_with_no_batch_dims_saveable), recompute norms,
  GELU and attention. Parameter names and values are unchanged. The block is
  called as `block(x, train)` (train positional: it is static for remat).

  Meant for accelerators: XLA's CPU compiler undoes it, so on CPU leave it
  off (BENCHMARKS.md has the memory it saves).
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {REMAT_POLICIES} ('' = off), got {remat!r}")
  if not remat:
    return block_cls
  policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "dots" else None
  return nn.remat(block_cls, static_argnums=(2,), policy=policy)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
  """timm's stochastic-depth rule: 0 at the first block, `drop_path_rate` at
  the last, linear in between (`calculate_drop_path_rates`).

  Computed as torch.linspace does in float32 (each half stepped from its own
  end), so that the rates equal timm's bit for bit for ViT-B's 12 blocks; for
  depths above 16 torch's vectorised loop can differ in the last bit.
  """
  if depth == 1:
    return [0.0]
  f32 = np.float32
  end = f32(drop_path_rate)
  step = end / f32(depth - 1)
  return [float(step * f32(i) if i < depth // 2 else end - step * f32(depth - 1 - i))
          for i in range(depth)]


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
    x = Dense(self.hidden_features, dtype=self.dtype, name="fc1")(x)
    x = gelu(x)
    x = nn.Dropout(self.drop, deterministic=not train)(x)
    x = Dense(out, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.drop, deterministic=not train)(x)


def layer_norm(epsilon: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """torch's LayerNorm: two-pass variance, as torch computes it (the one-pass
  E[x^2]-E[x]^2 form loses digits on pretrained ViTs' large activations).
  Flax keeps the statistics in float32 under a bf16 dtype. timm's ViT uses
  eps 1e-6, torch's default (Swin) is 1e-5."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False, name=name)


class LayerScale(nn.Module):
  """A learned per-channel gain on a residual branch: timm's `LayerScale`
  (ViT, weight `gamma`) and MetaFormer's `Scale` (PoolFormer, weight `scale`).
  `weight_name` keeps each family's timm name, so the converters stay renamings."""
  init_value: float = 1e-5
  weight_name: str = "gamma"

  @nn.compact
  def __call__(self, x):
    gain = self.param(self.weight_name, nn.initializers.constant(self.init_value),
                      (x.shape[-1],), jnp.float32)
    return x * gain.astype(x.dtype)


class PatchEmbed(nn.Module):
  """timm's `PatchEmbed`: a patch_size x patch_size conv with stride
  patch_size (`proj`), then tokens [B, patches, dim] (`flatten`, ViT) or the
  NHWC map (Swin), then an optional LayerNorm (`norm`, Swin: eps 1e-5)."""
  patch_size: int
  embed_dim: int
  flatten: bool = True
  norm_eps: Optional[float] = None  # None: no norm (timm's norm_layer=None)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, name="proj")(x)
    if self.flatten:
      x = x.reshape(x.shape[0], -1, x.shape[-1])  # row-major = torch flatten(2)
    if self.norm_eps is not None:
      x = layer_norm(self.norm_eps, self.dtype, "norm")(x)
    return x


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
