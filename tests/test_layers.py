"""Shared layers against torch and timm: the exact GELU every family's MLP
uses, stochastic depth (rates and per-sample dropping), the head dropout,
the remat policies (what remat keeps of each family: test_models), and the layers
whose CPU backward is hand-shaped (Dense, PatchConv, PoolFormer's pool mixer): values and
gradients against torch's autograd."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.layers import calculate_drop_path_rates

from mer_jax.models import create_model
from mer_jax.models.layers import (Dense, DropPath, PatchConv, classifier, conv_as_matmul,
                                   conv_direct, drop_path_rates, gelu, kernel_grad_cpu,
                                   kernel_grad_plain)
from mer_jax.models.poolformer import pool_mixer


def _grid():
  # Both tails (where erf saturates) and the centre, plus random values.
  x = np.concatenate([np.linspace(-12, 12, 2001), np.random.RandomState(0).randn(5000) * 3])
  return x.astype(np.float32)


def test_gelu_matches_torch_exact_gelu():
  x = _grid()
  got = np.asarray(jax.jit(gelu)(jnp.asarray(x)), np.float64)
  ref64 = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64))).numpy()
  ref32 = torch.nn.functional.gelu(torch.from_numpy(x)).numpy().astype(np.float64)
  # float32 rounding of torch's own formula: absolute error at the float32 level.
  assert np.abs(got - ref64).max() < 3e-6
  assert np.abs(got - ref32).max() < 3e-6


def test_gelu_gradient_matches_torch():
  x = _grid()
  got = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(gelu(v))))(jnp.asarray(x)), np.float64)
  t = torch.from_numpy(x.astype(np.float64)).requires_grad_()
  torch.nn.functional.gelu(t).sum().backward()
  assert np.abs(got - t.grad.numpy()).max() < 1e-5


def test_gelu_keeps_bfloat16():
  x = jnp.asarray(_grid()[:100], jnp.bfloat16)
  y = gelu(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(gelu(x.astype(jnp.float32))), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("depth", [12, 24, 36, 48])
def test_drop_path_rates_are_timms(depth):
  want = calculate_drop_path_rates(0.1, depth)
  got = drop_path_rates(0.1, depth)
  if depth == 12:  # ViT-B's blocks: bit-exact
    assert got == want
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
  assert drop_path_rates(0.3, 1) == [0.0]


def test_drop_path_drops_whole_samples():
  """Each sample's branch is kept, scaled by 1/(1-rate), or dropped as a
  whole; off outside training."""
  x = jnp.ones((256, 5, 3))
  layer = DropPath(0.25)
  out = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}))
  per_sample = np.unique(out.reshape(256, -1), axis=1)
  assert per_sample.shape == (256, 1)  # one value per sample
  dropped = per_sample == 0
  np.testing.assert_allclose(per_sample[~dropped], 1 / 0.75, rtol=1e-6)
  assert 0.15 < dropped.mean() < 0.35
  np.testing.assert_array_equal(layer.apply({}, x, train=False), x)


def test_head_dropout_acts_on_the_pooled_features_only():
  """timm's drop_rate: dropout on the pooled features before the head (each
  feature 0 or 1/(1-rate) times itself), nothing in eval mode."""
  class Head(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return classifier(x, 0, 0.5, train, jnp.float32)
  x = jnp.asarray(np.random.RandomState(0).rand(64, 16).astype(np.float32) + 0.5)
  out = np.asarray(Head().apply({}, x, True, rngs={"dropout": jax.random.PRNGKey(0)}))
  kept = out != 0
  assert 0.35 < kept.mean() < 0.65
  np.testing.assert_allclose(out[kept], 2 * np.asarray(x)[kept], rtol=1e-6)
  np.testing.assert_array_equal(Head().apply({}, x, False), x)


def test_remat_rejects_unknown_policy():
  with pytest.raises(ValueError, match="remat must be one of"):
    model = create_model("poolformer_s12", remat="full")
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))


# --- layers with a CPU-shaped backward, against torch's autograd ------------------------


def _value_and_grads(f, args, cotangent):
  y, vjp = jax.vjp(f, *args)
  return np.asarray(y), [np.asarray(g) for g in vjp(jnp.asarray(cotangent))]


def _torch_value_and_grads(f, args, cotangent):
  ts = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
  y = f(*ts)
  y.backward(torch.tensor(cotangent))
  return y.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("c_in,c_out", [(64, 256), (256, 64)])   # either operand narrower
def test_dense_values_and_gradients_match_torch_linear(c_in, c_out):
  rng = np.random.RandomState(0)
  x = rng.randn(2, 5, 7, c_in).astype(np.float32)
  layer = Dense(c_out)
  params = layer.init(jax.random.PRNGKey(0), x)["params"]
  assert jax.tree.map(np.shape, params) == \
      jax.tree.map(np.shape, nn.Dense(c_out).init(jax.random.PRNGKey(0), x)["params"])
  kernel = np.asarray(params["kernel"])
  bias = rng.randn(c_out).astype(np.float32)
  cot = rng.randn(2, 5, 7, c_out).astype(np.float32)
  y, (dx, dk, db) = _value_and_grads(
      lambda x, k, b: layer.apply({"params": {"kernel": k, "bias": b}}, x), (x, kernel, bias), cot)
  ty, (tdx, tw, tb) = _torch_value_and_grads(
      lambda x, w, b: torch.nn.functional.linear(x, w, b), (x, kernel.T.copy(), bias), cot)
  np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, tw.T, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(db, tb, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("branch", [kernel_grad_cpu, kernel_grad_plain])
@pytest.mark.parametrize("c_in,c_out", [(64, 256), (256, 64)])
def test_both_platforms_weight_gradients_are_x_transposed_g(branch, c_in, c_out):
  """Dense's weight gradient, the CPU form and the other platforms' (which this CPU never
  runs inside the layer), against float64 numpy."""
  rng = np.random.RandomState(3)
  x, g = rng.randn(70, c_in).astype(np.float32), rng.randn(70, c_out).astype(np.float32)
  np.testing.assert_allclose(np.asarray(jax.jit(branch)(x, g)),
                             x.astype(np.float64).T @ g.astype(np.float64), rtol=1e-5, atol=1e-4)


def _patch_conv_layer(layer):
  return lambda x, w, b: layer.apply({"params": {"kernel": w, "bias": b}}, x)


def _conv_branch(branch, s, p):
  return lambda x, w, b: branch(x, w, stride=s, pad=p) + b


@pytest.mark.parametrize("form", ["layer", "cpu", "other platforms"])
@pytest.mark.parametrize("k,s,p,size", [(3, 2, 1, 9), (3, 2, 1, 8), (7, 4, 2, 16)])
def test_patch_conv_values_and_gradients_match_torch_conv2d(k, s, p, size, form):
  """The layer as this platform runs it, and each of its two forms by itself."""
  rng = np.random.RandomState(1)
  x = rng.randn(2, size, size, 5).astype(np.float32)
  layer = PatchConv(6, k, s, p)
  params = layer.init(jax.random.PRNGKey(0), x)["params"]
  kernel, bias = np.asarray(params["kernel"]), rng.randn(6).astype(np.float32)
  out = (size + 2 * p - k) // s + 1
  cot = rng.randn(2, out, out, 6).astype(np.float32)
  f = {"layer": _patch_conv_layer(layer), "cpu": _conv_branch(conv_as_matmul, s, p),
       "other platforms": _conv_branch(conv_direct, s, p)}[form]
  y, (dx, dk, db) = _value_and_grads(f, (x, kernel, bias), cot)

  def conv(x, w, b):   # NHWC / HWIO in and out, as the Flax layer
    y = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), b, stride=s,
                                   padding=p)
    return y.permute(0, 2, 3, 1)
  ty, (tdx, tdk, tdb) = _torch_value_and_grads(conv, (x, kernel, bias), cot)
  assert y.shape == ty.shape
  np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, tdk, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(db, tdb, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("size", [1, 2, 7])
def test_pool_mixer_values_and_gradients_match_torch_avg_pool(size):
  rng = np.random.RandomState(2)
  x = rng.randn(2, size, size + 1, 4).astype(np.float32)
  cot = rng.randn(*x.shape).astype(np.float32)
  y, (dx,) = _value_and_grads(pool_mixer, (x,), cot)

  def mixer(x):   # timm's Pooling: avg_pool2d(3, 1, 1, count_include_pad=False) - x
    t = x.permute(0, 3, 1, 2)
    return (torch.nn.functional.avg_pool2d(t, 3, 1, 1, count_include_pad=False) - t
            ).permute(0, 2, 3, 1)
  ty, (tdx,) = _torch_value_and_grads(mixer, (x,), cot)
  np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-5)
