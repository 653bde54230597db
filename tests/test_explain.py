"""mer_jax.explain: attributions, rollout, Grad-CAM, where the maps fall, the program."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import explain, metrics
from mer_jax.explain import where

H = W = 24
BOX = (6, 4, 15, 13)  # left, top, right, bottom


def _box_mask():
  m = np.zeros((H, W), np.float32)
  m[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 1
  return m


def _masked_conv_net(mask, seed=0, k=4):
  """logits = W2 tanh(mean-pool(relu(conv(mask * x)))) ** 2: reads only where mask is 1."""
  r = np.random.default_rng(seed)
  kernel = jnp.asarray(r.normal(size=(3, 3, 3, 8)) / 3, jnp.float32)
  w2 = jnp.asarray(r.normal(size=(8, k)), jnp.float32)
  mask = jnp.asarray(mask)[None, :, :, None]

  def fn(x):
    y = jax.lax.conv_general_dilated(x * mask, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(jax.nn.relu(y).mean(axis=(1, 2)))
    return (h @ w2) ** 2 + h @ w2
  return fn


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).uniform(0, 1, (5, H, W, 3)).astype(np.float32)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_mass_follows_what_the_function_reads(images, method):
  inside, outside = _box_mask(), 1 - _box_mask()
  boxes = np.tile(BOX, (len(images), 1))
  for mask, want_in in ((inside, True), (outside, False)):
    maps = explain.attribute(_masked_conv_net(mask), images, [0, 1, 2, 3, 0], method,
                             steps=16, samples=8)
    assert maps.shape == images.shape[:3]
    share, chance = where.face_mass(maps, boxes)
    assert np.allclose(chance, inside.mean())
    if want_in:
      assert (share >= 0.95).all(), share
    else:
      assert (share <= 0.05).all(), share


def test_integrated_gradients_completeness(images):
  fn = _masked_conv_net(np.ones((H, W), np.float32), seed=3)
  target = np.array([0, 1, 2, 3, 1])
  baseline = np.full_like(images[:1], 0.25)
  maps = explain.attribute(fn, images, target, steps=64, baseline=baseline)
  logits = np.asarray(fn(images))
  base = np.asarray(fn(np.broadcast_to(baseline, images.shape)))
  diff = logits[np.arange(5), target] - base[np.arange(5), target]
  assert np.abs(diff).min() > 1e-2
  np.testing.assert_allclose(maps.sum(axis=(1, 2)), diff, rtol=2e-3, atol=1e-4)


def test_smoothgrad_seeded_and_batch_independent(images):
  fn = _masked_conv_net(np.ones((H, W), np.float32))
  a = explain.attribute(fn, images, 0, "smoothgrad", samples=4, seed=7, batch_size=2)
  b = explain.attribute(fn, images, 0, "smoothgrad", samples=4, seed=7, batch_size=5)
  c = explain.attribute(fn, images, 0, "smoothgrad", samples=4, seed=8, batch_size=5)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not np.allclose(a, c)
  g = explain.attribute(fn, images, 0, "gradient")
  ref = jax.grad(lambda x: fn(x)[:, 0].sum())(images)
  np.testing.assert_allclose(g, np.abs(np.asarray(ref)).sum(-1), rtol=1e-5)


def test_bound_weights_are_arguments_of_the_program(images, monkeypatch):
  """A Partial's bound weights reach the compiled program as its arguments (not compiled
  in as constants), with the maps of the same function closed over its weights."""
  r = np.random.default_rng(4)
  params = {"kernel": (r.normal(size=(3, 3, 3, 8)) / 3).astype(np.float32),
            "w2": r.normal(size=(8, 4)).astype(np.float32)}

  def apply(p, x):
    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(jax.nn.relu(y).mean(axis=(1, 2))) @ p["w2"]

  calls, jit = [], jax.jit

  def recording_jit(f, **kw):
    compiled = jit(f, **kw)

    def call(*args):
      calls.append(jax.tree_util.tree_leaves(args))
      return compiled(*args)
    return call
  closed = explain.attribute(lambda x: apply(params, x), images, 1, steps=8)
  monkeypatch.setattr(jax, "jit", recording_jit)
  maps = explain.attribute(jax.tree_util.Partial(apply, params), images, 1, steps=8,
                           batch_size=3)
  monkeypatch.undo()
  np.testing.assert_allclose(maps, closed, rtol=1e-5, atol=1e-6)
  assert len(calls) == 2   # two batches of 3
  for leaves in calls:
    assert any(leaf is params["kernel"] for leaf in leaves)
    assert any(leaf is params["w2"] for leaf in leaves)


def _numpy_rollout(attns, residual=0.5):
  out = None
  for a in attns:
    a = np.asarray(a, np.float64).mean(1)
    a = residual * np.eye(a.shape[-1]) + (1 - residual) * a
    a = a / a.sum(-1, keepdims=True)
    out = a if out is None else np.einsum("nij,njk->nik", a, out)
  return out


@pytest.mark.slow   # the tiny ViT's compiles (jitted: eager flax compiles op by op)
def test_attention_rollout_matches_numpy():
  from mer_jax.models.vit import VisionTransformer
  model = VisionTransformer(img_size=32, patch_size=8, embed_dim=8, depth=2, num_heads=2,
                            num_classes=4)
  x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]

  @jax.jit
  def both(x):
    return model.apply({"params": params}, x), model.apply({"params": params}, x,
                                                           mutable=["intermediates"])
  plain, (logits, state) = both(x)
  np.testing.assert_array_equal(plain, logits)      # sowing changes nothing
  attns = [state["intermediates"][f"blocks_{i}"]["attn"]["attention"][0] for i in range(2)]
  assert attns[0].shape == (3, 2, 17, 17)
  maps = explain.attention_rollout(model, params, x, batch_size=2)
  ref = _numpy_rollout(attns)[:, 0, 1:].reshape(3, 4, 4)
  up = np.asarray(jax.image.resize(ref, (3, 32, 32), "bilinear"))
  np.testing.assert_allclose(maps, up, rtol=1e-4, atol=1e-6)


@pytest.mark.slow   # the model's compiles (jitted: eager flax compiles op by op)
def test_grad_cam_shape_and_by_hand():
  from mer_jax.models.poolformer import PoolFormer
  model = PoolFormer(depths=(1, 1), dims=(8, 16), num_classes=3, in_chans=1)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  maps = explain.grad_cam(model, params, x, [2, 1])
  assert maps.shape == (2, 32, 32) and (maps >= 0).all()
  # by hand: the last block's output A (4x4 at 32 px, stride 8) from capture_intermediates,
  # its gradient from running the head on A
  logits, st = jax.jit(lambda x: model.apply({"params": params}, x, capture_intermediates=True,
                                             mutable=["intermediates"]))(x)
  a = st["intermediates"][model.last_stage]["__call__"][0]

  def head(a):
    f = a.mean(axis=(1, 2))
    mu, var = f.mean(-1, keepdims=True), f.var(-1, keepdims=True)
    f = (f - mu) / jnp.sqrt(var + 1e-6) * params["head_norm"]["scale"] + params["head_norm"]["bias"]
    return f @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(head(a), logits, rtol=1e-4, atol=1e-5)
  g = jax.grad(lambda a: head(a)[np.arange(2), np.array([2, 1])].sum())(a)
  cam = np.maximum((np.asarray(g).mean((1, 2), keepdims=True) * np.asarray(a)).sum(-1), 0)
  assert cam.shape == (2, 4, 4) and cam.max() > 0
  up = np.asarray(jax.image.resize(cam, (2, 32, 32), "bilinear"))
  np.testing.assert_allclose(maps, up, rtol=1e-4, atol=1e-6)
  # bilinear, pixel centres aligned: output pixel 8i+4 lies 1/16 past input pixel i's centre
  np.testing.assert_allclose(maps[:, 4:28:8, 4:28:8],
                             (15 * cam[:, :3, :3] + cam[:, 1:, :3]) / 16 * 15 / 16
                             + (15 * cam[:, :3, 1:] + cam[:, 1:, 1:]) / 16 / 16,
                             rtol=1e-4, atol=1e-6)


def test_face_and_region_mass_by_hand():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(2, 20, 30))
  share, chance = where.face_mass(maps, [(2.4, 3, 10, 8.6), (0, 0, 30, 20)])
  pos = np.clip(maps, 0, None)
  # pixel centres x+0.5 in [2.4, 10) -> columns 2..9, y+0.5 in [3, 8.6) -> rows 3..8
  np.testing.assert_allclose(share[0], pos[0, 3:9, 2:10].sum() / pos[0].sum())
  np.testing.assert_allclose(chance, [6 * 8 / 600, 1.0])
  np.testing.assert_allclose(share[1], 1.0)
  # region masses: landmarks placed as a face, regions checked point by point
  from scipy.spatial import Delaunay
  pts = np.zeros((68, 2))
  pts[:17] = np.c_[np.linspace(2, 28, 17), np.full(17, 15)]          # jaw (unused)
  pts[17:27] = np.c_[np.r_[np.linspace(5, 12, 5), np.linspace(18, 25, 5)], np.full(10, 4.0)]
  pts[36:42] = np.c_[[6, 8, 10, 11, 9, 7], [6, 5.5, 5.5, 6, 6.5, 6.5]]
  pts[42:48] = np.c_[[19, 21, 23, 24, 22, 20], [6, 5.5, 5.5, 6, 6.5, 6.5]]
  pts[27:36] = np.c_[[15, 15, 15, 15, 13, 14, 15, 16, 17], [6, 7, 8, 9, 10, 10.3, 10.5, 10.3, 10]]
  pts[48:68] = np.c_[np.linspace(11, 19, 20), 13 + np.sin(np.linspace(0, 6.28, 20))]
  out = where.region_mass(maps[:1], pts[None], pad=0.0)
  ys, xs = np.mgrid[0:20, 0:30]
  centres = np.c_[xs.ravel() + 0.5, ys.ravel() + 0.5]
  for name, idx in [("nose", range(27, 36)), ("mouth", range(48, 68))]:
    inside = (Delaunay(pts[list(idx)]).find_simplex(centres) >= 0).reshape(20, 30)
    np.testing.assert_allclose(out[name][0][0], (pos[0] * inside).sum() / pos[0].sum(), rtol=1e-9)
    np.testing.assert_allclose(out[name][1][0], inside.mean())
  left = (Delaunay(pts[list(range(17, 22)) + list(range(36, 42))]).find_simplex(centres) >= 0)
  right = (Delaunay(pts[list(range(22, 27)) + list(range(42, 48))]).find_simplex(centres) >= 0)
  eyes = (left | right).reshape(20, 30)
  np.testing.assert_allclose(out["eyes_brows"][0][0], (pos[0] * eyes).sum() / pos[0].sum())
  padded = where.region_masks(pts, (20, 30))
  assert (padded["nose"] >= (Delaunay(pts[27:36]).find_simplex(centres) >= 0).reshape(20, 30)).all()
  assert padded["nose"].sum() > (Delaunay(pts[27:36]).find_simplex(centres) >= 0).sum()
  nan = where.region_mass(maps[:1], np.full((1, 68, 2), np.nan))
  assert np.isnan(nan["nose"][0][0])


def test_deletion_curve_on_a_toy_model():
  """The toy model's class is the most textured quadrant; the map points at that
  quadrant, so removing its top pixels breaks the model sooner than random removal."""
  rng = np.random.default_rng(0)
  n, s = 16, 16
  labels = np.arange(n) // 2 % 4            # two frames per video, four classes
  vids = np.array([f"v{i // 2}" for i in range(n)])
  images = rng.uniform(0, 10, (n, s, s, 1))
  maps = rng.uniform(0, 1, (n, s, s))
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 2)
    images[i, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] = rng.uniform(0, 255, (8, 8, 1))
    maps[i, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1
  images[1::2], maps[1::2] = images[::2], maps[::2]   # a video's two frames are alike

  def predict(x):
    q = np.stack([x[:, :8, :8].std((1, 2, 3)), x[:, :8, 8:].std((1, 2, 3)),
                  x[:, 8:, :8].std((1, 2, 3)), x[:, 8:, 8:].std((1, 2, 3))], 1)
    return np.exp(q / 10) / np.exp(q / 10).sum(1, keepdims=True)

  fr = (0.0, 0.1, 0.25, 0.5, 1.0)
  out = where.deletion_curve(predict, images, maps, labels, vids, fractions=fr, seed=0)
  assert out["macro_f1"][0] == 1.0
  # by hand at 25 %: the map's top quarter is the textured quadrant, set to the image mean
  gone = images.copy()
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 2)
    gone[i, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] = images[i].mean()
  votes = predict(gone).argmax(1).reshape(-1, 2)
  assert (votes[:, 0] == votes[:, 1]).all()     # a video's frames agree: no tie-breaking
  assert out["macro_f1"][2] == pytest.approx(metrics.macro_f1(labels[::2], votes[:, 0], 4))
  assert out["macro_f1"][2] < 0.5
  assert out["random_macro_f1"][1] == 1.0
  assert out["auc"] < out["random_auc"]
  np.testing.assert_allclose(out["auc"], np.trapezoid(out["macro_f1"], fr))


@pytest.mark.slow
def test_program_on_the_reference_run(reference_run, tmp_path):
  """The program end to end on the session's trained run (M2 AF, synthetic faces):
  explain.json's face mass is recomputed from maps.npz, and the boxes lie in the image."""
  import shutil
  from mer_jax.explain.__main__ import main
  run = tmp_path / "run"
  shutil.copytree(reference_run[0], run)
  assert main(["--workdir", str(run), "--method", "integrated_gradients,grad_cam",
               "--steps", "2", "--max_videos", "2"]) == 0
  out = json.loads((run / "explain" / "explain.json").read_text())
  z = np.load(run / "explain" / "maps.npz")
  assert set(out["attributions"]) == {"integrated_gradients", "grad_cam"}
  assert (run / "explain" / "explain.png").stat().st_size > 0
  boxes = z["boxes"]
  assert np.isfinite(boxes).all() and (boxes[:, :2] >= -1).all() and (boxes[:, 2:] <= 225).all()
  for name, entry in out["attributions"].items():
    maps = z[f"map_{name}"].astype(np.float32)
    share, chance = where.face_mass(maps, boxes)
    assert entry["face_mass"]["all"]["mass"] == pytest.approx(np.nanmean(share), abs=2e-3)
    assert entry["face_mass"]["all"]["chance"] == pytest.approx(chance.mean(), rel=1e-6)
    assert 0.3 < entry["face_mass"]["all"]["chance"] < 1
    assert len(entry["deletion"]["macro_f1"]) == len(where.DELETION_FRACTIONS)
    vids = np.unique(z["video_ids"])
    assert entry["deletion"]["video_ids"] == list(vids) and len(vids) == out["videos"] == 2
    seen = [share[(z["video_ids"] == v) & np.isfinite(share)] for v in vids]
    np.testing.assert_allclose(   # None: a video whose map has no positive mass anywhere
        [np.nan if m is None else m for m in entry["per_video"]["face_mass"]],
        [x.mean() if x.size else np.nan for x in seen], atol=2e-3)
  from mer_jax.plumbing.errors import UsageError
  with pytest.raises(UsageError, match="grad_cam"):
    main(["--workdir", str(run), "--method", "attention_rollout"])


# --- the study report's section (mer_jax.analysis.looking), on hand-written runs ---


def _stratified_draw(y, b, seed):
  """metrics' documented stratified draw: sample j becomes the u-th sample (index
  order) of its own class, u = rng.integers(0, n_{y_j}, (B, n))."""
  members = [np.flatnonzero(y == k) for k in range(y.max() + 1)]
  u = np.random.default_rng(seed).integers(0, np.bincount(y)[y], (b, len(y)))
  return np.array([[members[y[j]][u[r, j]] for j in range(len(y))] for r in range(b)])


def _sk_macro_f1(y, p):
  from sklearn.metrics import f1_score
  return f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)


def test_bootstrap_mean_and_curves_on_the_stratified_draw():
  rng = np.random.default_rng(2)
  y = np.array([0] * 5 + [1] * 4 + [2] * 3)
  v = rng.normal(size=(12, 2))
  v[3, 1] = np.nan
  idx = _stratified_draw(y, 20, seed=9)
  got = metrics.bootstrap_mean(v, y, 7, 20, seed=9)
  ref = np.array([np.nanmean(v[i], axis=0) for i in idx])
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  preds = rng.integers(0, 3, (3, 12))
  f = metrics.bootstrap_macro_f1(y, preds, 7, 20, seed=9)
  assert f.shape == (20, 3)
  np.testing.assert_allclose(f, [[_sk_macro_f1(y[i], p[i]) for p in preds] for i in idx])


def _entry(y, rng):
  """An explain.json attribution entry of len(y) videos (3 deletion fractions)."""
  n = len(y)
  pv = {"face_mass": list(rng.uniform(0.4, 0.9, n)), "face_chance": list(rng.uniform(0.2, 0.3, n))}
  pv["face_mass"][2] = pv["face_chance"][2] = None          # a video without a face box
  for k in ("eyes_brows", "nose", "mouth"):
    pv[k], pv[f"{k}_chance"] = list(rng.uniform(0, 0.4, n)), list(rng.uniform(0, 0.1, n))
  flip = lambda acc: [int(t) if rng.random() < acc else int((t + 1) % 7) for t in y]
  return {"per_video": pv, "deletion": {
      "fractions": [0.0, 0.5, 1.0], "video_ids": [f"v{i}" for i in range(n)],
      "video_labels": [int(t) for t in y], "predictions": [flip(1.0), flip(0.3), flip(0.1)],
      "random_predictions": [flip(1.0), flip(0.9), flip(0.6)]}}


def test_looking_summarise_by_hand():
  from mer_jax.analysis import looking
  rng = np.random.default_rng(4)
  y = np.array([0] * 6 + [1] * 4 + [2] * 4)
  e = _entry(y, rng)
  s = looking.summarise(e, "m2", n_resamples=25, seed=0)
  d = e["deletion"]
  fr = np.array(d["fractions"])
  auc = lambda preds, i: np.trapezoid([_sk_macro_f1(y[i], np.array(p)[i]) for p in preds], fr)
  full = np.arange(len(y))
  assert s["deletion"]["auc"] == pytest.approx(auc(d["predictions"], full))
  assert s["deletion"]["random_auc"] == pytest.approx(auc(d["random_predictions"], full))
  idx = _stratified_draw(y, 25, seed=0)
  diffs = [auc(d["predictions"], i) - auc(d["random_predictions"], i) for i in idx]
  np.testing.assert_allclose(s["deletion"]["diff_ci"], np.percentile(diffs, [2.5, 97.5]))
  assert s["deletion"]["faithful"] == (np.percentile(diffs, 97.5) < 0)
  m = np.array([np.nan if x is None else x for x in e["per_video"]["face_mass"]])
  c = np.array([np.nan if x is None else x for x in e["per_video"]["face_chance"]])
  assert s["face"]["all"]["mass"] == pytest.approx(np.nanmean(m))
  assert s["face"]["all"]["videos"] == len(y) - 1
  np.testing.assert_allclose(s["face"]["all"]["diff_ci"],
                             np.percentile([np.nanmean((m - c)[i]) for i in idx], [2.5, 97.5]))
  assert s["face"]["disgust"]["mass"] == pytest.approx(np.mean(m[6:10]))
  assert s["nose"]["all"]["chance"] == pytest.approx(np.mean(e["per_video"]["nose_chance"]))
  assert s["verdict"] == "face"         # every mass > 0.4 > chance, mean above one half
  assert "nose" not in looking.summarise(e, "m1", n_resamples=10)   # M1: face mass only
  assert [looking.verdict(*a) for a in [(0.6, (0.1, 0.2)), (0.4, (0.1, 0.2)),
                                        (0.6, (-0.1, 0.2)), (0.1, (-0.2, -0.1))]] == [
      "face", "both", "both", "background"]


def test_report_says_where_the_models_look(tmp_path):
  """A study of two M1 cells, the validation-better one explained: runs_to_explain picks
  it, and report.md / study.json carry its numbers and the plain statement for M1."""
  import csv
  from mer_jax import study
  from mer_jax.analysis import looking, tables
  from mer_jax.data.labels import EMOTIONS
  rng = np.random.default_rng(5)
  y = np.array([0] * 6 + [1] * 4 + [2] * 4)
  for model, val in (("poolformer_s12", 0.7), ("vit_b32", 0.4)):
    w = study.Cell(model, "m1", "af", 0).workdir(tmp_path)
    w.mkdir(parents=True)
    (w / "metrics.json").write_text(json.dumps({
        "config": study.cell_config(study.Cell(model, "m1", "af", 0), [], "paper").to_dict(),
        "validation": {"macro_f1": val}, "test": {"macro_f1": 1.0}}))
    with open(w / "predictions_test.csv", "w", newline="") as f:
      csv.writer(f).writerows([("video_id", "label", "pred")] + [
          (f"v{i}", EMOTIONS[t], EMOTIONS[t]) for i, t in enumerate(y)])
  (chosen,) = looking.runs_to_explain(tmp_path)
  assert chosen.parent.name == "poolformer_s12_m1_af"
  (chosen / "explain").mkdir()
  (chosen / "explain" / "explain.json").write_text(json.dumps(
      {"split": "test", "attributions": {"integrated_gradients": _entry(y, rng)}}))
  text = tables.report(tmp_path, n_resamples=20)
  assert "## Where the models look" in text and looking.VERDICT in text
  want = looking.summarise(_entry(y, np.random.default_rng(5)), "m1", 20)
  line = next(ln for ln in text.splitlines() if ln.startswith("- poolformer_s12 M1 AF"))
  assert f"**{want['verdict']}**" in line and f"{want['face']['all']['mass']:.3f}" in line
  back = json.loads((tmp_path / "study.json").read_text())["where_models_look"]
  got = back["poolformer_s12_m1_af/seed0"]["integrated_gradients"]
  assert got["deletion"]["auc"] == pytest.approx(want["deletion"]["auc"])
  assert got["face"]["all"]["diff_ci"] == pytest.approx(list(want["face"]["all"]["diff_ci"]))
