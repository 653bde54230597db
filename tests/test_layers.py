"""Shared layers against torch: the exact GELU every family's MLP uses."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from mer_jax.models.layers import gelu


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
  # And the erfc-based jax.nn.gelu, the same function.
  other = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False), np.float64)
  assert np.abs(got - other).max() < 3e-6


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
