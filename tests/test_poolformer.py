"""PoolFormer specifics: the pooling mixer, any input size, the original
sail-sg checkpoint names. What every family satisfies is in test_models.

References: timm 1.0.31's MetaFormer (through `parity.tiny_timm`, randomised)
and its metaformer `checkpoint_filter_fn`; torch's AvgPool2d.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.models.metaformer import checkpoint_filter_fn

from parity import TOL, images, rel_err, timm_logits, tiny_timm, torch_sd
from tiny import TINY
from mer_jax.models import poolformer

NAME = TINY["poolformer"][0]


def test_pool_mixer_excludes_padding():
  x = np.random.RandomState(0).randn(2, 5, 6, 3).astype(np.float32)
  ref = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)(
      torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy() - x
  np.testing.assert_allclose(np.asarray(poolformer.pool_mixer(jnp.asarray(x))), ref, atol=1e-6)


def test_any_input_size_matches_timm():
  """Fully convolutional: one set of parameters serves every size, odd ones
  included (97 px: maps 25, 13, 7, 4)."""
  tm = tiny_timm("poolformer")
  v = {"params": poolformer.convert_timm(NAME, torch_sd(tm))}
  x = images(2, 97, 3, seed=1)
  out = jax.jit(poolformer.create(NAME, img_size=97).apply)(v, x)
  assert rel_err(out, timm_logits(tm, x)) < TOL


def test_original_sail_checkpoint_names():
  """The sail-sg release names map to timm's exactly as timm's filter does."""
  tm = tiny_timm("poolformer")
  sd = torch_sd(tm)
  original = {}  # the original layout, by inverting timm's renaming
  for k, w in sd.items():
    o = k.replace("stem.conv", "patch_embed.proj")
    o = o.replace("head.norm", "norm").replace("head.fc", "head")
    for i, (net, down) in enumerate([(0, None), (2, 1), (4, 3), (6, 5)]):
      o = o.replace(f"stages.{i}.blocks.", f"network.{net}.")
      if down is not None:
        o = o.replace(f"stages.{i}.downsample.conv", f"network.{down}.proj")
    o = o.replace("layer_scale1.scale", "layer_scale_1").replace("layer_scale2.scale",
                                                                 "layer_scale_2")
    original[o] = w
  assert "network.0.0.mlp.fc1.weight" in original
  ours = poolformer.original_to_timm(original)
  theirs = checkpoint_filter_fn({k: torch.from_numpy(w) for k, w in original.items()}, tm)
  assert sorted(ours) == sorted(theirs) == sorted(sd)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         poolformer.convert_timm(NAME, original),
                         poolformer.convert_timm(NAME, sd))


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="poolformer_m36"):
    poolformer.create("poolformer_m99")
