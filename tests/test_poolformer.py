"""PoolFormer port and the weight loaders: Flax logits equal timm's.

The reference is timm 1.0.31's MetaFormer, randomly initialised and then
perturbed (layer scales, norms and biases far from their init values) so
every parameter matters in the comparison.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import timm
import torch

import parity
from parity import TOL, images, rel_err, torch_sd
from mer_jax.models import convert, create_model, poolformer
from mer_jax.models.convert import ConversionError, from_timm


def timm_model(name, seed=0, **kw):
  torch.manual_seed(seed)
  m = timm.create_model(name, pretrained=False, **kw).eval()
  with torch.no_grad():
    for n, p in m.named_parameters():
      if "scale" in n or "norm" in n or n.endswith("bias"):
        p.add_(torch.randn_like(p) * 0.3)
  return m


def timm_logits(m, x_nhwc):
  if x_nhwc.shape[-1] == 1:  # gray: the RGB model on the image repeated to 3 channels
    x_nhwc = np.repeat(x_nhwc, 3, axis=-1)
  return parity.timm_logits(m, x_nhwc)


def flax_logits(name, variables, x, **kw):
  model = create_model(name, img_size=x.shape[1], in_chans=x.shape[-1], **kw)
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


@pytest.fixture(scope="module")
def s12():
  return timm_model("poolformer_s12", num_classes=7)


@pytest.mark.parametrize("size,chans", [(224, 3), (224, 1), (384, 3), (384, 1), (97, 3)])
def test_s12_matches_timm(s12, size, chans):
  x = images(2, size, chans)
  v = from_timm("poolformer_s12", torch_sd(s12), img_size=size, in_chans=chans)
  assert rel_err(flax_logits("poolformer_s12", v, x), timm_logits(s12, x)) < TOL


def test_s24_matches_timm():
  m = timm_model("poolformer_s24", num_classes=7)
  x = images(1, 224, 1)
  v = from_timm("poolformer_s24", torch_sd(m), in_chans=1)
  assert rel_err(flax_logits("poolformer_s24", v, x), timm_logits(m, x)) < TOL


def test_m36_matches_timm_at_224_gray():
  m = timm_model("poolformer_m36", num_classes=7)
  x = images(1, 224, 1)
  v = from_timm("poolformer_m36", torch_sd(m), in_chans=1)
  assert rel_err(flax_logits("poolformer_m36", v, x), timm_logits(m, x)) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["poolformer_m36", "poolformer_m48"])
@pytest.mark.parametrize("size,chans", [(224, 3), (384, 3), (384, 1)])
def test_big_matches_timm(name, size, chans):
  m = timm_model(name, num_classes=7)
  x = images(1, size, chans)
  v = from_timm(name, torch_sd(m), img_size=size, in_chans=chans)
  assert rel_err(flax_logits(name, v, x), timm_logits(m, x)) < TOL


def test_one_channel_checkpoint_loads_as_is():
  m = timm_model("poolformer_s12", num_classes=7, in_chans=1)
  sd = torch_sd(m)
  assert sd["stem.conv.weight"].shape[1] == 1
  x = images(1, 160, 1)
  v = from_timm("poolformer_s12", sd, in_chans=1)
  with torch.no_grad():
    ref = m(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  assert rel_err(flax_logits("poolformer_s12", v, x), ref) < TOL


def test_imagenet_head_is_reinitialised(s12):
  m = timm_model("poolformer_s12", num_classes=1000)
  sd = torch_sd(m)
  v = from_timm("poolformer_s12", sd, num_classes=7, seed=3)["params"]
  assert v["head"]["kernel"].shape == (512, 7)
  assert np.all(v["head"]["bias"] == 0)
  assert 0.01 < np.std(v["head"]["kernel"]) < 0.03  # trunc_normal(.02), as timm
  np.testing.assert_array_equal(v["stem"]["kernel"],
                                np.transpose(sd["stem.conv.weight"], (2, 3, 1, 0)))
  # Same features as timm: the pooled, normalised features before the head.
  x = images(1, 128, 3)
  feats = create_model("poolformer_s12", num_classes=0).apply({"params": {
      k: w for k, w in v.items() if k != "head"}}, x)
  with torch.no_grad():
    ref = m.forward_head(m.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)),
                         pre_logits=True).numpy()
  assert rel_err(feats, ref) < TOL


def test_leftover_and_missing_keys_are_errors(s12):
  sd = torch_sd(s12)
  with pytest.raises(ConversionError, match="extra.weight"):
    from_timm("poolformer_s12", {**sd, "extra.weight": np.zeros(3, np.float32)})
  sd.pop("stages.2.blocks.4.layer_scale2.scale")
  with pytest.raises(ConversionError, match="stages.2.blocks.4.layer_scale2.scale"):
    from_timm("poolformer_s12", sd)


def test_wrong_architecture_names_the_tensor(s12):
  with pytest.raises(ConversionError, match="stem.conv.weight"):
    from_timm("poolformer_m36", torch_sd(s12))


def test_original_sail_checkpoint_names(s12):
  """The sail-sg release names map to timm's exactly as timm's filter does."""
  from timm.models.metaformer import checkpoint_filter_fn
  sd = torch_sd(s12)
  # Build the original layout by inverting timm's renaming on our keys.
  original = {}
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
  ours = convert.poolformer_original_to_timm(original)
  theirs = checkpoint_filter_fn({k: torch.from_numpy(w) for k, w in original.items()}, s12)
  assert sorted(ours) == sorted(theirs) == sorted(sd)
  x = images(1, 96, 3)
  v = from_timm("poolformer_s12", original)
  assert rel_err(flax_logits("poolformer_s12", v, x), timm_logits(s12, x)) < TOL


def test_pool_mixer_excludes_padding():
  x = np.random.RandomState(0).randn(2, 5, 6, 3).astype(np.float32)
  ref = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)(
      torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy() - x
  np.testing.assert_allclose(np.asarray(poolformer.pool_mixer(jnp.asarray(x))), ref, atol=1e-6)


def _tiny(**kw):
  return poolformer.PoolFormer(depths=(1, 1, 1, 1), dims=(8, 16, 16, 24),
                               layer_scale_init=0.5, num_classes=7, **kw)


def test_dropout_and_drop_path_only_in_training():
  model = _tiny(drop_rate=0.3, drop_path_rate=0.5)
  x = images(4, 64, 3)
  v = model.init(jax.random.PRNGKey(0), x)
  run = jax.jit(lambda v, key, train: model.apply(v, x, train=train, rngs={"dropout": key}),
                static_argnums=2)
  a = run(v, jax.random.PRNGKey(1), False)
  np.testing.assert_array_equal(a, run(v, jax.random.PRNGKey(2), False))
  t1 = run(v, jax.random.PRNGKey(1), True)
  t2 = run(v, jax.random.PRNGKey(2), True)
  assert not np.allclose(t1, t2) and not np.allclose(t1, a)


def test_gradients_reach_every_parameter():
  model = _tiny(drop_path_rate=0.1)
  x = images(2, 64, 1)
  model = model.clone(in_chans=1)
  v = model.init(jax.random.PRNGKey(0), x)

  def loss(p):
    out = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    return jnp.sum(out ** 2)

  g = jax.jit(jax.grad(loss))(v["params"])
  for path, leaf in jax.tree_util.tree_leaves_with_path(g):
    assert np.all(np.isfinite(leaf)), path
    assert np.any(leaf != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_bfloat16_compute_is_close(s12):
  x = images(1, 128, 3)
  v = from_timm("poolformer_s12", torch_sd(s12))
  ref = flax_logits("poolformer_s12", v, x)
  got = flax_logits("poolformer_s12", v, x, dtype=jnp.bfloat16)
  assert got.dtype == np.float32 and rel_err(got, ref) < 3e-2


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="poolformer_m36"):
    create_model("poolformer_m99")


# --- weight files -----------------------------------------------------------


def test_safetensors_npz_and_pth_sources_load_the_same(s12, tmp_path):
  sd = torch_sd(s12)
  safetensors.numpy.save_file(sd, str(tmp_path / "model.safetensors"))
  np.savez(tmp_path / "w.npz", **sd)
  torch.save({"state_dict": {k: torch.from_numpy(w) for k, w in sd.items()}}, tmp_path / "w.pth")
  for src in (tmp_path / "model.safetensors", tmp_path, tmp_path / "w.npz", tmp_path / "w.pth"):
    got = convert.load_state_dict(str(src))
    assert sorted(got) == sorted(sd)
    for k in sd:
      np.testing.assert_array_equal(got[k], sd[k])


def test_load_pretrained_caches_the_conversion(s12, tmp_path):
  f = tmp_path / "model.safetensors"
  safetensors.numpy.save_file(torch_sd(s12), str(f))
  cache = tmp_path / "cache"
  v1 = convert.load_pretrained("poolformer_s12", str(f), in_chans=1, cache_dir=str(cache))
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith(".msgpack")
  v2 = convert.load_pretrained("poolformer_s12", str(f), in_chans=1, cache_dir=str(cache))
  jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)
  x = images(1, 96, 1)
  assert rel_err(flax_logits("poolformer_s12", v2, x), timm_logits(s12, x)) < TOL


def test_missing_file_says_where_it_looked(tmp_path):
  with pytest.raises(convert.WeightsNotFound, match="looked for"):
    convert.load_state_dict(str(tmp_path / "nope.safetensors"))


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(convert.WeightsNotFound,
                     match=r"timm/poolformer_m36.sail_in1k/resolve/main/model.safetensors"):
    convert.load_state_dict("timm/poolformer_m36.sail_in1k")


def test_convert_cli(s12, tmp_path, capsys):
  from mer_jax import convert as cli
  f = tmp_path / "model.safetensors"
  safetensors.numpy.save_file(torch_sd(s12), str(f))
  out = tmp_path / "p.msgpack"
  assert cli.main(["--model", "poolformer_s12", "--weights", str(f), "--in-chans", "1",
                   "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
  assert out.exists() and "M parameters" in capsys.readouterr().out
  assert cli.main(["--model", "poolformer_s12", "--weights", str(tmp_path / "none.npz")]) == 2
