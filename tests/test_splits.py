"""The paper's stratified 201/26/28 split and LOSO folds."""
import collections
import subprocess
import sys

import numpy as np
import pytest

from mer_jax.data import splits
from mer_jax.data.casme2 import EMOTIONS, Video

REAL_COUNTS = dict(others=99, disgust=63, happiness=32, repression=27, surprise=25, sadness=7,
                   fear=2)


def casme2_like(counts=REAL_COUNTS, subjects=26, seed=0):
  rng = np.random.default_rng(seed)
  vs, i = [], 0
  for e, c in counts.items():
    for _ in range(c):
      s = int(rng.integers(1, subjects + 1))
      vs.append(Video(f"sub{s:02d}", f"EP{i:03d}_01", 1, 5, 9, e, {}))
      i += 1
  return vs


def test_paper_sizes_and_partition():
  vs = casme2_like()
  s = splits.paper_split(vs)
  assert tuple(len(s[k]) for k in splits.SPLITS) == (201, 26, 28)
  all_ids = [i for k in splits.SPLITS for i in s[k]]
  assert len(all_ids) == len(set(all_ids)) == 255
  assert set(all_ids) == {v.video_id for v in vs}


def test_stratification_close_to_proportional():
  vs = casme2_like()
  label = {v.video_id: v.emotion for v in vs}
  s = splits.paper_split(vs)
  for name, size in zip(splits.SPLITS, (201, 26, 28)):
    got = collections.Counter(label[i] for i in s[name])
    for e, c in REAL_COUNTS.items():
      assert abs(got[e] - c * size / 255) < 1.0 + 1e-9, (name, e, got[e])
  train = collections.Counter(label[i] for i in s["train"])
  assert all(train[e] >= 1 for e in EMOTIONS)


def test_other_sizes_scale():
  vs = casme2_like({e: max(1, c // 10) for e, c in REAL_COUNTS.items()})
  s = splits.paper_split(vs)
  n = len(vs)
  assert len(s["test"]) == round(n * 28 / 255) and len(s["validation"]) == round(n * 26 / 255)


def test_deterministic_and_seeded():
  vs = casme2_like()
  assert splits.paper_split(vs) == splits.paper_split(list(reversed(vs)))
  assert splits.paper_split(vs, seed=1) != splits.paper_split(vs)


def test_same_split_in_a_process_with_another_hash_seed():
  code = ("import sys; sys.path.insert(0, 'tests'); from test_splits import casme2_like; "
          "from mer_jax.data import splits; print(sorted(splits.paper_split(casme2_like())['test']))")
  outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": h, "PATH": "/usr/bin:/bin"}, check=True).stdout
          for h in ("1", "12345")}
  assert len(outs) == 1
  assert outs.pop().strip() == str(sorted(splits.paper_split(casme2_like())["test"]))


def test_loso_never_leaks_the_test_subject():
  vs = casme2_like()
  subject = {v.video_id: v.subject for v in vs}
  folds = splits.loso_folds(vs)
  assert [f.subject for f in folds] == sorted({v.subject for v in vs})
  for f in folds:
    assert {subject[i] for i in f.test} == {f.subject}
    assert f.subject not in {subject[i] for i in f.train + f.validation}
    assert set(f.train) | set(f.validation) | set(f.test) == set(subject)
    assert not set(f.train) & set(f.validation)
    assert len(f.validation) == round(0.1 * (len(vs) - len(f.test)))
  assert sorted(i for f in folds for i in f.test) == sorted(subject)


def test_split_lookup():
  s = splits.paper_split(casme2_like())
  look = splits.split_lookup(s)
  assert len(look) == 255 and collections.Counter(look.values())["test"] == 28
