"""The temporal head: a GRU / mean over a backbone's frame embeddings, whole videos in
frame order, frozen features, and the study's pairing with frame voting."""
from __future__ import annotations

import csv
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import study
from mer_jax.analysis import compare
from mer_jax.models import temporal
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import input_pipeline, recipe, sequences, steps
from e2e import study_args
from tiny import E2E_MODEL


class ToyBackbone(nn.Module):
  """Pooled features of a frame as a registry model with num_classes=0 gives them (the
  study's end-to-end test runs the real one): pixels -> 6 features, cheap to compile."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return jnp.tanh(nn.Dense(6, name="proj")(x.reshape(x.shape[0], -1)))


def init(head, frames, mask, hidden=5, freeze=False):
  model = temporal.VideoClassifier(ToyBackbone(), head, 7, hidden=hidden,
                                   freeze_backbone=freeze)
  return model, jax.jit(model.init)(jax.random.PRNGKey(0), frames, mask)["params"]


def embeddings(params, frames):
  b, t = frames.shape[:2]
  f = ToyBackbone().apply({"params": params["backbone"]},
                         frames.reshape((b * t,) + frames.shape[2:]))
  return np.asarray(f, np.float64).reshape(b, t, -1)


def numpy_gru(x, p):
  """Cho et al.'s GRU as PyTorch writes it: r, z gates; n = tanh(W_in x + b_in + r (W_hn h
  + b_hn)); h' = (1 - z) n + z h; h0 = 0. x [T, D], kernels [in, out]."""
  sig = lambda a: 1 / (1 + np.exp(-a))
  g = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in p.items()}
  h = np.zeros(g["hr"]["kernel"].shape[0])
  for xt in x:
    r = sig(xt @ g["ir"]["kernel"] + g["ir"]["bias"] + h @ g["hr"]["kernel"])
    z = sig(xt @ g["iz"]["kernel"] + g["iz"]["bias"] + h @ g["hz"]["kernel"])
    n = np.tanh(xt @ g["in"]["kernel"] + g["in"]["bias"]
                + r * (h @ g["hn"]["kernel"] + g["hn"]["bias"]))
    h = (1 - z) * n + z * h
  return h


def video(b, t, seed=0, size=16):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, size, size, 3)), jnp.float32)


def test_gru_head_equals_a_numpy_gru_over_the_frame_embeddings():
  frames = video(2, 5)
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.float32)
  model, params = init("gru", frames, mask)
  got = np.asarray(jax.jit(model.apply)({"params": params}, frames, mask))
  x = embeddings(params, frames)
  head = {k: np.asarray(v, np.float64) for k, v in params["head"].items()}
  for i, n in enumerate([5, 3]):
    want = numpy_gru(x[i, :n], params["gru"]) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_mean_head_equals_the_numpy_mean_of_the_real_frames():
  frames = video(2, 4, seed=1)
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], jnp.float32)
  model, params = init("mean", frames, mask)
  got = np.asarray(jax.jit(model.apply)({"params": params}, frames, mask))
  x = embeddings(params, frames)
  head = {k: np.asarray(v, np.float64) for k, v in params["head"].items()}
  for i, n in enumerate([4, 2]):
    np.testing.assert_allclose(got[i], x[i, :n].mean(0) @ head["kernel"] + head["bias"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head", ["gru", "mean"])
def test_padded_frames_change_nothing(head):
  """The same 3 real frames, alone and padded to 7 with noise frames: the same logits."""
  real = video(1, 3, seed=2)
  padded = jnp.concatenate([real, video(1, 4, seed=3) * 50], axis=1)
  model, params = init(head, real, jnp.ones((1, 3)))
  apply = jax.jit(model.apply)
  a = apply({"params": params}, real, jnp.ones((1, 3)))
  b = apply({"params": params}, padded, jnp.array([[1, 1, 1, 0, 0, 0, 0]], jnp.float32))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_features_update_no_backbone_parameter(freeze):
  """One train step (AdamW with weight decay, which would move every parameter):
  frozen, the backbone stays bit-equal and the head moves; end to end, both move."""
  c = recipe.get_config("poolformer_s12+gru" + ("+frozen" if freeze else ""), "m1", "mfs")
  c.optim.lr, c.optim.weight_decay, c.aug.enabled = 1e-2, 0.1, False
  frames = jnp.asarray(np.random.default_rng(4).integers(0, 255, (2, 3, 16, 16, 3)), jnp.uint8)
  batch = {"image": frames, "frame_mask": jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32),
           "label": jnp.array([0, 3]), "mask": jnp.ones(2)}
  model, params = init("gru", frames.astype(jnp.float32), batch["frame_mask"], freeze=freeze)
  c.model.img_size = 16
  tx = steps.make_optimizer(c, 1)
  step = jax.jit(steps.make_train_step(model, c, 1, is_flow=False))
  new, _ = step(steps.fresh_state(params, tx), batch, steps.run_values(c, np.ones(7)))
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, new["params"])
  assert all(jax.tree.leaves(same["backbone"])) == freeze
  assert not any(jax.tree.leaves(same["backbone"])) or freeze
  assert not any(jax.tree.leaves({k: v for k, v in same.items() if k != "backbone"}))


def split_data(lengths, seed=0):
  """A SplitData of videos with `lengths` frames, rows shuffled; each image's pixels hold
  its (video, frame number)."""
  rows = [(v, f) for v, n in enumerate(lengths) for f in range(10, 10 + n)]
  rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
  images = np.array([np.full((2, 2, 1), 16 * v + (f - 10), np.uint8) for v, f in rows])
  return input_pipeline.SplitData(
      images, np.array([v % 7 for v, _ in rows], np.int32),
      np.array([f"sub{v:02d}/EP{v}" for v, _ in rows]), np.array([f"sub{v:02d}" for v, _ in rows]),
      np.array([f for _, f in rows], np.int32), np.array(["casme2"] * len(rows)))


def test_videos_come_whole_in_frame_order_padded_at_the_end():
  videos = sequences.video_split(split_data([3, 5, 1, 4]))
  assert list(videos.video_ids) == ["sub00/EP0", "sub01/EP1", "sub02/EP2", "sub03/EP3"]
  np.testing.assert_array_equal(videos.frame_mask.sum(1), [3, 5, 1, 4])
  np.testing.assert_array_equal(videos.labels, [0, 1, 2, 3])
  seen = {}
  for batch in sequences.train_batches(videos, 2, seed=0, epoch=0):
    assert batch["image"].shape == (2, 5, 2, 2, 1)
    for clip, m, y in zip(batch["image"][..., 0, 0, 0], batch["frame_mask"], batch["label"]):
      v = int(clip[0]) // 16
      n = int(m.sum())
      np.testing.assert_array_equal(clip[:n], 16 * v + np.arange(n))   # frame order
      assert n == [3, 5, 1, 4][v] and y == v and not m[n:].any()       # padding at the end
      seen[v] = True
  assert sorted(seen) == [0, 1, 2, 3]
  batches = list(sequences.eval_batches(videos, 3))
  assert [b["mask"].tolist() for b in batches] == [[1, 1, 1], [1, 0, 0]]


def test_model_specs_and_the_one_line_refusals():
  assert temporal.parse_spec("poolformer_s12+gru+frozen") == ("poolformer_s12", "gru", True)
  assert temporal.spec_of(recipe.get_config("poolformer_s12+mean", "m2", "kfs").model) \
      == "poolformer_s12+mean"
  assert temporal.spec_of({"name": "swin_b"}) == "swin_b"   # a run from before the head
  for bad in ("poolformer_s12+lstm", "poolformer_s12+frozen", "poolformer_s12+gru+mean"):
    with pytest.raises(UsageError, match="BACKBONE\\+HEAD"):
      temporal.parse_spec(bad)
  with pytest.raises(UsageError, match="AF has one frame per video"):
    steps.check_config(recipe.get_config("poolformer_s12+gru", "m2", "af"))
  cells = study.make_cells(["poolformer_s12", "poolformer_s12+gru"], ["m1"], ["af", "kfs"], [0])
  assert [(c.model, c.phase) for c in cells] == [
      ("poolformer_s12", "af"), ("poolformer_s12", "kfs"), ("poolformer_s12+gru", "kfs")]


def test_temporal_pairs_are_each_head_against_its_backbones_vote():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(7), 4)
  ids = np.array([f"v{i:02d}" for i in range(len(y))])

  def cell(pred):
    u = {"video_ids": ids, "y": y, "pred": pred, "subjects": ids, "clusters": ids,
         "macro_f1": compare.metrics.macro_f1(y, pred, 7)}
    return {"units": {(0, 0): u}, "loso": False}

  preds = {k: np.where(rng.random(len(y)) < q, y, rng.integers(0, 7, len(y)))
           for k, q in (("vote", 0.4), ("gru", 0.8), ("m2", 0.5))}
  cells = {("poolformer_s12", "m1", "kfs"): cell(preds["vote"]),
           ("poolformer_s12+gru", "m1", "kfs"): cell(preds["gru"]),
           ("poolformer_s12+gru", "m2", "kfs"): cell(preds["m2"])}   # no m2 vote: unpaired
  (row,) = compare.paired_temporal(cells, n_resamples=500)
  assert (row["model"], row["vote"], row["method"], row["phase"]) == \
      ("poolformer_s12+gru", "poolformer_s12", "m1", "kfs")
  ref = compare.metrics.paired_bootstrap(y, preds["gru"], preds["vote"], 7, n_resamples=500,
                                         seed=0)
  assert row["diff"] == pytest.approx(ref["diff"]) and row["ci"] == pytest.approx(list(ref["ci"]))


# --- end to end: the study trains a GRU beside voting ------------------------------


@pytest.mark.slow
def test_study_trains_a_gru_beside_voting(casme2_small, tmp_path):
  """E2E_MODEL voting and +gru on M2 KFS (the reference run's build), one epoch at
  32 px, batch 2 videos: a KFS video's 3 frames span more than a batch of 2. (MFS windows
  go through the same sequences path: test_videos_come_whole_in_frame_order_padded_at_the_end.)"""
  w = tmp_path / "study"
  args = study_args(casme2_small) + ["--set", "num_epochs=1", "--set", "batch_size=2",
                                     "--set", "eval_batch_size=2"]
  assert study.main(["--workdir", str(w), "--models", f"{E2E_MODEL},{E2E_MODEL}+gru",
                     "--methods", "m2", "--phases", "kfs", "--seeds", "0"] + args) == 0
  vote, gru = w / f"{E2E_MODEL}_m2_kfs/seed0", w / f"{E2E_MODEL}+gru_m2_kfs/seed0"

  def ids(run):
    with open(run / "predictions_test.csv") as f:
      return [r["video_id"] for r in csv.DictReader(f)]

  assert ids(gru) == ids(vote) and len(set(ids(gru))) == len(ids(gru))  # one row per video
  m = json.loads((gru / "metrics.json").read_text())
  assert m["config"]["model"]["temporal"] == "gru"
  assert m["test"]["num_frames"] > 2 * m["test"]["num_videos"]  # longer than a batch of 2
  report = (w / "report.md").read_text()
  section = report.split("## Temporal head vs frame voting")[1].split("##")[0]
  rows = [line for line in section.splitlines() if line.startswith(f"| {E2E_MODEL}+gru")]
  assert len(rows) == 1 and f"| {E2E_MODEL} | M2 | KFS |" in rows[0]
  (pair,) = json.loads((w / "study.json").read_text())["paired_temporal"]
  y_v = json.loads((vote / "metrics.json").read_text())["test"]["macro_f1"]
  y_g = json.loads((gru / "metrics.json").read_text())["test"]["macro_f1"]
  assert pair["diff"] == pytest.approx(y_g - y_v)
