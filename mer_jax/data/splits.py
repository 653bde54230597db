"""Video-level splits: the paper's stratified 201/26/28 split, a subject-independent
holdout of the same proportions, and leave-one-subject-out folds.

Allocation rule of the paper's split. The held-out sizes are the paper's
fractions of the number of videos, rounded: 28/255 test and 26/255
validation, the rest train (exactly 201/26/28 for CASME II's 255). Test is
allocated first, then validation. Each split's size is shared among the
emotions by largest remainder of its proportional quota, count * size / n
(ties by class order: EMOTIONS for CASME II's labels, else the labels sorted), never taking a class's last training video, so
every class with at least two videos keeps one in train. Inside a class, the
videos sorted by id are shuffled and the split takes them in that order.

Subject independence. `paper_split` ignores subjects: nearly every test
video's subject also has training videos, so a model can score by
recognising a person. `subject_split` (the same proportions) and the
validation sets of `loso_folds` hold out whole subjects, chosen to be as
close to stratified as whole subjects allow (see subject_split). `holdout`
picks paper_split or subject_split by the config's name (`data.split`).

Determinism. Shuffles are a Fisher-Yates driven by the raw 64-bit output of
numpy's PCG64 seeded with a key: (seed, class index) for the paper's split,
(seed,) for the subject split's subject order, (seed, fold + 1) for a LOSO
fold's. NEP 19 keeps bit generators' raw streams fixed across numpy versions
(unlike Generator methods such as `permutation`), and nothing depends on
input order, dict/set order or the Python hash seed, so a split is a
function of the video ids, subjects, labels and the seed alone, on every
machine.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from mer_jax.data import labels
from mer_jax.data.labels import EMOTIONS
from mer_jax.data.videos import Video
from mer_jax.plumbing.errors import UserError

SPLITS = ("train", "validation", "test")
PAPER_SIZES = (201, 26, 28)  # of 255 videos
PAPER_SEED = 0
SPLIT_KINDS = ("video", "subject")  # data.split: paper_split | subject_split
# A video's label is its dataset's native one, or (the records a run's examples give,
# input_pipeline) a grouping scheme's class.
GROUPED_CLASSES = frozenset(c for s in labels.SCHEMES.values() if s.name not in labels.NATIVE
                            for c in s.classes)


class SplitError(UserError, ValueError):
  """A split the config or the data cannot give (a user error: one line)."""


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


def class_order(videos: Sequence[Video]) -> tuple[str, ...]:
  """The classes of `videos` in the order splits break ties and draw keys by: CASME II's
  EMOTIONS when every label is one of them (so its splits stay as they were), else the
  labels present, sorted (another dataset's native labels, or a scheme's classes)."""
  present = {v.emotion for v in videos}
  return EMOTIONS if present <= set(EMOTIONS) else tuple(sorted(present))


def _quota(counts: Mapping[str, int], total: int, cap: Mapping[str, int]) -> dict[str, int]:
  """Shares `total` among classes in proportion to `counts` (largest remainder), within `cap`."""
  n = sum(counts.values())
  if n == 0 or total <= 0:
    return {e: 0 for e in counts}
  # Exact rational arithmetic: remainders that tie must tie on every machine.
  floor = {e: counts[e] * total // n for e in counts}
  rem = {e: counts[e] * total % n for e in counts}
  take = {e: min(floor[e], cap[e]) for e in counts}
  rank = {e: k for k, e in enumerate(counts)}  # counts are in class_order
  order = sorted(counts, key=lambda e: (-rem[e], rank[e]))
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
  out = {e: [] for e in class_order(videos)}
  seen = set()
  for v in videos:
    if v.emotion not in labels.NATIVE.get(v.dataset, ()) and v.emotion not in GROUPED_CLASSES:
      raise ValueError(f"{v.video_id}: emotion {v.emotion!r} is not one of {v.dataset}'s "
                       f"{labels.NATIVE.get(v.dataset)}; load videos with mer_jax.data.load.")
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
  in_order = {e: shuffled(groups[e], (*key, k)) for k, e in enumerate(groups)}
  out = {name: [] for name in (*sizes, "train")}
  used = {e: 0 for e in groups}
  for name, size in sizes.items():
    take = _quota(counts, size, {e: cap[e] - used[e] for e in groups})
    for e in groups:
      out[name] += in_order[e][used[e]:used[e] + take[e]]
      used[e] += take[e]
  for e in groups:
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


def _cost(have: Sequence[int], total: Sequence[int], n: int, size: int) -> int:
  """How far a held-out set's class counts `have` are from stratified at `size`.

  n**2 times (sum over classes of (have - quota)**2 + (set size - size)**2),
  quota = total * size / n: exact integers, so ties tie on every machine.
  """
  d = [n * h - t * size for h, t in zip(have, total)]
  return sum(x * x for x in d) + sum(d) ** 2


def _choose_subjects(order: Sequence[str], counts: Mapping[str, Sequence[int]],
                     total: Sequence[int], size: int, keep: Sequence[bool],
                     spare: int) -> list[str]:
  """Subjects of `order` for one held-out set of about `size` videos (see
  subject_split), leaving `spare` subjects for the sets still to come, one
  each (train's included)."""
  n = sum(total)

  def lost(chosen):
    """Classes of `keep` train loses if later sets take one subject each, at best."""
    rest = [s for s in order if s not in chosen]
    holders = [[s for s in rest if counts[s][e]] for e in range(len(keep))]
    gone = sum(1 for e, k in enumerate(keep) if k and not holders[e])
    if spare < 2:
      return gone
    only = collections.Counter(h[0] for e, h in enumerate(holders) if keep[e] and len(h) == 1)
    return gone + min(only[s] for s in rest)  # the next set takes the subject costing least

  def score(chosen):
    have = [sum(counts[s][e] for s in chosen) for e in range(len(total))]
    return (lost(chosen), _cost(have, total, n, size))

  chosen = [order[0]]
  for s in order[1:]:  # seed-ordered first fill: a subject joins when it helps
    if len(order) - len(chosen) > spare and score(chosen + [s]) < score(chosen):
      chosen.append(s)
  best = score(chosen)
  while True:  # best-improvement local search: add, drop or swap one subject
    moves = [chosen + [s] for s in order if s not in chosen and len(order) - len(chosen) > spare]
    moves += [[c for c in chosen if c != d] for d in chosen if len(chosen) > 1]
    moves += [[s if c == d else c for c in chosen] for d in chosen for s in order
              if s not in chosen]
    top = min(moves, key=score, default=None)  # ties: the first move in seed order
    if top is None or score(top) >= best:
      return chosen
    chosen, best = top, score(top)


def _subject_holdout(videos: Sequence[Video], sizes: Mapping[str, int],
                     key: Sequence[int]) -> dict[str, tuple[str, ...]]:
  """Whole subjects into the named held-out sets (chosen in order), the rest to train."""
  groups = _by_class(videos)
  subject_of = {v.video_id: v.subject_id for v in videos}  # unique across datasets
  subjects = sorted(set(subject_of.values()))
  if len(subjects) <= len(sizes):
    raise SplitError(f"holding out subjects for {' and '.join(sizes)} needs at least "
                     f"{len(sizes) + 1} subjects (one for train), got {len(subjects)}: "
                     f"{', '.join(subjects)}.")
  counts = {s: [0] * len(groups) for s in subjects}
  for e, ids in enumerate(groups.values()):
    for i in ids:
      counts[subject_of[i]][e] += 1
  total = [len(ids) for ids in groups.values()]
  keep = [sum(1 for s in subjects if counts[s][e]) >= 2 for e in range(len(groups))]
  free, held = shuffled(subjects, key), {}
  for j, (name, size) in enumerate(sizes.items()):
    held[name] = _choose_subjects(free, counts, total, size, keep, len(sizes) - j)
    free = [s for s in free if s not in held[name]]
  held["train"] = free
  return {name: tuple(sorted(i for i, s in subject_of.items() if s in held[name]))
          for name in held}


def subject_split(videos: Sequence[Video], seed: int = PAPER_SEED) -> dict[str, tuple[str, ...]]:
  """A subject-independent holdout: {"train", "validation", "test"} -> sorted video ids.

  Whole subjects go to test, then to validation, aiming at paper_sizes(n)
  videos each (28 and 26 of 255) stratified by emotion: each set minimises
  sum over classes of (count - quota)**2 plus (size - target)**2, quota =
  class total * target / n. The search starts from the subjects in a
  seed-drawn order (PCG64 raw stream, key (seed,), as the module docstring
  says), adds each subject that lowers the cost, then moves to the best
  neighbour (add, drop or swap one subject) until none is better. A local
  optimum from a seeded start, not the global one: every seed gives another
  near-stratified subject set (the global optimum would be one split for
  all seeds and leave no split variance to measure; still, two seeds can
  meet at the same test set: 8-9 distinct in seeds 0-9 on CASME II-like
  sets). Before the cost it minimises the classes with videos of two or
  more subjects that train would lose (test looks ahead to validation's one
  subject at least), so they keep training videos whenever whole subjects
  allow it. Sizes and class counts are whatever whole subjects give
  (class_counts reports them; 27-29 test and 24-27 validation videos of
  CASME II's 255 over 200 seeds of a synthetic layout); needs three subjects.
  """
  _, n_val, n_test = paper_sizes(len(videos))
  out = _subject_holdout(videos, {"test": n_test, "validation": n_val}, (seed,))
  return {name: out[name] for name in SPLITS}


def holdout(videos: Sequence[Video], split: str = "video",
            seed: int = PAPER_SEED) -> dict[str, tuple[str, ...]]:
  """The `data.split` holdout of `videos`: "video" (paper_split) or "subject" (subject_split)."""
  if split == "video":
    return paper_split(videos, seed)
  if split == "subject":
    return subject_split(videos, seed)
  raise SplitError(f"Unknown data.split {split!r}; valid: {', '.join(SPLIT_KINDS)}")


def check_split(protocol: str, split: str, split_seed) -> None:
  """SplitError (one line) for a data.split/data.split_seed the protocol cannot take.

  They choose the holdout of protocol "paper". LOSO's test is each subject in
  turn and its folds are fixed, so there they must stay at their defaults
  ("video", 0) rather than be silently ignored.
  """
  if split not in SPLIT_KINDS:
    raise SplitError(f"Unknown data.split {split!r}; valid: {', '.join(SPLIT_KINDS)}")
  if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
    raise SplitError(f"data.split_seed must be an integer >= 0 (0 = the paper's split), "
                     f"got {split_seed!r}")
  if protocol == "loso" and (split, split_seed) != ("video", PAPER_SEED):
    raise SplitError(f"data.split={split} data.split_seed={split_seed} choose the holdout of "
                     "data.protocol=paper; LOSO holds out each subject in turn and takes neither: "
                     "leave them at video and 0, or use data.protocol=paper.")


@dataclasses.dataclass(frozen=True)
class Fold:
  """One leave-one-subject-out fold."""
  subject: str                 # the held-out subject
  train: tuple[str, ...]
  validation: tuple[str, ...]  # whole other subjects, none of them in train
  test: tuple[str, ...]        # every video of `subject`

  def splits(self) -> dict[str, tuple[str, ...]]:
    """The fold in `paper_split`'s shape, so one pipeline serves both protocols."""
    return {"train": self.train, "validation": self.validation, "test": self.test}


def loso_folds(videos: Sequence[Video], val_fraction: float = 0.1,
               seed: int = PAPER_SEED) -> list[Fold]:
  """Leave-one-subject-out: one fold per subject, in subject order.

  Model selection must never see the held-out subject, and it should judge
  what the test judges, a model on people it has not seen: the validation
  videos (early stopping) are whole other subjects, about round(val_fraction
  * n) of their n videos and stratified by emotion, chosen as subject_split
  chooses its sets (key (seed, fold + 1)). Train, validation and test
  subjects are disjoint; with val_fraction > 0 that needs three subjects.
  """
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
  _by_class(videos)  # validates labels and ids once
  subjects = sorted({v.subject_id for v in videos})  # dataset-prefixed in a composite
  if len(subjects) < 2:
    raise SplitError(f"LOSO needs at least two subjects, got {subjects}; use paper_split.")
  folds = []
  for k, s in enumerate(subjects):
    rest = [v for v in videos if v.subject_id != s]
    n_val = (2 * len(rest) * val_fraction + 1) // 2  # round half up
    out = (_subject_holdout(rest, {"validation": max(1, int(n_val))}, (seed, k + 1))
           if val_fraction > 0 else {"train": tuple(sorted(v.video_id for v in rest)),
                                     "validation": ()})
    folds.append(Fold(subject=s, train=out["train"], validation=out["validation"],
                      test=tuple(sorted(v.video_id for v in videos if v.subject_id == s))))
  return folds


def validation_split(videos: Sequence[Video], val_fraction: float = 0.1,
                     seed: int = PAPER_SEED) -> dict[str, tuple[str, ...]]:
  """{"train", "validation"} -> sorted ids: whole subjects of `videos` (a cross-dataset
  run's training datasets) held out for validation, about round(val_fraction * n) videos
  stratified as loso_folds chooses a fold's (key (seed, 0)); needs two subjects."""
  n_val = max(1, int((2 * len(videos) * val_fraction + 1) // 2))
  out = _subject_holdout(videos, {"validation": n_val}, (seed, 0))
  return {"train": out["train"], "validation": out["validation"]}


def class_counts(ids: Iterable[str], videos: Sequence[Video]) -> dict[str, int]:
  """Videos per emotion (in class_order) among `ids`: for reports and checks."""
  label = {v.video_id: v.emotion for v in videos}
  got = collections.Counter(label[i] for i in ids)
  return {e: got[e] for e in class_order(videos)}


def check_train_fraction(fraction) -> None:
  """SplitError (one line) unless data.train_fraction is a number in (0, 1]."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
      or not 0 < fraction <= 1:
    raise SplitError(f"data.train_fraction must be in (0, 1] (1 = every training video), "
                     f"got {fraction!r}")


def train_subsample(videos: Sequence[Video], fraction: float, seed: int) -> tuple[str, ...]:
  """The sorted ids of a stratified `fraction` of `videos` (a split's training videos):
  `data.train_fraction`, for learning curves.

  Each emotion keeps round(fraction * its count) videos (half up, exact), at least one,
  so no class leaves training; they are the first of its videos in the order
  `shuffled(ids, (seed, class index, 1))` gives. A function of the ids, labels and
  `seed` alone: methods run at one seed train on the same videos (their difference
  stays paired), and a smaller fraction's videos are a subset of a larger one's.
  """
  check_train_fraction(fraction)
  if fraction == 1:
    return tuple(sorted(v.video_id for v in videos))
  num, den = float(fraction).as_integer_ratio()
  out = []
  for k, (e, ids) in enumerate(_by_class(videos).items()):
    if ids:
      keep = max(1, (2 * len(ids) * num + den) // (2 * den))  # round half up, exactly
      out += shuffled(ids, (seed, k, 1))[:keep]
  return tuple(sorted(out))
