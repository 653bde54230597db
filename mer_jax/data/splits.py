"""Video-level splits: the paper's stratified 201/26/28 split and leave-one-subject-out folds.

Allocation rule (both protocols): the split sizes are the paper's fractions of
the number of videos (28/255 test, 26/255 validation, the rest train; exactly
201/26/28 for CASME II's 255), and each split's size is shared among the
emotions by largest remainder of its proportional quota (ties by EMOTIONS
order), never taking a class's last training video. Inside a class the videos,
sorted by id, are shuffled by numpy's PCG64 seeded with (seed, class index),
so a split depends only on the video ids, labels and seed: the same on every
machine, Python hash seed and numpy version that keeps PCG64's stream.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from mer_jax.data.casme2 import EMOTIONS

SPLITS = ("train", "validation", "test")
PAPER_SIZES = (201, 26, 28)  # of 255 videos
PAPER_SEED = 0


def _quota(counts: dict[str, int], total: int, cap: dict[str, int]) -> dict[str, int]:
  """Shares `total` among classes in proportion to `counts` (largest remainder), within `cap`."""
  n = sum(counts.values())
  if n == 0 or total <= 0:
    return {e: 0 for e in counts}
  exact = {e: counts[e] * total / n for e in counts}
  take = {e: min(int(np.floor(exact[e])), cap[e]) for e in counts}
  order = sorted(counts, key=lambda e: (-(exact[e] - np.floor(exact[e])), EMOTIONS.index(e)))
  while sum(take.values()) < total:
    grew = False
    for e in order:
      if sum(take.values()) == total:
        break
      if take[e] < cap[e]:
        take[e] += 1
        grew = True
    if not grew:
      break
  return take


def _by_class(videos) -> dict[str, list[str]]:
  out = {e: [] for e in EMOTIONS}
  for v in videos:
    out[v.emotion].append(v.video_id)
  return {e: sorted(ids) for e, ids in out.items()}


def _stratified(videos, sizes: dict[str, int], seed: int) -> dict[str, tuple[str, ...]]:
  """Splits `videos` into the named held-out sizes, the rest to "train"."""
  groups = _by_class(videos)
  counts = {e: len(ids) for e, ids in groups.items()}
  cap = {e: max(0, c - 1) if c >= 2 else 0 for e, c in counts.items()}  # keep one for train
  out = {name: [] for name in (*sizes, "train")}
  shuffled = {}
  for k, e in enumerate(EMOTIONS):
    ids = groups[e]
    perm = np.random.Generator(np.random.PCG64([seed, k])).permutation(len(ids))
    shuffled[e] = [ids[i] for i in perm]
  used = {e: 0 for e in EMOTIONS}
  for name, size in sizes.items():
    remaining_cap = {e: cap[e] - used[e] for e in EMOTIONS}
    take = _quota(counts, size, remaining_cap)
    for e in EMOTIONS:
      out[name] += shuffled[e][used[e]:used[e] + take[e]]
      used[e] += take[e]
  for e in EMOTIONS:
    out["train"] += shuffled[e][used[e]:]
  return {name: tuple(sorted(ids)) for name, ids in out.items()}


def paper_sizes(n: int) -> tuple[int, int, int]:
  """(train, validation, test) for n videos at the paper's 201/26/28 proportions."""
  total = sum(PAPER_SIZES)
  test = int(round(n * PAPER_SIZES[2] / total))
  val = int(round(n * PAPER_SIZES[1] / total))
  return n - val - test, val, test


def paper_split(videos: Sequence, seed: int = PAPER_SEED) -> dict[str, tuple[str, ...]]:
  """{"train", "validation", "test"} -> sorted video ids; stratified by emotion."""
  _, val, test = paper_sizes(len(videos))
  out = _stratified(videos, {"test": test, "validation": val}, seed)
  return {name: out[name] for name in SPLITS}


@dataclasses.dataclass(frozen=True)
class Fold:
  subject: str                 # the held-out subject
  train: tuple[str, ...]
  validation: tuple[str, ...]  # drawn from the training subjects only
  test: tuple[str, ...]


def loso_folds(videos: Sequence, val_fraction: float = 0.1,
               seed: int = PAPER_SEED) -> list[Fold]:
  """Leave-one-subject-out: one fold per subject, in subject order.

  Model selection must never see the held-out subject, so the validation
  videos (early stopping) are a stratified draw from the other subjects.
  """
  subjects = sorted({v.subject for v in videos})
  folds = []
  for k, s in enumerate(subjects):
    rest = [v for v in videos if v.subject != s]
    n_val = max(1, int(round(val_fraction * len(rest)))) if rest else 0
    out = _stratified(rest, {"validation": n_val}, seed + 1000 * (k + 1))
    folds.append(Fold(subject=s, train=out["train"], validation=out["validation"],
                      test=tuple(sorted(v.video_id for v in videos if v.subject == s))))
  return folds


def split_lookup(split: dict[str, Iterable[str]] | Fold) -> dict[str, str]:
  """video_id -> split name."""
  if isinstance(split, Fold):
    split = {"train": split.train, "validation": split.validation, "test": split.test}
  return {vid: name for name, ids in split.items() for vid in ids}
