"""data.train_fraction: a stratified, seeded subsample of the training videos only."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from mer_jax.data import splits
from mer_jax.data.labels import EMOTIONS
from mer_jax.run import input_pipeline
from test_splits import casme2_like


def _split_data(videos, ids, frames=3):
  """SplitData of `ids` (3 frames each; 1x1 images)."""
  by_id = {v.video_id: v for v in videos}
  rows = [(i, by_id[i]) for i in ids for _ in range(frames)]
  n = len(rows)
  return input_pipeline.SplitData(
      images=np.zeros((n, 1, 1, 1), np.uint8),
      labels=np.array([EMOTIONS.index(v.emotion) for _, v in rows], np.int32),
      video_ids=np.array([i for i, _ in rows]), subjects=np.array([v.subject for _, v in rows]),
      frame_index=np.zeros(n, np.int32), datasets=np.full(n, "casme2"))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.8])
def test_subsample_is_stratified_seeded_and_leaves_validation_and_test(fraction):
  videos = casme2_like()
  held = splits.paper_split(videos)
  data = {k: _split_data(videos, held[k]) for k in splits.SPLITS}
  cut = input_pipeline.subsample_train(data, fraction, seed=3)
  for k in ("validation", "test"):                     # untouched, frame for frame
    assert all(np.array_equal(getattr(cut[k], f), getattr(data[k], f))
               for f in ("labels", "video_ids", "subjects"))
  kept = sorted(set(cut["train"].video_ids))
  assert set(kept) <= set(held["train"])               # training videos only
  assert not set(kept) & (set(held["validation"]) | set(held["test"]))
  assert len(cut["train"]) == 3 * len(kept)            # whole videos (every frame) kept
  # Per class round(fraction * count), half up, at least one (brute force in decimals).
  emotion = {v.video_id: v.emotion for v in videos}
  have = collections.Counter(emotion[i] for i in held["train"])
  got = collections.Counter(emotion[i] for i in kept)
  for e, n in have.items():
    assert got[e] == max(1, math.floor(fraction * n + 0.5)), e
  # Deterministic for a seed, another draw for another seed; a smaller fraction's videos
  # are a subset of a larger one's (one learning curve, nested sets).
  assert splits.train_subsample(
      [v for v in videos if v.video_id in held["train"]], fraction, 3) == tuple(kept)
  assert splits.train_subsample(
      [v for v in videos if v.video_id in held["train"]], fraction, 4) != tuple(kept)
  larger = splits.train_subsample([v for v in videos if v.video_id in held["train"]],
                                  min(1.0, fraction + 0.1), 3)
  assert set(kept) <= set(larger)


def test_fraction_one_is_every_video_and_bad_fractions_are_user_errors():
  videos = casme2_like()
  data = {k: _split_data(videos, ids) for k, ids in splits.paper_split(videos).items()}
  assert input_pipeline.subsample_train(data, 1.0, seed=0) is data
  for bad in (0, -0.5, 1.5, True, "0.5"):
    with pytest.raises(splits.SplitError, match=r"data.train_fraction must be in \(0, 1\]"):
      splits.check_train_fraction(bad)


def test_size_report_pairs_m1_with_each_method_per_fraction(tmp_path):
  """Two fractions x M1, M2, M3 on hand-written runs (no training): size.json's M1 − X equals
  sklearn's macro-F1 difference on the saved predictions and metrics.paired_bootstrap's CI;
  the x axis is the runs' own train_videos."""
  import csv
  import json
  from sklearn.metrics import f1_score
  from mer_jax import metrics, study
  from mer_jax.analysis import size
  rng = np.random.default_rng(1)
  ids = np.array([f"sub{i % 5:02d}/EP{i:02d}" for i in range(24)])
  y = rng.integers(0, 4, 24)
  preds = {}
  for fraction, n_train in ((0.5, 100), (1.0, 201)):
    for method, acc in (("m1", 0.8), ("m2", 0.5), ("m3", 0.6)):
      p = np.where(rng.random(24) < acc, y, rng.integers(0, 4, 24))
      preds[(fraction, method)] = p
      cell = study.Cell("poolformer_s12", method, "af", 0)
      w = cell.workdir(size.fraction_dir(tmp_path, fraction))
      w.mkdir(parents=True)
      config = study.cell_config(cell, [f"data.train_fraction={fraction:g}"], "paper")
      (w / "metrics.json").write_text(json.dumps({
          "config": config.to_dict(), "validation": {"macro_f1": 0.5},
          "test": {"macro_f1": 0.0}, "train_videos": n_train}))
      with open(w / "predictions_test.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["video_id", "label", "pred"])
        out.writerows([(v, EMOTIONS[t], EMOTIONS[q]) for v, t, q in zip(ids, y, p)])
  assert size.fractions_of(tmp_path) == [0.5, 1.0]
  size.report(tmp_path)   # what study --report_only does on such a root (after each folder's)
  rows = json.loads((tmp_path / "size.json").read_text())["differences"]
  assert sorted((r["fraction"], r["b"]) for r in rows) == [
      (0.5, "m2"), (0.5, "m3"), (1.0, "m2"), (1.0, "m3")]
  sk = lambda p: f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)
  for r in rows:
    assert r["train_videos"] == (100 if r["fraction"] == 0.5 else 201)
    a, b = preds[(r["fraction"], "m1")], preds[(r["fraction"], r["b"])]
    assert r["diff"] == pytest.approx(sk(a) - sk(b))
    o = np.argsort(ids)
    ref = metrics.paired_bootstrap(y[o], a[o], b[o], 7, n_resamples=10000)
    assert r["ci"] == pytest.approx(list(ref["ci"])) and r["p_value"] == ref["p_value"]
  text = (tmp_path / "size_report.md").read_text()
  assert "| 0.5 | 100.0 | poolformer_s12 | AF | M1 − M2 |" in text
  assert (tmp_path / "fig_size.png").stat().st_size > 1000
