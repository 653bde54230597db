"""What every model family must satisfy, for every registered model name.

Each family module (vit, swin, poolformer) offers `create` and `convert_timm`;
these tests hold all of them to the same contract against timm 1.0.31:
logits equal timm's (< 1e-4) at 224 and 384 px, RGB and gray, from a
checkpoint converted for that layout; a converted tree is exactly the
model's; the converter names every missing, leftover or misshapen tensor;
gradients reach every parameter; bf16 compute stays close; remat keeps
parameters and gradients. Mechanics run on one tiny architecture per family
(tests/tiny.py), through the same code. Weight files, hub and cache
(`mer_jax.models.weights`) and the `python -m mer_jax.convert` command are
tested at the end. The full model matrix is `slow`.
"""
from __future__ import annotations

import dataclasses
import contextlib
import functools
import io
import re
import os
from typing import Callable

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import print_saved_residuals
import numpy as np
import optax
import pytest
import safetensors.numpy
import timm
import torch

from parity import (FAMILIES, TOL, family_module, images, model_in_chans, rel_err,
                    timm_features, timm_logits, timm_model, timm_name, tiny_timm, torch_sd)
from tiny import TINY, TINY_SIZE
from mer_jax.plumbing import cli
from mer_jax import models
from mer_jax.models import weights
from mer_jax.models.state_dict import ConversionError
from mer_jax.models.swin import SwinArch
from mer_jax.models.vit import ViTArch


# timm's RegularGridInterpolator (Swin bias-table resizing) warns about torch idioms.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(searchsorted|non-tuple sequence).*:UserWarning")

FAMILY_MODEL = {"vit": "vit_b32", "swin": "swin_b", "poolformer": "poolformer_s12"}
# The fast set compiles the two cheap paper models; Swin-B's compile is the
# costliest, its mechanics run on the tiny Swin in the fast set.
FAST = {("vit_b32", 224, 3), ("poolformer_s12", 384, 1)}


def matrix():
  """(name, img_size, in_chans) for every registered model, grouped by
  checkpoint so that the cached timm reference is reused."""
  cases = [(n, s, c) for n in models.MODEL_NAMES for s in (224, 384) for c in (3, 1)]
  return [pytest.param(*case, marks=() if case in FAST else pytest.mark.slow,
                       id=f"{case[0]}-{case[1]}-c{case[2]}") for case in cases]


def reference(name, img_size):
  """A randomised timm model in `name`'s configuration at `img_size` and its
  state dict (PoolFormer's is the same at every size)."""
  return _reference(name, 224 if models.family(name) == "poolformer" else img_size)


@functools.lru_cache(maxsize=3)
def _reference(name, img_size):
  m = timm_model(name, img_size)
  return m, torch_sd(m)


@functools.lru_cache(maxsize=4)
def flax_apply(name, img_size, in_chans, dtype=jnp.float32):
  model = models.create_model(name, img_size=img_size, in_chans=in_chans, dtype=dtype)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


# --- the paper's models: parity with timm in every layout ------------------------


@pytest.mark.parametrize("name, img_size, in_chans", matrix())
def test_logits_match_timm(name, img_size, in_chans):
  """timm's checkpoint for that size, converted for `in_chans` (gray: timm's
  adapt_input_conv sums the RGB kernel, so the reference is timm's RGB model
  on the gray image repeated to three channels)."""
  tm, sd = reference(name, img_size)
  variables = models.from_timm(name, sd, img_size=img_size, in_chans=in_chans)
  x = images(1 if img_size == 384 else 2, img_size, in_chans, seed=img_size + in_chans)
  out = flax_apply(name, img_size, in_chans)(variables, x)
  assert out.shape == (x.shape[0], 7) and out.dtype == jnp.float32
  assert rel_err(out, timm_logits(tm, x)) < TOL


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in FAMILY_MODEL.values() else pytest.mark.slow)
    for n in models.MODEL_NAMES])
def test_converted_tree_is_the_models(name):
  """A 224 checkpoint converted for each layout (384 px, gray, headless) has
  exactly the tree, shapes and dtypes `create_model` initialises. (Shapes
  only: timm's model is built on torch's meta device, its tensors zeros.)"""
  with torch.device("meta"):
    tm = timm.create_model(timm_name(name, 224), pretrained=False, num_classes=7)
  sd = {k: np.zeros(v.shape, np.float32) for k, v in tm.state_dict().items()}
  for img_size, in_chans, num_classes in [(224, 3, 7), (384, 1, 7), (224, 3, 0)]:
    model = models.create_model(name, num_classes=num_classes, img_size=img_size,
                                in_chans=in_chans)
    x = jnp.zeros((1, img_size, img_size, in_chans))
    want = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    got = models.from_timm(name, sd, img_size=img_size, in_chans=in_chans,
                           num_classes=num_classes)
    shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), t)
    assert shapes(got) == shapes(want), (img_size, in_chans, num_classes)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_bf16_compute_is_close(name):
  tm, sd = reference(name, 224)
  variables = models.from_timm(name, sd)
  x = images(1, 224, 3, seed=9)
  out = flax_apply(name, 224, 3, jnp.bfloat16)(variables, x)
  assert out.dtype == jnp.float32
  assert 1e-4 < rel_err(out, timm_logits(tm, x)) < 5e-2  # really bf16, still the same function


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="poolformer_m36"):
    models.create_model("poolformer_m99")
  with pytest.raises(ValueError, match="swin_b"):
    models.from_timm("swin_x", {})
  for family in FAMILIES:
    with pytest.raises(ValueError, match=FAMILY_MODEL[family]):
      family_module(family).convert_timm("nope", {})


# --- the converter ------------------------------------------------------------------


def tiny(family):
  """(family module, name) of the family's registered tiny architecture."""
  return family_module(family), TINY[family][0]


def tiny_variables(family, tm, img_size=TINY_SIZE, **kw):
  module, name = tiny(family)
  return {"params": module.convert_timm(name, torch_sd(tm), img_size=img_size, **kw)}


def tiny_model(family, img_size=TINY_SIZE, **kw):
  module, name = tiny(family)
  return module.create(name, img_size=img_size, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_channel_checkpoint_loads_as_is(family):
  tm = tiny_timm(family, in_chans=1, seed=4)
  assert model_in_chans(tm) == 1
  v = tiny_variables(family, tm, in_chans=1)
  x = images(2, TINY_SIZE, 1, seed=5)
  assert rel_err(jit_apply(tiny_model(family, in_chans=1))(v, x), timm_logits(tm, x)) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_head_of_another_size_is_reinitialised_as_timm_does(family):
  sd = torch_sd(tiny_timm(family, num_classes=1000, seed=7))
  module, name = tiny(family)
  convert_ = lambda **kw: module.convert_timm(name, sd, img_size=TINY_SIZE, **kw)
  v0, v0b, v1 = convert_(seed=0), convert_(seed=0), convert_(seed=1)
  head = v0["head"]
  dim = head["kernel"].shape[0]
  assert head["kernel"].shape == (dim, 7) and head["bias"].shape == (7,)
  np.testing.assert_array_equal(head["bias"], 0)
  assert 0.01 < head["kernel"].std() < 0.03  # timm's trunc_normal(std=.02)
  np.testing.assert_array_equal(head["kernel"], v0b["head"]["kernel"])  # seeded
  assert not np.array_equal(head["kernel"], v1["head"]["kernel"])
  # The body is the checkpoint's; a 1000-class model keeps its head.
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         {k: p for k, p in v0.items() if k != "head"},
                         convert_(num_classes=0))
  head_key = "head" if family == "vit" else "head.fc"
  np.testing.assert_array_equal(convert_(num_classes=1000)["head"]["kernel"],
                                sd[f"{head_key}.weight"].T)


BAD_KEYS = {  # (edit, key) per family, on the tiny architectures
    "vit": [("drop", "blocks.1.mlp.fc1.bias"), ("extra", "blocks.2.norm1.weight"),
            ("extra", "blocks.0.ls1.gamma"), ("reshape", "blocks.1.attn.qkv.weight"),
            ("drop", "cls_token"), ("reshape", "pos_embed")],
    "swin": [("drop", "layers.1.blocks.0.mlp.fc1.bias"), ("extra", "extra.weight"),
             ("reshape", "layers.1.downsample.reduction.weight"),
             ("reshape", "layers.1.blocks.0.attn.relative_position_bias_table")],
    "poolformer": [("drop", "stages.2.blocks.0.layer_scale2.scale"),
                   ("extra", "extra.weight"), ("reshape", "stages.1.downsample.conv.weight"),
                   ("reshape", "stages.3.blocks.0.mlp.fc2.weight")],
}


@pytest.mark.parametrize("family, edit, key", [(f, e, k) for f in FAMILIES
                                               for e, k in BAD_KEYS[f]])
def test_missing_leftover_and_misshapen_keys_name_the_key(family, edit, key):
  sd = torch_sd(tiny_timm(family))
  if edit == "drop":
    del sd[key]
  elif edit == "extra":
    sd[key] = np.ones(64, np.float32)
  else:
    sd[key] = sd[key][:-3]
  module, name = tiny(family)
  with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
    module.convert_timm(name, sd, img_size=TINY_SIZE)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_of_another_architecture_names_the_first_tensor(family):
  sd = torch_sd(tiny_timm(family))
  stem = "stem.conv.weight" if family == "poolformer" else "patch_embed.proj.weight"
  with pytest.raises(ConversionError, match=stem):
    models.from_timm(FAMILY_MODEL[family], sd)


# --- mechanics: dropout, drop path, gradients, bf16, remat -------------------------


def jit_apply(model, train=False):
  return jax.jit(lambda v, x, key=jax.random.PRNGKey(0): model.apply(
      v, x, train=train, rngs={"dropout": key}))


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_and_drop_path_only_in_train_mode(family):
  """Eval mode ignores drop_rate and drop_path_rate (timm's features, headless);
  train mode is random, the same for the same key. What each does is tested
  on the layers themselves (test_layers)."""
  tm = tiny_timm(family)
  v = tiny_variables(family, tm, num_classes=0)
  x = images(4, TINY_SIZE, 3, seed=11)
  model = tiny_model(family, num_classes=0, drop_rate=0.3, drop_path_rate=0.5)
  run = jax.jit(lambda key, train: model.apply(v, x, train=train, rngs={"dropout": key}),
                static_argnums=1)
  feats = run(jax.random.PRNGKey(0), False)
  assert rel_err(feats, timm_features(tm, x)) < TOL
  t1, t2 = run(jax.random.PRNGKey(1), True), run(jax.random.PRNGKey(2), True)
  assert not np.allclose(t1, feats) and not np.allclose(t1, t2)
  np.testing.assert_array_equal(t1, run(jax.random.PRNGKey(1), True))
  with pytest.raises(Exception, match="dropout"):  # train=True needs a 'dropout' rng
    jax.eval_shape(lambda: model.apply(v, x, train=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_compute_is_close_and_params_stay_float32(family):
  tm = tiny_timm(family)
  v = tiny_variables(family, tm)
  x = images(2, TINY_SIZE, 3, seed=9)
  model = tiny_model(family, dtype=jnp.bfloat16)
  out = jit_apply(model)(v, x)
  assert out.dtype == jnp.float32
  assert 1e-4 < rel_err(out, timm_logits(tm, x)) < 5e-2  # really bf16, still the same function
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert {a.dtype for a in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype("float32")}


@dataclasses.dataclass
class TrainStep:
  """A tiny model's training loss (drop path on, gray input) under a remat policy."""
  loss: Callable
  params: dict
  param_shapes: dict
  kept_bytes: int  # what the backward pass keeps from the forward one


_RESIDUAL = re.compile(r"^([a-z]+)(\d*)\[([\d,]*)\] (.*)$")


def kept_bytes(loss, params) -> int:
  """Bytes the backward pass keeps from the forward one, from the jaxpr's
  residuals (device-independent, nothing compiled): jax's public
  `print_saved_residuals`, its lines 'f32[4,64] output of ...' summed,
  the arguments themselves left out."""
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    print_saved_residuals(loss, params)
  total = 0
  for line in buf.getvalue().splitlines():
    kind, bits, dims, why = _RESIDUAL.match(line).groups()
    if "from the argument" in why:
      continue
    size = int(bits) // 8 if bits else 1   # f32 -> 4 bytes; bool -> 1
    total += size * int(np.prod([int(d) for d in dims.split(",") if d]))
  return total


@functools.lru_cache(maxsize=None)
def train_step(family, remat) -> TrainStep:
  """At 64 px: at 32 PoolFormer's last map is 1x1, where its pooling mixer is
  identically 0 (no gradient would reach that block's first layer scale)."""
  model = tiny_model(family, img_size=64, in_chans=1, drop_path_rate=0.1, remat=remat)
  x, y = images(4, 64, 1, seed=8), jnp.arange(4) % 7

  def loss(p):
    # train=True with drop path: the recomputed blocks must draw the same masks.
    logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  params = tiny_variables(family, tiny_timm(family), img_size=64, in_chans=1)["params"]
  kept = kept_bytes(loss, params)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x)["params"])
  return TrainStep(loss, params, shapes, kept)


@functools.lru_cache(maxsize=None)
def loss_and_grads(family, remat):
  step = train_step(family, remat)
  return jax.jit(jax.value_and_grad(step.loss))(step.params)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_parameter(family):
  params = train_step(family, "").params
  _, grads = loss_and_grads(family, "")
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert len(flat) == len(jax.tree_util.tree_leaves(params))
  dead = [jax.tree_util.keystr(p) for p, g in flat
          if not np.all(np.isfinite(g)) or not np.any(np.asarray(g) != 0)]
  assert not dead, dead


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_keeps_the_tree_and_keeps_less_for_the_backward_pass(family, remat):
  """Every family passes `remat` to its blocks (the jaxpr's residuals, no compile)."""
  ref, step = train_step(family, ""), train_step(family, remat)
  # Same tree, names and shapes: checkpoints and converted weights work either way.
  assert jax.tree.map(lambda a: a.shape, step.param_shapes) == \
      jax.tree.map(lambda a: a.shape, ref.params)
  assert step.kept_bytes < 0.8 * ref.kept_bytes


# The policy lives in layers.remat_block: one compiled check in the fast set.
@pytest.mark.parametrize("family, remat", [
    pytest.param("vit", "block", marks=pytest.mark.slow), ("vit", "dots"),
    pytest.param("swin", "block", marks=pytest.mark.slow),
    pytest.param("poolformer", "dots", marks=pytest.mark.slow)])
def test_remat_keeps_loss_and_gradients(family, remat):
  ref_loss, ref_grads = loss_and_grads(family, "")
  loss, grads = loss_and_grads(family, remat)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_equal_timms(family):
  """The whole backward pass against torch autograd, on cross-entropy: the
  image's gradient, and every parameter's (torch's gradients mapped by the
  family's own converter, which only renames and transposes)."""
  tm = tiny_timm(family).eval()
  x, y = images(3, TINY_SIZE, 3, seed=12), np.array([0, 3, 6])
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  torch.nn.functional.cross_entropy(tm(xt), torch.from_numpy(y)).backward()
  model, v = tiny_model(family), tiny_variables(family, tm)

  def loss(params, x):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)
  assert rel_err(g_x, xt.grad.permute(0, 2, 3, 1).numpy()) < TOL
  grads_sd = torch_sd(tm)  # buffers keep their values; the converter skips them
  grads_sd.update({k: p.grad.numpy() for k, p in tm.named_parameters()})
  module, name = tiny(family)
  want = module.convert_timm(name, grads_sd, img_size=TINY_SIZE)
  # Relative to each tensor, or to the whole gradient for one that is 0 but
  # for rounding (PoolFormer's norm1 bias: pool(c) - c = 0).
  norm = lambda a: np.linalg.norm(np.asarray(a, np.float64))  # noqa: E731
  total = norm(np.concatenate([np.ravel(w) for w in jax.tree.leaves(want)]))
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(g_params), jax.tree.leaves(want)):
    assert norm(np.asarray(g) - w) < TOL * max(norm(w), 1e-4 * total), jax.tree_util.keystr(path)


def fusion_spans(compiled_hlo: str) -> list[int]:
  """For each fusion of a compiled XLA module: how many distinct blocks
  (`blocks_N` in its ops' names) its computation reads from."""
  comps = {m.group(1): m.group(2) for m in
           re.finditer(r"^%?([\w.\-]+) \(.*?\{\n(.*?)^\}", compiled_hlo, re.S | re.M)}
  return [len(set(re.findall(r"blocks_\d+", comps[m.group(1)])))
          for m in re.finditer(r"= \S+ fusion\(.*?calls=%([\w.\-]+)", compiled_hlo)]


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_training_step_computes_each_blocks_gradient_once(monkeypatch, family):
  """`layers.materialize` between blocks: no fusion of the compiled backward
  pass reaches further than the next block. Without it, XLA on CPU fuses the
  residual stream's gradient through every block of a stage into each
  fusion that reads it (work quadratic in depth; BENCHMARKS.md)."""
  module = family_module(family)
  arch = ViTArch(patch_size=8, embed_dim=32, depth=6, num_heads=2) if family == "vit" else \
      SwinArch(embed_dim=16, depths=(1, 6), num_heads=(1, 2))
  monkeypatch.setitem(module.ARCHS, "deep_test", arch)
  model = module.create("deep_test", img_size=TINY_SIZE, in_chans=1)
  x, y = images(2, TINY_SIZE, 1, seed=3), np.array([1, 2])
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  grad = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, x), y).mean()))
  spans = fusion_spans(grad.lower(params).compile().as_text())
  assert spans and max(spans) <= 2, sorted(spans)[-5:]


def test_a_registered_architecture_is_a_model_name_everywhere():
  """tests/tiny.py's architectures went through models.register: the recipe, the
  registry and the family's create build exactly that architecture; a taken name is
  refused and an unknown one lists the valid names."""
  from mer_jax.plumbing.errors import UsageError
  from mer_jax.run import recipe
  name, arch = TINY["poolformer"]
  c = recipe.get_config(name, "m2", "af")
  assert c.model.name == name and c.init.weights == ""   # no timm weights for it
  x = images(1, TINY_SIZE, 1)
  v = models.create_model(name, img_size=TINY_SIZE, in_chans=1).init(jax.random.PRNGKey(0), x)
  p = v["params"]
  assert [p["stem"]["kernel"].shape[-1]] + [p[f"stages_{i}_downsample"]["kernel"].shape[-1]
                                           for i in (1, 2, 3)] == list(arch.dims)
  assert sum(k.startswith("stages_") and "blocks" in k for k in p) == sum(arch.depths)
  with pytest.raises(UsageError, match="already registered"):
    models.register("poolformer_s12", "poolformer", arch)
  with pytest.raises(UsageError, match="poolformer_s12"):
    recipe.get_config("poolformer_nope", "m2", "af")


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_input_shape_names_the_expected_one(family):
  model = tiny_model(family)
  x = jnp.zeros((1, 48, 48, 1))
  want = "3 channel" if family == "poolformer" else "32, 32, 3"
  with pytest.raises(ValueError, match=want):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))


# --- weight files, hub, cache, and python -m mer_jax.convert ----------------------


@pytest.fixture(scope="module")
def s12_file(tmp_path_factory):
  """A poolformer_s12 checkpoint as model.safetensors, with its timm model."""
  tm = timm_model("poolformer_s12", seed=3)
  path = tmp_path_factory.mktemp("s12") / "model.safetensors"
  safetensors.numpy.save_file(torch_sd(tm), str(path))
  return tm, path


def test_safetensors_npz_and_pth_sources_load_the_same(s12_file, tmp_path):
  sd = safetensors.numpy.load_file(str(s12_file[1]))
  np.savez(tmp_path / "w.npz", **sd)
  torch.save({"state_dict": {k: torch.from_numpy(w) for k, w in sd.items()}}, tmp_path / "w.pth")
  for src in (s12_file[1], s12_file[1].parent, tmp_path / "w.npz", tmp_path / "w.pth"):
    got = weights.load_state_dict(str(src))
    assert sorted(got) == sorted(sd)
    for k in sd:
      np.testing.assert_array_equal(got[k], sd[k])


def test_load_pretrained_caches_the_conversion(s12_file, tmp_path):
  tm, f = s12_file
  cache = tmp_path / "cache"
  v1 = weights.load_pretrained("poolformer_s12", str(f), in_chans=1, cache_dir=str(cache))
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith(".msgpack")
  v2 = weights.load_pretrained("poolformer_s12", str(f), in_chans=1, cache_dir=str(cache))
  jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)
  x = images(1, 384, 1)
  assert rel_err(flax_apply("poolformer_s12", 384, 1)(v2, x), timm_logits(tm, x)) < TOL


def test_missing_file_says_where_it_looked(tmp_path):
  with pytest.raises(weights.WeightsNotFound, match="looked for"):
    weights.load_state_dict(str(tmp_path / "nope.safetensors"))


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(weights.WeightsNotFound,
                     match=r"timm/poolformer_m36.sail_in1k/resolve/main/model.safetensors"):
    weights.load_state_dict("timm/poolformer_m36.sail_in1k")


def test_convert_cli(s12_file, tmp_path, capsys):
  from mer_jax import convert as program
  out = tmp_path / "p.msgpack"
  assert program.main(["--model", "poolformer_s12", "--weights", str(s12_file[1]),
                       "--in_chans", "1", "--cache_dir", str(tmp_path / "c"),
                       "--out", str(out)]) == 0
  assert out.exists() and "M parameters" in capsys.readouterr().out
  # A missing file is the user's to fix: one line, exit 2 (cli.run).
  with pytest.raises(SystemExit) as e:
    cli.run(program.main, ["--model", "poolformer_s12", "--weights",
                           str(tmp_path / "none.npz")])
  assert e.value.code == 2 and "error:" in capsys.readouterr().err
