"""data.train_fraction: a stratified, seeded subsample of the training videos only."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from mer_jax.data import splits
from mer_jax.data.casme2 import EMOTIONS
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
