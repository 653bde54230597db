"""Shared layers against torch: the exact GELU every family's MLP uses."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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


# --- remat: same parameters, same numbers, less kept for the backward pass ---

def _remat_cases():
  from mer_jax.models import poolformer, swin, vit
  return {
      "vit": (lambda r: vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                              num_heads=2, num_classes=7, init_values=0.5,
                                              drop_path_rate=0.3, remat=r), 32),
      # Two stages: shifted windows in the first, a patch merging before the second.
      "swin": (lambda r: swin.SwinTransformer(img_size=32, embed_dim=16, depths=(2, 2),
                                              num_heads=(1, 2), window_size=4, num_classes=7,
                                              drop_path_rate=0.3, remat=r), 32),
      "poolformer": (lambda r: poolformer.PoolFormer(depths=(1, 1, 1, 1), dims=(8, 16, 16, 24),
                                                     layer_scale_init=0.5, num_classes=7,
                                                     drop_path_rate=0.3, remat=r), 32),
  }


def _residual_bytes(loss, params):
  # What the backward pass keeps from the forward one (device-independent: the jaxpr).
  from jax._src.ad_checkpoint import saved_residuals
  return sum(np.prod(a.shape) * a.dtype.itemsize for a, why in saved_residuals(loss, params)
             if "from the argument" not in why)


@functools.lru_cache(maxsize=None)
def _remat_reference(family):
  make, size = _remat_cases()[family]
  x = jnp.asarray(np.random.RandomState(1).randn(2, size, size, 3).astype(np.float32))
  params = jax.jit(make("").init)(jax.random.PRNGKey(0), x)["params"]
  loss = _train_loss(make(""), x)
  return x, params, jax.jit(jax.value_and_grad(loss))(params), _residual_bytes(loss, params)


def _train_loss(model, x):
  y = jnp.arange(x.shape[0]) % 7
  def loss(p):
    # train=True with drop path: the recomputed blocks must draw the same masks.
    logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss


# Both policies on one family (the policy lives in layers.remat_block); one per
# other family checks that the family passes `remat` to its blocks.
@pytest.mark.parametrize("family, remat", [("vit", "block"), ("vit", "dots"),
                                           ("swin", "block"), ("poolformer", "dots")])
def test_remat_keeps_params_and_gradients_and_saves_less(family, remat):
  x, params, (ref_loss, ref_grads), ref_bytes = _remat_reference(family)
  model = _remat_cases()[family][0](remat)
  # Same tree, names and shapes: checkpoints and converted weights work either way.
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x)["params"])
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)
  loss = _train_loss(model, x)
  assert _residual_bytes(loss, params) < 0.8 * ref_bytes
  got_loss, got_grads = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                          jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_remat_rejects_unknown_policy():
  from mer_jax.models import create_model
  with pytest.raises(ValueError, match="remat must be one of"):
    create_model("poolformer_s12", remat="full").init(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, 32, 32, 3)))
