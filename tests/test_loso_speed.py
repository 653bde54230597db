"""What a LOSO study's folds after the first no longer pay (issue 23), checked against the
uncached computation: the fresh train state from one compiled program per process equals
optax's eager init, a fold's split drawn once per process equals splits.loso_folds', and a
build is decoded once and kept within input_pipeline.DECODED_BYTES."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mer_jax.data import splits
from mer_jax.data.labels import EMOTIONS
from mer_jax.data.videos import Video
from mer_jax.plumbing import runtime
from mer_jax.run import input_pipeline, programs, recipe, steps
from tiny import E2E_MODEL


def test_the_compiled_fresh_state_is_optax_init_and_traced_once():
  c = recipe.get_config(E2E_MODEL, "m2", "af")
  c.init.weights, c.model.img_size = "", 32
  prog = programs.get(c, 1, 5, runtime.make_mesh())
  traced = None
  for seed in (0, 1):   # two runs of one key: one trace (this worker may have made it before)
    params = prog.init(np.int32(seed))
    fresh = prog.fresh_state(params)
    traced = programs.TRACES["fresh_state"] if traced is None else traced
    eager = steps.fresh_state(params, steps.make_optimizer(c, 5))
    assert jax.tree.structure(fresh) == jax.tree.structure(eager)
    for x, y in zip(jax.tree.leaves(fresh), jax.tree.leaves(eager)):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert programs.TRACES["fresh_state"] == traced >= 1   # the second run traced nothing


def test_loso_splits_drawn_once_are_the_folds_of_splits(monkeypatch):
  rng = np.random.RandomState(3)
  rows = [(f"sub{s:02d}", f"EP{v}", int(rng.randint(7))) for s in range(1, 7) for v in range(5)]
  n = len(rows)
  part = input_pipeline.SplitData(
      images=np.zeros((n, 2, 2, 1), np.uint8), labels=np.array([r[2] for r in rows], np.int32),
      video_ids=np.array([f"{s}/{e}" for s, e, _ in rows]),
      subjects=np.array([s for s, _, _ in rows]), frame_index=np.zeros(n, np.int32),
      datasets=np.full(n, "casme2"))
  empty = part.take(np.zeros(n, bool))
  monkeypatch.setattr(input_pipeline, "read_build", lambda d, scheme=None: {
      "train": part, "validation": empty, "test": empty})
  videos = [Video(dataset="casme2", subject=s, episode=e, onset=0, apex=0, offset=0,
                  emotion=EMOTIONS[y], frames={}) for s, e, y in rows]
  for k, fold in enumerate(splits.loso_folds(videos)):
    got = input_pipeline.load_splits("build", protocol="loso", fold=k)
    for name, ids in fold.splits().items():
      assert sorted(got[name].video_ids) == sorted(ids), (k, name)


def test_decoded_builds_are_kept_up_to_their_byte_budget(casme2_small, monkeypatch):
  """A build read again is the decoded one kept (no second decode); past DECODED_BYTES the
  oldest goes first, on any read, and the newest always stays; an evicted build reads back
  equal."""
  from mer_jax.data import build
  manual, tfds_dir = casme2_small
  a, b = (build.ensure_built(c, str(manual), str(tfds_dir), log=lambda *_: None)
          for c in ("m2_af", "m2_kfs"))
  input_pipeline.read_build(b)   # decoded before a: read again below, it is a kept one
  first = input_pipeline.read_build(a)["train"]
  assert input_pipeline.read_build(a)["train"] is first                  # kept, not decoded again
  size_a = sum(p.images.nbytes for p in input_pipeline.read_build(a).values())
  monkeypatch.setattr(input_pipeline, "DECODED_BYTES", size_a)           # room for a alone
  input_pipeline.read_build(b)                                           # kept: still evicts
  assert a not in input_pipeline.decoded_builds() and input_pipeline.decoded_builds()[-1] == b
  again = input_pipeline.read_build(a)["train"]                          # decoded anew
  assert again is not first and np.array_equal(again.images, first.images)
  assert input_pipeline.decoded_builds()[-1] == a and b not in input_pipeline.decoded_builds()
