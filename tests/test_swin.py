"""Swin-B port: Flax logits equal timm's, the converter is timm's loader.

References are independent of the code under test: timm 1.0.31 modules
(`SwinTransformer`, its blocks' window/shift/mask buffers) and its swin
`checkpoint_filter_fn` / `resize_rel_pos_bias_table`. Swin-B runs at batch 1;
the mechanics (odd and padded feature maps, window clamping, bias-table
resizing, drop path, gradients) run on the tiny `swin_test` architecture
through timm's `SwinTransformer` class with the same hyper-parameters.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.layers import resize_rel_pos_bias_table
from timm.models import swin_transformer as timm_swin

from parity import TOL, images, rel_err, timm_logits, torch_sd
from mer_jax.models import create_model, swin
from mer_jax.models import convert
from mer_jax.models.convert import ConversionError, from_timm

# timm's RegularGridInterpolator (bias-table resizing) warns about torch idioms.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(searchsorted|non-tuple sequence).*:UserWarning")
TEST = swin.ARCHS["swin_test"]


def randomise(model, seed):
  """Noise on the parameters timm initialises to constants (norms, biases) and
  on the bias tables, so that every parameter matters to the logits."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 or "relative_position_bias_table" in name:
        p.add_(torch.randn_like(p) * 0.02)
  return model.eval()


def timm_tiny(img_size, window_size, num_classes=7, in_chans=3, seed=0):
  """timm's SwinTransformer with the `swin_test` hyper-parameters."""
  torch.manual_seed(seed)
  m = timm_swin.SwinTransformer(
      img_size=img_size, in_chans=in_chans, num_classes=num_classes,
      embed_dim=TEST.embed_dim, depths=TEST.depths, num_heads=TEST.num_heads,
      window_size=window_size)
  return randomise(m, seed + 1)


def tiny_variables(sd, img_size, window_size, in_chans=3, num_classes=7, seed=0):
  params = convert._swin_params(convert.StateDict(sd), TEST, img_size=img_size,
                                in_chans=in_chans, num_classes=num_classes, seed=seed,
                                window_size=window_size)
  return {"params": params}


def tiny_model(img_size, window_size, **kw):
  return swin.create("swin_test", img_size=img_size, window_size=window_size, **kw)


@pytest.fixture(scope="module")
def b224():
  """Randomly initialised timm Swin-B 224 (7 classes) and its state dict."""
  torch.manual_seed(0)
  tm = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=7)
  tm = randomise(tm, 1)
  return tm, torch_sd(tm)


@pytest.fixture(scope="module")
def b224_variables(b224):
  return from_timm("swin_b", b224[1], img_size=224, in_chans=3)


# --- Swin-B ---------------------------------------------------------------


def test_swin_b_224_matches_timm(b224, b224_variables):
  x = images(1, 224, 3, seed=2)
  out = jax.jit(create_model("swin_b", img_size=224).apply)(b224_variables, x)
  assert out.shape == (1, 7) and out.dtype == jnp.float32
  err = rel_err(out, timm_logits(b224[0], x))
  print(f"swin_b 224 rgb rel err {err:.2e}")
  assert err < TOL


def test_swin_b_224_gray_matches_timm_on_repeated_gray(b224):
  """in_chans=1 sums the RGB kernel (timm's adapt_input_conv): a gray image
  gives timm's RGB logits on that image repeated to three channels, and timm's
  own 1-channel model with the same weights."""
  v = from_timm("swin_b", b224[1], img_size=224, in_chans=1)
  assert v["params"]["patch_embed"]["proj"]["kernel"].shape == (4, 4, 1, 128)
  x = images(1, 224, 1, seed=3)
  out = jax.jit(create_model("swin_b", img_size=224, in_chans=1).apply)(v, x)
  err = rel_err(out, timm_logits(b224[0], np.repeat(x, 3, axis=-1)))
  tm1 = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=7,
                          in_chans=1).eval()
  sd1 = {k: torch.from_numpy(w) for k, w in b224[1].items()}
  sd1["patch_embed.proj.weight"] = timm.models.adapt_input_conv(1, sd1["patch_embed.proj.weight"])
  tm1.load_state_dict(sd1)
  err1 = rel_err(out, timm_logits(tm1, x))
  print(f"swin_b 224 gray rel err {err:.2e} (repeated), {err1:.2e} (timm in_chans=1)")
  assert err < TOL and err1 < TOL


def test_swin_b_layout_buffers_and_drop_path_match_timm(b224):
  tm = b224[0]
  for size, window in ((224, 7), (384, 12)):
    assert swin.default_window_size(size) == window
  layouts = swin.stage_layouts(224, 4, 4, 7)
  assert [(l.resolution, l.window, l.shift) for l in layouts] == \
      [(56, 7, 3), (28, 7, 3), (14, 7, 3), (7, 7, 0)]
  assert [(l.resolution, l.window, l.shift) for l in swin.stage_layouts(384, 4, 4, 12)] == \
      [(96, 12, 6), (48, 12, 6), (24, 12, 6), (12, 12, 0)]
  for i, (stage, layout) in enumerate(zip(tm.layers, layouts)):
    for j, block in enumerate(stage.blocks):
      assert block.window_size == (layout.window,) * 2
      assert block.shift_size == ((layout.shift if j % 2 else 0),) * 2
    block = stage.blocks[1]
    np.testing.assert_array_equal(swin.relative_position_index(layout.window),
                                  block.attn.relative_position_index.numpy())
    if layout.shift:
      np.testing.assert_array_equal(swin.attention_mask(layout.resolution, layout.window,
                                                        layout.shift),
                                    block.attn_mask.numpy())
    else:
      assert block.attn_mask is None
  tm_dp = timm.create_model("swin_base_patch4_window7_224", pretrained=False,
                            drop_path_rate=0.2)
  rates = [0.0 if isinstance(b.drop_path1, torch.nn.Identity) else b.drop_path1.drop_prob
           for s in tm_dp.layers for b in s.blocks]
  from mer_jax.models.vit import drop_path_rates
  np.testing.assert_allclose(drop_path_rates(0.2, 24), rates, rtol=1e-6, atol=1e-9)


def test_head_reinitialised_for_1000_class_checkpoint(b224, b224_variables):
  sd = dict(b224[1])
  rng = np.random.RandomState(0)
  sd["head.fc.weight"] = rng.randn(1000, 1024).astype(np.float32)
  sd["head.fc.bias"] = rng.randn(1000).astype(np.float32)
  v = from_timm("swin_b", sd, img_size=224, seed=0)["params"]
  head = v["head"]
  assert head["kernel"].shape == (1024, 7) and head["bias"].shape == (7,)
  assert np.all(head["bias"] == 0) and 0.01 < np.std(head["kernel"]) < 0.03
  np.testing.assert_array_equal(
      head["kernel"], from_timm("swin_b", sd, img_size=224, seed=0)["params"]["head"]["kernel"])
  assert not np.array_equal(
      head["kernel"], from_timm("swin_b", sd, img_size=224, seed=1)["params"]["head"]["kernel"])
  ref = dict(b224_variables["params"])
  rest = {k: x for k, x in v.items() if k != "head"}
  del ref["head"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, rest, ref)
  # 1000 classes wanted: the checkpoint head is used as is.
  v1000 = from_timm("swin_b", sd, img_size=224, num_classes=1000)["params"]
  np.testing.assert_array_equal(v1000["head"]["kernel"], sd["head.fc.weight"].T)
  # num_classes=0: headless, the head tensors are not "left over".
  assert "head" not in from_timm("swin_b", sd, img_size=224, num_classes=0)["params"]


def test_leftover_missing_and_misshapen_keys_raise(b224):
  sd = dict(b224[1])
  with pytest.raises(ConversionError, match="extra.weight"):
    from_timm("swin_b", {**sd, "extra.weight": np.zeros(3, np.float32)})
  missing = {k: x for k, x in sd.items() if k != "layers.2.blocks.7.mlp.fc1.bias"}
  with pytest.raises(ConversionError, match=re.escape("layers.2.blocks.7.mlp.fc1.bias")):
    from_timm("swin_b", missing)
  bad = {**sd, "layers.1.downsample.reduction.weight": np.zeros((256, 511), np.float32)}
  with pytest.raises(ConversionError, match=re.escape("layers.1.downsample.reduction.weight")):
    from_timm("swin_b", bad)
  bad = {**sd, "layers.3.blocks.0.attn.relative_position_bias_table":
         np.zeros((170, 32), np.float32)}
  with pytest.raises(ConversionError, match="layers.3.blocks.0.attn.relative_position_bias_table"):
    from_timm("swin_b", bad)
  # timm's non-persistent buffers, present in some checkpoints, are recomputed.
  buffers = {"layers.0.blocks.1.attn_mask": np.zeros((64, 49, 49), np.float32),
             "layers.0.blocks.1.attn.relative_position_index": np.zeros((49, 49), np.int64)}
  from_timm("swin_b", {**sd, **buffers})


def test_create_errors():
  with pytest.raises(ValueError, match="swin_test"):
    swin.create("swin_x")
  with pytest.raises(ValueError, match="patch size"):
    create_model("swin_b", img_size=226)
  with pytest.raises(ValueError, match="64, 64, 3"):
    tiny_model(64, 7).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


# --- mechanics on the tiny architecture --------------------------------------------


@pytest.mark.parametrize("size,window", [(224, 7), (128, 7), (64, 7), (52, 7), (36, 7),
                                         (96, 12)])
def test_tiny_matches_timm_at_several_sizes(size, window):
  """Padded windows (64: 16x16 maps, window 7), shifted padded windows (128),
  odd maps through PatchMerging (52, 36) and clamped windows (all but 224)."""
  tm = timm_tiny(size, window, seed=size)
  v = tiny_variables(torch_sd(tm), size, window)
  x = images(2, size, 3, seed=size)
  out = jax.jit(tiny_model(size, window).apply)(v, x)
  err = rel_err(out, timm_logits(tm, x))
  print(f"swin_test {size}/{window} rel err {err:.2e}")
  assert err < TOL


@pytest.mark.parametrize("src,dst", [(7, 12), (12, 7), (7, 4)])
def test_bias_table_resize_is_timms(src, dst):
  table = np.random.RandomState(src * dst).randn((2 * src - 1) ** 2, 4).astype(np.float32)
  ours = convert._swin_resize_rel_pos_bias_table(table, dst, "t")
  ref = resize_rel_pos_bias_table(torch.from_numpy(table), new_window_size=(dst, dst),
                                  new_bias_shape=((2 * dst - 1) ** 2, 4)).numpy()
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_224_checkpoint_in_384_model_matches_timms_loader():
  """A window-7 checkpoint in a window-12 model: the bias tables are resized as
  timm's swin `checkpoint_filter_fn` does (BEiT's geometric grid)."""
  tm224 = timm_tiny(224, 7, seed=5)
  sd = torch_sd(tm224)
  tm384 = timm_tiny(384, 12, seed=6)
  filtered = timm_swin.checkpoint_filter_fn(tm224.state_dict(), tm384)
  tm384.load_state_dict(filtered)
  v = tiny_variables(sd, 384, 12)
  for i, stage in enumerate(tm384.layers):
    for j, block in enumerate(stage.blocks):
      np.testing.assert_allclose(
          v["params"][f"layers_{i}"][f"blocks_{j}"]["attn"]["relative_position_bias_table"],
          block.attn.relative_position_bias_table.detach().numpy(), rtol=1e-6, atol=1e-6)
  x = images(1, 384, 3, seed=7)
  err = rel_err(jax.jit(tiny_model(384, 12).apply)(v, x), timm_logits(tm384, x))
  print(f"swin_test 224->384 checkpoint rel err {err:.2e}")
  assert err < TOL


def test_original_microsoft_names_are_renamed_as_timm_does():
  """Microsoft checkpoints downsample at the end of a stage and name the head `head`."""
  tm = timm_tiny(64, 7)
  sd = torch_sd(tm)
  old = {}
  for k, w in sd.items():
    k = re.sub(r"layers\.(\d+)\.downsample",
               lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
    old[k.replace("head.fc.", "head.")] = w
  assert "layers.0.downsample.reduction.weight" in old
  jax.tree_util.tree_map(np.testing.assert_array_equal, tiny_variables(old, 64, 7),
                         tiny_variables(sd, 64, 7))


def test_drop_path_is_random_in_training_and_gradients_reach_every_parameter():
  tm = timm_tiny(64, 7)
  v = tiny_variables(torch_sd(tm), 64, 7)
  m = tiny_model(64, 7, drop_path_rate=0.3, drop_rate=0.1)
  x = images(4, 64, 3, seed=9)
  # eval mode is deterministic and equals timm's (drop path and dropout off)
  assert rel_err(jax.jit(m.apply)(v, x), timm_logits(tm, x)) < TOL

  def loss(params, r):
    out = m.apply({"params": params}, x, train=True, rngs={"dropout": r})
    return jnp.sum(out ** 2), out

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, a), grads = step(v["params"], jax.random.PRNGKey(0))
  (_, b), _ = step(v["params"], jax.random.PRNGKey(1))
  (_, a2), _ = step(v["params"], jax.random.PRNGKey(0))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == len(jax.tree_util.tree_leaves(v["params"]))
  dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
  assert not dead, dead


def test_bf16_runs_and_is_close(b224, b224_variables):
  x = images(1, 224, 3, seed=11)
  out = jax.jit(create_model("swin_b", img_size=224, dtype=jnp.bfloat16).apply)(
      b224_variables, x)
  assert out.dtype == jnp.float32
  assert jax.tree_util.tree_leaves(b224_variables)[0].dtype == np.float32
  err = rel_err(out, timm_logits(b224[0], x))
  print(f"swin_b 224 bf16 rel err {err:.2e}")
  assert err < 3e-2


# --- slow -------------------------------------------------------------------------


@pytest.mark.slow
def test_swin_b_384_matches_timm():
  torch.manual_seed(0)
  tm = timm.create_model("swin_base_patch4_window12_384", pretrained=False, num_classes=7)
  tm = randomise(tm, 2)
  v = from_timm("swin_b", torch_sd(tm), img_size=384)
  x = images(1, 384, 3, seed=12)
  out = jax.jit(create_model("swin_b", img_size=384).apply)(v, x)
  err = rel_err(out, timm_logits(tm, x))
  print(f"swin_b 384 rel err {err:.2e}")
  assert err < TOL
