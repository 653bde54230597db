"""ViT-B/32 port: Flax logits equal timm's, the converter is timm's loader.

References are independent of the code under test: timm 1.0.31 modules and
loaders (`checkpoint_filter_fn` through `create_model(pretrained=True)`,
`_load_weights` for Google .npz files) and torch's `F.interpolate`.
ViT-B/32 cases run at batch 1-2; the mechanics (dropout, drop path, npz
mapping, LayerScale) run on a 2-block ViT of the same modules for speed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models import vision_transformer as timm_vit

from parity import TOL, images, rel_err, timm_logits, torch_sd
from mer_jax.models import create_model, vit
from mer_jax.models import convert
from mer_jax.models.convert import ConversionError, from_timm, vit_npz_to_timm


@pytest.fixture(scope="module")
def b32():
  """Randomly initialised timm ViT-B/32 (7 classes) and its state dict."""
  torch.manual_seed(0)
  model = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=7).eval()
  return model, torch_sd(model)


@pytest.fixture(scope="module")
def b32_variables(b32):
  return from_timm("vit_b32", b32[1], img_size=224, in_chans=3)


@pytest.fixture(scope="module")
def apply_224():
  model = create_model("vit_b32", num_classes=7, img_size=224, in_chans=3)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


# --- torch's interpolation in numpy -----------------------------------------------


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size", [(12, 12), (7, 7), (4, 4), (3, 11), (16, 5)])
def test_torch_interpolate_matches_torch(mode, antialias, size):
  x = torch.randn(1, 6, 7, 7, generator=torch.Generator().manual_seed(1))
  ref = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
  got = convert.torch_interpolate(x[0].permute(1, 2, 0).numpy(), size, mode, antialias)
  # Both use float32 weights; what is left is float32 rounding (~4 ulp at |x|~4).
  np.testing.assert_allclose(got, ref[0].permute(1, 2, 0).numpy(), rtol=0, atol=4e-6)


def test_jax_resize_is_not_torch_bicubic():
  """Why the numpy port exists: jax.image.resize is another bicubic."""
  x = np.random.RandomState(0).randn(7, 7, 4).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=(12, 12),
                      mode="bicubic", align_corners=False, antialias=False)
  jax_out = np.asarray(jax.image.resize(x, (12, 12, 4), "cubic"))
  assert np.abs(jax_out - ref[0].permute(1, 2, 0).numpy()).max() > 1e-2


def test_resample_abs_pos_embed_matches_timm():
  pos = torch.randn(1, 50, 16, generator=torch.Generator().manual_seed(2))
  for mode, aa in [("bicubic", True), ("bicubic", False), ("bilinear", False)]:
    ref = timm.layers.resample_abs_pos_embed(pos, new_size=[12, 12], num_prefix_tokens=1,
                                             interpolation=mode, antialias=aa)
    got = convert.resample_abs_pos_embed(pos.numpy(), 12, mode=mode, antialias=aa)
    assert got.shape == (1, 145, 16)
    np.testing.assert_array_equal(got[:, :1], pos.numpy()[:, :1])  # cls slot kept
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=4e-6)


# --- ViT-B/32 parity with timm ----------------------------------------------------


def test_param_tree_matches_model(b32):
  for img_size, in_chans, num_classes in [(224, 3, 7), (384, 1, 7), (224, 3, 0)]:
    model = create_model("vit_b32", num_classes=num_classes, img_size=img_size,
                         in_chans=in_chans)
    x = jnp.zeros((1, img_size, img_size, in_chans))
    want = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    got = from_timm("vit_b32", b32[1], img_size=img_size, in_chans=in_chans,
                    num_classes=num_classes)
    shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), t)
    assert shapes(got) == shapes(want)


def test_logits_match_timm_224_rgb(b32, b32_variables, apply_224):
  x = images(2, 224, 3)
  out = apply_224(b32_variables, x)
  assert out.dtype == jnp.float32 and out.shape == (2, 7)
  assert rel_err(out, timm_logits(b32[0], x)) < TOL


def test_gray_from_rgb_checkpoint_equals_rgb_on_repeated_image(b32):
  """M2: in_chans=1 sums the RGB kernel, so gray == RGB model on gray x 3."""
  model = create_model("vit_b32", img_size=224, in_chans=1)
  variables = from_timm("vit_b32", b32[1], img_size=224, in_chans=1)
  gray = images(2, 224, 1, seed=3)
  out = jax.jit(model.apply)(variables, gray)
  ref = timm_logits(b32[0], np.repeat(gray, 3, axis=-1))
  assert rel_err(out, ref) < TOL


def test_one_channel_checkpoint_loads_as_is():
  torch.manual_seed(4)
  tm = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=7,
                         in_chans=1).eval()
  variables = from_timm("vit_b32", torch_sd(tm), img_size=224, in_chans=1)
  np.testing.assert_array_equal(
      variables["params"]["patch_embed"]["proj"]["kernel"],
      tm.patch_embed.proj.weight.detach().numpy().transpose(2, 3, 1, 0))
  gray = images(1, 224, 1, seed=5)
  out = create_model("vit_b32", in_chans=1).apply(variables, gray)
  assert rel_err(out, timm_logits(tm, gray)) < TOL


def test_224_checkpoint_at_384_matches_timms_own_loader(b32, tmp_path):
  """timm's path: create_model(img_size=384, pretrained=True) on a 224 file runs
  checkpoint_filter_fn, which resamples pos_embed (bicubic, antialias=True)."""
  path = tmp_path / "vit224.safetensors"
  safetensors.torch.save_file(b32[0].state_dict(), str(path))
  tm384 = timm.create_model(
      "vit_base_patch32_224", pretrained=True, img_size=384, num_classes=7,
      pretrained_cfg_overlay=dict(file=str(path), custom_load=False)).eval()
  variables = from_timm("vit_b32", b32[1], img_size=384, in_chans=3)
  pos = variables["params"]["pos_embed"]
  assert pos.shape == (1, 145, 768)
  np.testing.assert_allclose(pos, tm384.pos_embed.detach().numpy(), rtol=0, atol=1e-6)
  # timm drops the file's head (its pretrained_cfg says 1000 classes) and
  # initialises a new one; everything else is the file's.
  ref_sd = torch_sd(tm384)
  for k, v in b32[1].items():
    if k not in ("pos_embed", "head.weight", "head.bias"):
      np.testing.assert_array_equal(ref_sd[k], v, err_msg=k)
  variables["params"]["head"] = {"kernel": ref_sd["head.weight"].T,
                                 "bias": ref_sd["head.bias"]}
  x = images(1, 384, 3, seed=6)
  out = create_model("vit_b32", img_size=384).apply(variables, x)
  assert rel_err(out, timm_logits(tm384, x)) < TOL
  # And it is not the other bicubic: torch's antialias=False path differs.
  plain = convert.resample_abs_pos_embed(b32[1]["pos_embed"], 12, antialias=False)
  assert np.abs(plain - tm384.pos_embed.detach().numpy()).max() > 1e-4


def test_head_reinitialised_from_1000_class_checkpoint():
  torch.manual_seed(7)
  tm = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=1000).eval()
  sd = torch_sd(tm)
  v0 = from_timm("vit_b32", sd, num_classes=7, seed=0)["params"]
  v0b = from_timm("vit_b32", sd, num_classes=7, seed=0)["params"]
  v1 = from_timm("vit_b32", sd, num_classes=7, seed=1)["params"]
  head = v0["head"]
  assert head["kernel"].shape == (768, 7) and head["bias"].shape == (7,)
  np.testing.assert_array_equal(head["bias"], 0)
  assert 0.01 < head["kernel"].std() < 0.03  # timm's trunc_normal(std=.02)
  np.testing.assert_array_equal(head["kernel"], v0b["head"]["kernel"])  # seeded
  assert not np.array_equal(head["kernel"], v1["head"]["kernel"])
  # Body untouched; a 1000-class model keeps the checkpoint's head.
  np.testing.assert_array_equal(v0["blocks_5"]["mlp"]["fc1"]["kernel"],
                                sd["blocks.5.mlp.fc1.weight"].T)
  v1000 = from_timm("vit_b32", sd, num_classes=1000)["params"]
  np.testing.assert_array_equal(v1000["head"]["kernel"], sd["head.weight"].T)


@pytest.mark.parametrize("edit, key", [
    ("drop", "blocks.3.mlp.fc1.bias"),
    ("extra", "blocks.12.norm1.weight"),
    ("extra", "blocks.0.ls1.gamma"),
    ("reshape", "blocks.7.attn.qkv.weight"),
    ("drop", "cls_token"),
])
def test_missing_leftover_and_misshapen_keys_name_the_key(b32, edit, key):
  sd = dict(b32[1])
  if edit == "drop":
    del sd[key]
  elif edit == "extra":
    sd[key] = np.ones(768, np.float32)
  else:
    sd[key] = sd[key][:-3]
  with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
    from_timm("vit_b32", sd)


def test_gradients_reach_every_parameter(b32_variables):
  model = create_model("vit_b32")
  x, labels = images(1, 224, 3, seed=8), jnp.array([3])

  def loss(params):
    logits = model.apply({"params": params}, x, train=False)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).sum()

  grads = jax.jit(jax.grad(loss))(b32_variables["params"])
  norms = {jax.tree_util.keystr(k): float(jnp.linalg.norm(g))
           for k, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert len(norms) == 12 * 12 + 8
  assert not [k for k, n in norms.items() if not np.isfinite(n) or n == 0.0]


def test_bf16_compute_is_close_and_params_stay_float32(b32, b32_variables):
  model = create_model("vit_b32", dtype=jnp.bfloat16)
  x = images(2, 224, 3, seed=9)
  out = jax.jit(model.apply)(b32_variables, x)
  assert out.dtype == jnp.float32
  ref = timm_logits(b32[0], x)
  err = rel_err(out, ref)
  assert 1e-4 < err < 5e-2  # really bf16, and still the same function
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert {a.dtype for a in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype("float32")}


# --- mechanics on a 2-block ViT of the same modules ----------------------------------

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4)


def tiny_timm(seed=0, **kw):
  torch.manual_seed(seed)
  return timm_vit.VisionTransformer(**{**TINY, "num_classes": 5, **kw}).eval()


def tiny_flax(**kw):
  return vit.VisionTransformer(**{**TINY, "num_classes": 5, **kw})


def tiny_convert(sd, *, img_size=64, in_chans=3, num_classes=5, init_values=None):
  arch = vit.ViTArch(patch_size=16, embed_dim=64, depth=2, num_heads=4,
                     init_values=init_values)
  params = convert._vit_params(convert.StateDict(sd), arch, img_size=img_size,
                               in_chans=in_chans, num_classes=num_classes, seed=0)
  return {"params": params}


def test_layer_scale_and_prelogits_match_timm():
  tm = tiny_timm(init_values=0.3)
  with torch.no_grad():  # non-trivial gammas
    for name, p in tm.named_parameters():
      if name.endswith("gamma"):
        p.uniform_(0.1, 2.0)
  x = images(2, 64, 3, seed=10)
  out = tiny_flax(init_values=0.3).apply(tiny_convert(torch_sd(tm), init_values=0.3), x)
  assert rel_err(out, timm_logits(tm, x)) < TOL
  # num_classes=0: the pooled 64-d features (timm's forward_head(pre_logits=True)).
  tm0 = tiny_timm(seed=1)
  feats = tiny_flax(num_classes=0).apply(tiny_convert(torch_sd(tm0), num_classes=0), x)
  with torch.no_grad():
    ref = tm0.forward_head(tm0.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)),
                           pre_logits=True).numpy()
  assert feats.shape == (2, 64) and rel_err(feats, ref) < TOL


def test_drop_path_rates_are_timms():
  tm = timm.create_model("vit_base_patch32_224", pretrained=False, drop_path_rate=0.1)
  want = [getattr(b.drop_path1, "drop_prob", 0.0) for b in tm.blocks]
  assert vit.drop_path_rates(0.1, 12) == want  # bit-exact for the 12 blocks
  assert want[0] == 0.0 and abs(want[-1] - 0.1) < 1e-7
  # timm's drop_rate is the head dropout only (pos/proj/attn dropouts stay 0).
  tm = timm.create_model("vit_base_patch32_224", pretrained=False, drop_rate=0.3)
  assert tm.head_drop.p == 0.3 and tm.pos_drop.p == 0.0
  assert tm.blocks[0].mlp.drop1.p == 0.0 and tm.blocks[0].attn.attn_drop.p == 0.0


def test_dropout_and_drop_path_only_in_train_mode():
  variables = tiny_convert(torch_sd(tiny_timm()))
  x = images(8, 64, 3, seed=11)
  plain = tiny_flax().apply(variables, x)
  noisy = tiny_flax(drop_rate=0.5, drop_path_rate=0.5)
  np.testing.assert_array_equal(noisy.apply(variables, x, train=False), plain)
  t1 = noisy.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  t2 = noisy.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(t1, plain) and not np.allclose(t1, t2)
  with pytest.raises(Exception, match="dropout"):
    noisy.apply(variables, x, train=True)  # train=True needs a 'dropout' rng
  # No rates: train mode is deterministic and equals eval.
  np.testing.assert_allclose(
      tiny_flax().apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}),
      plain, rtol=1e-6, atol=1e-6)


def test_drop_rate_is_dropout_on_pooled_features_only():
  """With drop_rate alone, train-mode features are exactly 0 or 2x the eval
  features: nothing else in the body is random."""
  variables = tiny_convert(torch_sd(tiny_timm()), num_classes=0)
  x = images(4, 64, 3, seed=12)
  feats = tiny_flax(num_classes=0).apply(variables, x)
  noisy = tiny_flax(num_classes=0, drop_rate=0.5).apply(
      variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
  kept = noisy != 0
  assert 0.3 < kept.mean() < 0.7
  np.testing.assert_allclose(noisy[kept], 2 * feats[kept], rtol=1e-6)


def test_drop_path_drops_whole_samples():
  """Drop path in the last block (rate 0.5 of 2 blocks) removes a sample's
  residual branch as a whole: per sample the output is one of the 4 block-1
  branch combinations, each seen across a batch."""
  variables = tiny_convert(torch_sd(tiny_timm()), num_classes=0)
  x = np.repeat(images(1, 64, 3, seed=13), 64, axis=0)
  model = tiny_flax(num_classes=0, drop_path_rate=0.5)
  out = np.asarray(model.apply(variables, x, train=True,
                               rngs={"dropout": jax.random.PRNGKey(3)}))
  distinct = np.unique(np.round(out, 4), axis=0)
  assert len(distinct) == 4  # attn kept/dropped x mlp kept/dropped


# --- Google .npz (vit_jax / augreg names) -------------------------------------------


def timm_to_npz(sd: dict, heads: int, prefix: str = "") -> dict:
  """The inverse of timm's `_load_weights`, written from the vit_jax layout."""
  d = sd["cls_token"].shape[-1]
  out = {
      "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
      "embedding/bias": sd["patch_embed.proj.bias"],
      "cls": sd["cls_token"],
      "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
      "Transformer/encoder_norm/scale": sd["norm.weight"],
      "Transformer/encoder_norm/bias": sd["norm.bias"],
      "head/kernel": sd["head.weight"].T,
      "head/bias": sd["head.bias"],
  }
  i = 0
  while f"blocks.{i}.norm1.weight" in sd:
    b, e = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
    mha = e + "MultiHeadDotProductAttention_1/"
    out[e + "LayerNorm_0/scale"] = sd[b + "norm1.weight"]
    out[e + "LayerNorm_0/bias"] = sd[b + "norm1.bias"]
    out[e + "LayerNorm_2/scale"] = sd[b + "norm2.weight"]
    out[e + "LayerNorm_2/bias"] = sd[b + "norm2.bias"]
    qkv_w = sd[b + "attn.qkv.weight"].reshape(3, d, d)  # [qkv, out, in]
    qkv_b = sd[b + "attn.qkv.bias"].reshape(3, heads, d // heads)
    for j, n in enumerate(("query", "key", "value")):
      out[f"{mha}{n}/kernel"] = qkv_w[j].T.reshape(d, heads, d // heads)
      out[f"{mha}{n}/bias"] = qkv_b[j]
    out[mha + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, d // heads, d)
    out[mha + "out/bias"] = sd[b + "attn.proj.bias"]
    for r in range(2):
      out[e + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
      out[e + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    i += 1
  return {prefix + k: v for k, v in out.items()}


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_vit_npz_to_timm_equals_timms_load_weights(tmp_path, prefix):
  sd = torch_sd(tiny_timm(seed=14))
  npz = timm_to_npz(sd, heads=4, prefix=prefix)
  npz[prefix + "pre_logits/kernel"] = np.ones((64, 64), np.float32)  # timm ignores it
  path = tmp_path / "vit.npz"
  np.savez(path, **npz)
  ref_model = tiny_timm(seed=99)  # other weights, overwritten by the loader
  timm_vit._load_weights(ref_model, str(path))
  got = vit_npz_to_timm(np.load(path))
  ref = torch_sd(ref_model)
  assert sorted(got) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_npz_at_another_size_and_gray_matches_timm_end_to_end(tmp_path):
  """npz at 64 px -> model at 96 px, 1 channel: timm's _load_weights resamples
  pos_embed bilinearly and sums the RGB kernel; the port gives its logits."""
  sd = torch_sd(tiny_timm(seed=15))
  path = tmp_path / "vit.npz"
  np.savez(path, **timm_to_npz(sd, heads=4))
  ref_model = tiny_timm(seed=99, img_size=96, in_chans=1)
  timm_vit._load_weights(ref_model, str(path))
  timm_sd = vit_npz_to_timm(np.load(path), img_size=96)
  np.testing.assert_allclose(timm_sd["pos_embed"], ref_model.pos_embed.detach().numpy(),
                             rtol=0, atol=1e-6)
  variables = tiny_convert(timm_sd, img_size=96, in_chans=1)
  x = images(2, 96, 1, seed=16)
  out = tiny_flax(img_size=96, in_chans=1).apply(variables, x)
  assert rel_err(out, timm_logits(ref_model, x)) < TOL


def test_npz_errors_say_what_to_do():
  with pytest.raises(ConversionError, match="big_vision"):
    vit_npz_to_timm({"params/embedding/kernel": np.zeros((32, 32, 3, 8))})
  with pytest.raises(ConversionError, match="embedding/kernel"):
    vit_npz_to_timm({"foo": np.zeros(3)})


def test_create_model_rejects_wrong_input_and_sizes():
  model = create_model("vit_b32", img_size=224)
  with pytest.raises(ValueError, match="img_size"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 384, 384, 3))))
  with pytest.raises(ValueError, match="patch size"):
    create_model("vit_b32", img_size=200)


# --- slow: every combination at 384 ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("in_chans", [3, 1])
def test_native_384_checkpoint_matches_timm(in_chans):
  torch.manual_seed(17)
  tm = timm.create_model("vit_base_patch32_384", pretrained=False, num_classes=7).eval()
  variables = from_timm("vit_b32", torch_sd(tm), img_size=384, in_chans=in_chans)
  x = images(2, 384, in_chans, seed=18)
  out = jax.jit(create_model("vit_b32", img_size=384, in_chans=in_chans).apply)(variables, x)
  ref = timm_logits(tm, np.repeat(x, 3 // in_chans, axis=-1))
  assert rel_err(out, ref) < TOL


@pytest.mark.slow
def test_224_checkpoint_at_384_gray_matches_timms_own_loader(b32, tmp_path):
  """timm's loader on a 1-channel model also adapts the kernel (adapt_input_conv)."""
  path = tmp_path / "vit224.safetensors"
  safetensors.torch.save_file(b32[0].state_dict(), str(path))
  tm = timm.create_model(
      "vit_base_patch32_224", pretrained=True, img_size=384, in_chans=1, num_classes=7,
      pretrained_cfg_overlay=dict(file=str(path), custom_load=False)).eval()
  variables = from_timm("vit_b32", b32[1], img_size=384, in_chans=1)
  variables["params"]["head"] = {"kernel": tm.head.weight.detach().numpy().T,
                                 "bias": tm.head.bias.detach().numpy()}  # timm re-inits it
  x = images(2, 384, 1, seed=19)
  out = jax.jit(create_model("vit_b32", img_size=384, in_chans=1).apply)(variables, x)
  assert rel_err(out, timm_logits(tm, x)) < TOL


@pytest.mark.slow
def test_bf16_at_384_is_close():
  torch.manual_seed(21)
  tm384 = timm.create_model("vit_base_patch32_384", pretrained=False, num_classes=7).eval()
  variables = from_timm("vit_b32", torch_sd(tm384), img_size=384)
  x = images(1, 384, 3, seed=20)
  out = jax.jit(create_model("vit_b32", img_size=384, dtype=jnp.bfloat16).apply)(variables, x)
  assert rel_err(out, timm_logits(tm384, x)) < 5e-2
