"""Video-level splits: the paper's stratified 201/26/28 split and leave-one-subject-out folds.

Allocation rule (both protocols). The held-out sizes are the paper's fractions
of the number of videos, rounded: 28/255 test and 26/255 validation, the rest
train (exactly 201/26/28 for CASME II's 255; LOSO uses `val_fraction` of the
training subjects' videos for validation). Test is allocated first, then
validation. Each split's size is shared among the emotions by largest
remainder of its proportional quota, count * size / n (ties by EMOTIONS
order), never taking a class's last training video, so every class with at
least two videos keeps one in train. Inside a class, the videos sorted by id
are shuffled and the split takes them in that order.

Determinism. The shuffle is a Fisher-Yates driven by the raw 64-bit output
of numpy's PCG64 seeded with (seed, class index[, fold]). NEP 19 keeps bit
generators' raw streams fixed across numpy versions (unlike Generator
methods such as `permutation`), and nothing depends on input order, dict/set
order or the Python hash seed, so a split is a function of the video ids,
their labels and the seed alone, on every machine.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from mer_jax.data.casme2 import EMOTIONS, Video

SPLITS = ("train", "validation", "test")
PAPER_SIZES = (201, 26, 28)  # of 255 videos
PAPER_SEED = 0


def shuffled(ids: Sequence[str], key: Sequence[int]) -> list[str]:
  """`ids` in a PCG64-determined order (Fisher-Yates on the raw stream).

  `raw % (i + 1)` has a modulo bias below i / 2**64: irrelevant here.
  """
  out = sorted(ids)
  if len(out) < 2:
    return out
  raw = np.random.PCG64(list(key)).random_raw(len(out) - 1)
  for step, i in enumerate(range(len(out) - 1, 0, -1)):
    j = int(raw[step] % np.uint64(i + 1))
    out[i], out[j] = out[j], out[i]
  return out


def _quota(counts: Mapping[str, int], total: int, cap: Mapping[str, int]) -> dict[str, int]:
  """Shares `total` among classes in proportion to `counts` (largest remainder), within `cap`."""
  n = sum(counts.values())
  if n == 0 or total <= 0:
    return {e: 0 for e in counts}
  # Exact rational arithmetic: remainders that tie must tie on every machine.
  floor = {e: counts[e] * total // n for e in counts}
  rem = {e: counts[e] * total % n for e in counts}
  take = {e: min(floor[e], cap[e]) for e in counts}
  order = sorted(counts, key=lambda e: (-rem[e], EMOTIONS.index(e)))
  while sum(take.values()) < total:
    grew = False
    for e in order:
      if sum(take.values()) == total:
        break
      if take[e] < cap[e]:
        take[e] += 1
        grew = True
    if not grew:  # every class is at its cap: the split stays smaller
      break
  return take


def _by_class(videos: Sequence[Video]) -> dict[str, list[str]]:
  out = {e: [] for e in EMOTIONS}
  seen = set()
  for v in videos:
    if v.emotion not in out:
      raise ValueError(f"{v.video_id}: emotion {v.emotion!r} is not one of {EMOTIONS}; "
                       "load videos with mer_jax.data.casme2.load_casme2.")
    if v.video_id in seen:
      raise ValueError(f"video {v.video_id} appears twice; a split needs unique video ids.")
    seen.add(v.video_id)
    out[v.emotion].append(v.video_id)
  return out


def _stratified(videos: Sequence[Video], sizes: Mapping[str, int],
                key: Sequence[int]) -> dict[str, tuple[str, ...]]:
  """Splits `videos` into the named held-out sizes (allocated in order), the rest to train."""
  groups = _by_class(videos)
  counts = {e: len(ids) for e, ids in groups.items()}
  cap = {e: c - 1 if c >= 2 else 0 for e, c in counts.items()}  # keep one for train
  in_order = {e: shuffled(groups[e], (*key, k)) for k, e in enumerate(EMOTIONS)}
  out = {name: [] for name in (*sizes, "train")}
  used = {e: 0 for e in EMOTIONS}
  for name, size in sizes.items():
    take = _quota(counts, size, {e: cap[e] - used[e] for e in EMOTIONS})
    for e in EMOTIONS:
      out[name] += in_order[e][used[e]:used[e] + take[e]]
      used[e] += take[e]
  for e in EMOTIONS:
    out["train"] += in_order[e][used[e]:]
  return {name: tuple(sorted(ids)) for name, ids in out.items()}


def paper_sizes(n: int) -> tuple[int, int, int]:
  """(train, validation, test) for n videos at the paper's 201/26/28 proportions."""
  total = sum(PAPER_SIZES)
  # Round half up in integers (Python's round() would round half to even).
  test = (2 * n * PAPER_SIZES[2] + total) // (2 * total)
  val = (2 * n * PAPER_SIZES[1] + total) // (2 * total)
  return n - val - test, val, test


def paper_split(videos: Sequence[Video], seed: int = PAPER_SEED) -> dict[str, tuple[str, ...]]:
  """The paper's protocol: {"train", "validation", "test"} -> sorted video ids.

  Stratified by emotion at video level (all frames of a video stay in one
  split); see the module docstring for the allocation rule.
  """
  _, val, test = paper_sizes(len(videos))
  out = _stratified(videos, {"test": test, "validation": val}, (seed,))
  return {name: out[name] for name in SPLITS}


@dataclasses.dataclass(frozen=True)
class Fold:
  """One leave-one-subject-out fold."""
  subject: str                 # the held-out subject
  train: tuple[str, ...]
  validation: tuple[str, ...]  # drawn from the training subjects only
  test: tuple[str, ...]        # every video of `subject`

  def splits(self) -> dict[str, tuple[str, ...]]:
    """The fold in `paper_split`'s shape, so one pipeline serves both protocols."""
    return {"train": self.train, "validation": self.validation, "test": self.test}


def loso_folds(videos: Sequence[Video], val_fraction: float = 0.1,
               seed: int = PAPER_SEED) -> list[Fold]:
  """Leave-one-subject-out: one fold per subject, in subject order.

  Model selection must never see the held-out subject, so the validation
  videos (early stopping) are a stratified draw of round(val_fraction * n)
  of the other subjects' n videos (at least one when val_fraction > 0).
  """
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
  _by_class(videos)  # validates labels and ids once
  subjects = sorted({v.subject for v in videos})
  if len(subjects) < 2:
    raise ValueError(f"LOSO needs at least two subjects, got {subjects}; use paper_split.")
  folds = []
  for k, s in enumerate(subjects):
    rest = [v for v in videos if v.subject != s]
    n_val = (2 * len(rest) * val_fraction + 1) // 2  # round half up
    n_val = max(1, int(n_val)) if val_fraction > 0 else 0
    out = _stratified(rest, {"validation": n_val}, (seed, k + 1))
    folds.append(Fold(subject=s, train=out["train"], validation=out["validation"],
                      test=tuple(sorted(v.video_id for v in videos if v.subject == s))))
  return folds


def split_lookup(split: Mapping[str, Iterable[str]] | Fold) -> dict[str, str]:
  """video_id -> split name, for tagging examples while the dataset is written."""
  if isinstance(split, Fold):
    split = split.splits()
  out = {}
  for name, ids in split.items():
    for vid in ids:
      if vid in out:
        raise ValueError(f"video {vid} is in both {out[vid]!r} and {name!r}.")
      out[vid] = name
  return out


def class_counts(ids: Iterable[str], videos: Sequence[Video]) -> dict[str, int]:
  """Videos per emotion (in EMOTIONS order) among `ids`: for reports and checks."""
  label = {v.video_id: v.emotion for v in videos}
  got = collections.Counter(label[i] for i in ids)
  return {e: got[e] for e in EMOTIONS}
