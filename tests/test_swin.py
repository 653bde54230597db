"""Swin-B specifics: windows, shifts and padding at every map size, and the
bias tables of a checkpoint for another window. What every family satisfies
is in test_models.

References are independent of the code under test: timm 1.0.31's
`SwinTransformer` (its blocks' window/shift/mask buffers), its swin
`checkpoint_filter_fn` and `resize_rel_pos_bias_table`. The cases run on the
tiny Swin of `parity` through timm's class with the same hyper-parameters.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.layers import resize_rel_pos_bias_table
from timm.models import swin_transformer as timm_swin

from parity import TOL, images, rel_err, timm_logits, tiny_timm, torch_sd
from tiny import TINY
from mer_jax.models import create_model, resample, swin

# timm's RegularGridInterpolator (bias-table resizing) warns about torch idioms.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(searchsorted|non-tuple sequence).*:UserWarning")
NAME = TINY["swin"][0]


def variables(tm, img_size, window_size, **kw):
  return {"params": swin.convert_timm(NAME, torch_sd(tm), img_size=img_size,
                                      window_size=window_size, **kw)}


def logits(v, img_size, window_size, x):
  return jax.jit(swin.create(NAME, img_size=img_size, window_size=window_size).apply)(v, x)


def test_layouts_and_buffers_are_timms():
  """Per stage: map size, window (clamped to the map) and shift of every
  block, the relative position index and the shifted-window mask, as timm's
  blocks hold them, at Swin-B's two configurations (224/7, 384/12)."""
  for size, window in ((224, 7), (384, 12)):
    tm = timm_swin.SwinTransformer(img_size=size, window_size=window, embed_dim=8,
                                   depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1))
    layouts = swin.stage_layouts(size, 4, 4, window)
    for stage, layout in zip(tm.layers, layouts):
      for j, block in enumerate(stage.blocks):
        assert block.window_size == (layout.window,) * 2
        assert block.shift_size == ((layout.shift if j % 2 else 0),) * 2
      block = stage.blocks[1]
      np.testing.assert_array_equal(swin.relative_position_index(layout.window),
                                    block.attn.relative_position_index.numpy())
      if layout.shift:
        np.testing.assert_array_equal(
            swin.attention_mask(layout.resolution, layout.window, layout.shift),
            block.attn_mask.numpy())
      else:
        assert block.attn_mask is None
    assert layouts[-1].shift == 0  # the last stage fits one window: no shift


def test_odd_maps_and_maps_that_do_not_fit_the_window_match_timm():
  """36 px: a 9x9 map in shifted windows padded to 14, then an odd map through
  PatchMerging (9 -> 5) into a window clamped to it. (32 px in test_models:
  8 -> 4; below, 24 -> 12 in window 12, the map equal to the window.)"""
  size, window = 36, 7
  tm = tiny_timm("swin", img_size=size, window_size=window, seed=size)
  x = images(2, size, 3, seed=size)
  out = logits(variables(tm, size, window), size, window, x)
  assert rel_err(out, timm_logits(tm, x)) < TOL


@pytest.mark.parametrize("src,dst", [(7, 12), (12, 7), (7, 4)])
def test_bias_table_resize_is_timms(src, dst):
  table = np.random.RandomState(src * dst).randn((2 * src - 1) ** 2, 4).astype(np.float32)
  ours = resample.resize_rel_pos_bias_table(table, dst)
  ref = resize_rel_pos_bias_table(torch.from_numpy(table), new_window_size=(dst, dst),
                                  new_bias_shape=((2 * dst - 1) ** 2, 4)).numpy()
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_window_7_checkpoint_in_window_12_model_matches_timms_loader():
  """Swin-B's 224 checkpoint in its 384 model: the bias tables are resized as
  timm's swin `checkpoint_filter_fn` does (BEiT's geometric grid). The 96 px
  model has the 384 model's windows: 24x24 maps in shifted 12x12 windows, then
  a 12x12 map in one."""
  tm7 = tiny_timm("swin", img_size=32, window_size=7, seed=5)
  tm12 = tiny_timm("swin", img_size=96, window_size=12, seed=6)
  tm12.load_state_dict(timm_swin.checkpoint_filter_fn(tm7.state_dict(), tm12))
  v = variables(tm7, 96, 12)
  for i, stage in enumerate(tm12.layers):
    for j, block in enumerate(stage.blocks):
      np.testing.assert_allclose(
          v["params"][f"layers_{i}"][f"blocks_{j}"]["attn"]["relative_position_bias_table"],
          block.attn.relative_position_bias_table.detach().numpy(), rtol=1e-6, atol=1e-6)
  x = images(2, 96, 3, seed=7)
  assert rel_err(logits(v, 96, 12, x), timm_logits(tm12, x)) < TOL


def test_original_microsoft_names_and_buffers_are_read_as_timm_does():
  """Microsoft checkpoints downsample at the end of a stage and name the head
  `head`; timm's non-persistent buffers, present in some checkpoints, are
  recomputed by the port and skipped."""
  sd = torch_sd(tiny_timm("swin"))
  old = {}
  for k, w in sd.items():
    k = re.sub(r"layers\.(\d+)\.downsample",
               lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
    old[k.replace("head.fc.", "head.")] = w
  assert "layers.0.downsample.reduction.weight" in old
  old["layers.0.blocks.1.attn_mask"] = np.zeros((4, 49, 49), np.float32)
  old["layers.0.blocks.1.attn.relative_position_index"] = np.zeros((49, 49), np.int64)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         swin.convert_timm(NAME, old, img_size=32),
                         swin.convert_timm(NAME, sd, img_size=32))


def test_create_errors():
  with pytest.raises(ValueError, match="swin_b"):
    swin.create("swin_x")
  with pytest.raises(ValueError, match="patch size"):
    create_model("swin_b", img_size=226)
  with pytest.raises(ValueError, match="window_size"):
    swin.create("swin_b", window_size=0)
  with pytest.raises(ValueError, match="224, 224, 3"):
    jax.eval_shape(lambda: create_model("swin_b").init(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, 384, 384, 3))))
