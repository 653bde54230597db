"""ViT-B/32 specifics: the position embedding at another size, LayerScale,
Google's .npz files. What every family satisfies is in test_models.

References are independent of the code under test: timm 1.0.31's loaders
(`checkpoint_filter_fn` through `create_model(pretrained=True)`,
`_load_weights` for Google .npz files) and torch's `F.interpolate`.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models import vision_transformer as timm_vit

from parity import TOL, images, rel_err, timm_logits, timm_model, tiny_timm, torch_sd
from tiny import TINY, TINY_SIZE, TINY_VIT
from mer_jax.models import create_model, from_timm, resample, vit
from mer_jax.models.state_dict import ConversionError

TINY_NAME = TINY["vit"][0]


# --- the position embedding at another size ------------------------------------------


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size", [(12, 12), (7, 7), (4, 4), (3, 11), (16, 5)])
def test_torch_interpolate_matches_torch(mode, antialias, size):
  x = torch.randn(1, 6, 7, 7, generator=torch.Generator().manual_seed(1))
  ref = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
  got = resample.torch_interpolate(x[0].permute(1, 2, 0).numpy(), size, mode, antialias)
  # Both use float32 weights; what is left is float32 rounding (~4 ulp at |x|~4).
  np.testing.assert_allclose(got, ref[0].permute(1, 2, 0).numpy(), rtol=0, atol=4e-6)


def test_resample_abs_pos_embed_matches_timm():
  pos = torch.randn(1, 50, 16, generator=torch.Generator().manual_seed(2))
  for mode, aa in [("bicubic", True), ("bicubic", False), ("bilinear", False)]:
    ref = timm.layers.resample_abs_pos_embed(pos, new_size=[12, 12], num_prefix_tokens=1,
                                             interpolation=mode, antialias=aa)
    got = resample.resample_abs_pos_embed(pos.numpy(), 12, mode=mode, antialias=aa)
    assert got.shape == (1, 145, 16)
    np.testing.assert_array_equal(got[:, :1], pos.numpy()[:, :1])  # cls slot kept
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=4e-6)


@pytest.fixture(scope="module")
def b32_file(tmp_path_factory):
  """A timm ViT-B/32 224 checkpoint as a file timm's own loader reads."""
  tm = timm_model("vit_b32", 224)
  path = tmp_path_factory.mktemp("vit") / "vit224.safetensors"
  safetensors.torch.save_file(tm.state_dict(), str(path))
  return torch_sd(tm), path


def timm_loaded_at_384(path, in_chans):
  """timm's path: create_model(img_size=384, pretrained=True) on a 224 file runs
  checkpoint_filter_fn, which resamples pos_embed (bicubic, antialias=True)
  and adapts the patch kernel to in_chans; the file's 7-class head is
  dropped (the pretrained config says 1000) and initialised anew."""
  return timm.create_model(
      "vit_base_patch32_224", pretrained=True, img_size=384, in_chans=in_chans, num_classes=7,
      pretrained_cfg_overlay=dict(file=str(path), custom_load=False)).eval()


def test_checkpoint_at_another_size_matches_timms_filter():
  """A 32 px checkpoint in a 48 px model: timm's checkpoint_filter_fn resamples
  pos_embed (bicubic, antialias=True); the port gives its logits."""
  tm32 = tiny_timm("vit", seed=3)
  tm48 = tiny_timm("vit", img_size=48, seed=4)
  tm48.load_state_dict(timm_vit.checkpoint_filter_fn(tm32.state_dict(), tm48))
  v = {"params": vit.convert_timm(TINY_NAME, torch_sd(tm32), img_size=48)}
  np.testing.assert_allclose(v["params"]["pos_embed"], tm48.pos_embed.detach().numpy(),
                             rtol=0, atol=1e-6)
  x = images(2, 48, 3, seed=6)
  out = jax.jit(vit.create(TINY_NAME, img_size=48).apply)(v, x)
  assert rel_err(out, timm_logits(tm48, x)) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("in_chans", [3, 1])
def test_224_checkpoint_at_384_matches_timms_own_loader(b32_file, in_chans):
  sd, path = b32_file
  tm384 = timm_loaded_at_384(path, in_chans)
  variables = from_timm("vit_b32", sd, img_size=384, in_chans=in_chans)
  pos = variables["params"]["pos_embed"]
  assert pos.shape == (1, 145, 768)
  np.testing.assert_allclose(pos, tm384.pos_embed.detach().numpy(), rtol=0, atol=1e-6)
  # And it is not torch's other bicubic (antialias=False).
  plain = resample.resample_abs_pos_embed(sd["pos_embed"], 12, antialias=False)
  assert np.abs(plain - tm384.pos_embed.detach().numpy()).max() > 1e-4
  variables["params"]["head"] = {"kernel": tm384.head.weight.detach().numpy().T,
                                 "bias": tm384.head.bias.detach().numpy()}
  x = images(1, 384, in_chans, seed=6)
  out = jax.jit(create_model("vit_b32", img_size=384, in_chans=in_chans).apply)(variables, x)
  assert rel_err(out, timm_logits(tm384, x)) < TOL


# --- LayerScale (timm's init_values; identity in ViT-B/32) --------------------------


def test_layer_scale_matches_timm(monkeypatch):
  monkeypatch.setitem(vit.ARCHS, "vit_test_ls", vit.ViTArch(
      patch_size=TINY_VIT.patch_size, embed_dim=TINY_VIT.embed_dim, depth=TINY_VIT.depth,
      num_heads=TINY_VIT.num_heads, init_values=0.3))
  tm = tiny_timm("vit", init_values=0.3)
  with torch.no_grad():  # gammas far from their init value
    for name, p in tm.named_parameters():
      if name.endswith("gamma"):
        p.uniform_(0.1, 2.0)
  v = {"params": vit.convert_timm("vit_test_ls", torch_sd(tm), img_size=TINY_SIZE)}
  assert v["params"]["blocks_1"]["ls2"]["gamma"].shape == (TINY_VIT.embed_dim,)
  x = images(2, TINY_SIZE, 3, seed=10)
  out = jax.jit(vit.create("vit_test_ls", img_size=TINY_SIZE).apply)(v, x)
  assert rel_err(out, timm_logits(tm, x)) < TOL


def test_pre_logits_layer_is_dropped_as_timm_does():
  sd = torch_sd(tiny_timm("vit"))
  with_pre_logits = {**sd, "pre_logits.fc.weight": np.ones((32, 32), np.float32),
                     "pre_logits.fc.bias": np.ones(32, np.float32)}
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         vit.convert_timm(TINY_NAME, with_pre_logits, img_size=TINY_SIZE),
                         vit.convert_timm(TINY_NAME, sd, img_size=TINY_SIZE))


def test_img_size_must_be_a_multiple_of_the_patch():
  with pytest.raises(ValueError, match="patch size"):
    create_model("vit_b32", img_size=200)


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
def test_npz_to_timm_equals_timms_load_weights(tmp_path, prefix):
  sd = torch_sd(tiny_timm("vit", seed=14))
  npz = timm_to_npz(sd, heads=TINY_VIT.num_heads, prefix=prefix)
  npz[prefix + "pre_logits/kernel"] = np.ones((32, 32), np.float32)  # timm ignores it
  path = tmp_path / "vit.npz"
  np.savez(path, **npz)
  ref_model = tiny_timm("vit", seed=99)  # other weights, overwritten by the loader
  timm_vit._load_weights(ref_model, str(path))
  got = vit.npz_to_timm(np.load(path))
  ref = torch_sd(ref_model)
  assert sorted(got) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_npz_at_another_size_and_gray_matches_timm_end_to_end(tmp_path):
  """npz at 32 px -> model at 48 px, 1 channel: timm's _load_weights resamples
  pos_embed bilinearly and sums the RGB kernel; the port gives its logits."""
  sd = torch_sd(tiny_timm("vit", seed=15))
  path = tmp_path / "vit.npz"
  np.savez(path, **timm_to_npz(sd, heads=TINY_VIT.num_heads))
  ref_model = tiny_timm("vit", img_size=48, in_chans=1, seed=99)
  timm_vit._load_weights(ref_model, str(path))
  timm_sd = vit.npz_to_timm(np.load(path), img_size=48)
  np.testing.assert_allclose(timm_sd["pos_embed"], ref_model.pos_embed.detach().numpy(),
                             rtol=0, atol=1e-6)
  v = {"params": vit.convert_timm(TINY_NAME, timm_sd, img_size=48, in_chans=1)}
  x = images(2, 48, 1, seed=16)
  out = jax.jit(vit.create(TINY_NAME, img_size=48, in_chans=1).apply)(v, x)
  assert rel_err(out, timm_logits(ref_model, x)) < TOL


def test_npz_errors_say_what_to_do():
  with pytest.raises(ConversionError, match="big_vision"):
    vit.npz_to_timm({"params/embedding/kernel": np.zeros((32, 32, 3, 8))})
  with pytest.raises(ConversionError, match="embedding/kernel"):
    vit.npz_to_timm({"foo": np.zeros(3)})
