"""Classification metrics, bootstrap intervals and video-level voting (numpy only).

Conventions (the paper's / MER literature's):

* ``macro_f1`` (UF1) and ``uar`` average over the classes PRESENT IN ``y_true``
  only. A class predicted but absent from ``y_true`` gets no F1 of its own;
  those predictions still count as misses of the true (present) classes.
  A present class that is never predicted has F1 = 0 and recall = 0. This equals sklearn's
  ``f1_score(average='macro', labels=present, zero_division=0)``.
* Per-class lists hold ``nan`` for a class absent from ``y_true``.
* Bootstrap intervals are percentile intervals over B resamples with
  replacement, drawn from ``rng = numpy.random.default_rng(seed)`` in one of
  three ways (the resample b's sample indices, [B, n] in all):

  - stratified (the default, ``stratify=True``): sample j is replaced by the
    u-th sample (in index order) of its own true class, ``u =
    rng.integers(0, n_{y_j}, (B, n))``; every class of ``y_true`` keeps its
    count in every resample, so a class with one test video never vanishes
    and the macro-F1 always averages over the same classes. Test sets are
    drawn stratified by class; the resamples mirror that.
  - i.i.d. (``stratify=False``): ``rng.integers(0, n, (B, n))``, the same
    draw as ``scipy.stats.bootstrap(..., paired=True, method='percentile')``.
  - clustered (``clusters=``, one group id per sample, e.g. the subject):
    the G clusters (sorted ids) are drawn, ``rng.integers(0, G, (B, G))``, and
    every sample of a drawn cluster comes along; ``stratify`` is then
    ignored. Use it where samples share a source (LOSO or any pooled result:
    a subject's videos are not independent).

  Present classes are recomputed per resample from the resample's ``y_true``
  (they only change under i.i.d. or clustered draws).
* p-values of `paired_bootstrap` are add-one estimates ``(r + 1) / (B + 1)``,
  never 0; `format_p` prints one at its floor as ``< 1/B``. `holm` adjusts a
  table's p-values for its number of comparisons.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

# Resamples are processed in chunks of at most this many (resample, sample)
# entries, to bound memory for frame-level bootstraps. Chunking does not change
# the draw (numpy's Generator produces the same stream in consecutive calls).
_MAX_CHUNK_ELEMS = 4_000_000


def _as_labels(y, num_classes: int, name: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
  if y.size and not np.issubdtype(y.dtype, np.integer):
    if not np.all(np.equal(np.mod(y, 1), 0)):
      raise ValueError(f"{name} must hold integer class indices")
  y = y.astype(np.int64)
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{name} holds labels outside [0, {num_classes})")
  return y


def _check_pair(y_true, y_pred, num_classes):
  t = _as_labels(y_true, num_classes, "y_true")
  p = _as_labels(y_pred, num_classes, "y_pred")
  if t.shape != p.shape:
    raise ValueError(f"y_true and y_pred lengths differ: {t.shape} vs {p.shape}")
  return t, p


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
  """[K, K] int64 counts, rows = truth, columns = prediction."""
  t, p = _check_pair(y_true, y_pred, num_classes)
  return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
      num_classes, num_classes)


def _macro_f1_from_counts(tp: np.ndarray, support: np.ndarray, pred_count: np.ndarray
                          ) -> np.ndarray:
  """Macro-F1 over present classes from [..., K] counts; nan if no class present."""
  present = support > 0
  denom = support + pred_count
  f1 = np.where(present, 2.0 * tp / np.where(present, denom, 1), 0.0)
  n_present = present.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n_present > 0, f1.sum(-1) / n_present, np.nan)


def _uar_from_counts(tp: np.ndarray, support: np.ndarray, pred_count: np.ndarray
                     ) -> np.ndarray:
  """UAR (mean recall over present classes) from [..., K] counts; nan if no class present."""
  present = support > 0
  recall = np.where(present, tp / np.where(present, support, 1), 0.0)
  n_present = present.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n_present > 0, recall.sum(-1) / n_present, np.nan)


# The scores a bootstrap can resample: name -> score of [..., K] (tp, support, pred_count).
SCORES = {"macro_f1": _macro_f1_from_counts, "uar": _uar_from_counts}


def classification_report(y_true, y_pred, num_classes: int) -> dict:
  """Video- or frame-level metrics of one prediction set.

  Returns a dict with ``macro_f1`` (UF1, mean F1 over classes present in
  ``y_true``), ``uar`` (mean recall over present classes), ``accuracy``,
  ``per_class_f1`` / ``per_class_recall`` (length ``num_classes``, nan for a
  class absent from ``y_true``), ``support`` (true count per class),
  ``confusion`` (rows truth, columns prediction, ints) and ``n``. With no
  samples every score is nan.
  """
  cm = confusion_matrix(y_true, y_pred, num_classes)
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(1)
  pred_count = cm.sum(0)
  present = support > 0
  n = int(cm.sum())
  with np.errstate(invalid="ignore", divide="ignore"):
    f1 = np.where(present, 2.0 * tp / (support + pred_count), np.nan)
    recall = np.where(present, tp / support, np.nan)
  if present.any():
    macro_f1 = float(np.mean(f1[present]))
    uar = float(np.mean(recall[present]))
    accuracy = float(tp.sum() / n)
  else:
    macro_f1 = uar = accuracy = float("nan")
  return {
      "macro_f1": macro_f1,
      "uar": uar,
      "accuracy": accuracy,
      "per_class_f1": [float(v) for v in f1],
      "per_class_recall": [float(v) for v in recall],
      "support": [int(v) for v in support],
      "confusion": cm.astype(int).tolist(),
      "n": n,
  }


def macro_f1(y_true, y_pred, num_classes: int) -> float:
  """UF1: mean F1 over the classes present in ``y_true``."""
  return classification_report(y_true, y_pred, num_classes)["macro_f1"]


def _units(t: np.ndarray, clusters) -> tuple[np.ndarray, int]:
  """The resampling unit of each sample (its cluster, else itself) and the number of units."""
  if clusters is None:
    return np.arange(t.size), t.size
  c = np.asarray(clusters)
  if c.shape != t.shape:
    raise ValueError(f"clusters must hold one id per sample ({t.size}), got shape {c.shape}")
  ids, unit = np.unique(c, return_inverse=True)
  return unit.ravel(), len(ids)


def _resample_weights(t: np.ndarray, n_resamples: int, rng: np.random.Generator, *,
                      stratify: bool, clusters
                      ) -> tuple[np.ndarray, int, Iterator[np.ndarray]]:
  """(unit of each sample, number of units U, chunks of [b, U] unit multiplicities of
  consecutive resamples).

  The draws are those the module docstring names; chunking does not change them
  (numpy's Generator continues its stream across calls, element by element).
  """
  if n_resamples < 1:
    raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
  unit, n_units = _units(t, clusters)
  high, pick = n_units, None
  if clusters is None and stratify:
    size = np.bincount(t)
    start = np.cumsum(size) - size
    members = np.argsort(t, kind="stable")     # the samples of each class, in index order
    high = size[t]                             # sample j draws among its class's n_{t_j}
    pick = lambda u: members[start[t] + u]

  def chunks():
    chunk = max(1, _MAX_CHUNK_ELEMS // max(n_units, 1))
    done = 0
    while done < n_resamples:
      b = min(chunk, n_resamples - done)
      idx = rng.integers(0, high, (b, n_units))
      if pick is not None:
        idx = pick(idx)
      offs = (np.arange(b) * n_units)[:, None]
      yield np.bincount((idx + offs).ravel(), minlength=b * n_units).reshape(b, n_units)
      done += b
  return unit, n_units, chunks()


def _unit_counts(t: np.ndarray, p: np.ndarray, k: int, unit: np.ndarray, n_units: int
                 ) -> np.ndarray:
  """[U, 3K] per unit: true count, predicted count and true positives of each class."""
  c = np.zeros((n_units, 3 * k))
  np.add.at(c, (unit, t), 1)
  np.add.at(c, (unit, k + p), 1)
  hit = t == p
  np.add.at(c, (unit[hit], 2 * k + t[hit]), 1)
  return c


def _bootstrap_f1(t: np.ndarray, preds: Sequence[np.ndarray], k: int, n_resamples: int,
                  seed: int, stratify: bool, clusters, score: str = "macro_f1") -> np.ndarray:
  """[B, len(preds)] macro-F1 (or another of SCORES) of every prediction set on the same
  resamples.

  A resample's counts are its unit multiplicities times the per-unit counts
  (one matmul, exact in float64), so a resample never materialises its samples.
  """
  if t.size == 0:
    raise ValueError("bootstrap needs at least one sample")
  unit, n_units, weights = _resample_weights(t, n_resamples, np.random.default_rng(seed),
                                             stratify=stratify, clusters=clusters)
  counts = [_unit_counts(t, p, k, unit, n_units) for p in preds]
  of_counts = SCORES[score]
  out = []
  for w in weights:
    cols = []
    for c in counts:
      s = w @ c                                               # [b, 3K]
      cols.append(of_counts(s[:, 2 * k:], s[:, :k], s[:, k:2 * k]))
    out.append(np.stack(cols, -1))
  return np.concatenate(out)


def percentile_interval(stats, level: float = 0.95) -> tuple[float, float]:
  """``(low, high)``: the percentiles ``100*(1-level)/2`` and ``100*(1+level)/2`` of the
  bootstrap statistics (nan ones dropped; nan, nan when none is left)."""
  stats = np.asarray(stats, np.float64)
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  alpha = (1.0 - level) / 2.0
  stats = stats[~np.isnan(stats)]
  if stats.size == 0:
    return float("nan"), float("nan")
  lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
  return float(lo), float(hi)


def bootstrap_macro_f1(y_true, y_pred, num_classes: int, n_resamples: int = 1000,
                       seed: int = 0, *, stratify: bool = True, clusters=None) -> np.ndarray:
  """The [n_resamples] macro-F1 values of the bootstrap resamples (see `bootstrap_ci`).

  ``y_pred`` [P, n] (P prediction sets of the same samples, e.g. one per point of
  a curve) gives [n_resamples, P]: every set scored on the same resamples.
  """
  sets = np.asarray(y_pred)
  if sets.ndim == 2:
    t = _as_labels(y_true, num_classes, "y_true")
    ps = [_check_pair(t, row, num_classes)[1] for row in sets]
    return _bootstrap_f1(t, ps, num_classes, n_resamples, seed, stratify, clusters)
  t, p = _check_pair(y_true, y_pred, num_classes)
  return _bootstrap_f1(t, [p], num_classes, n_resamples, seed, stratify, clusters)[:, 0]


def bootstrap_mean(values, y_true, num_classes: int, n_resamples: int = 1000, seed: int = 0,
                   *, stratify: bool = True, clusters=None) -> np.ndarray:
  """The means of ``values`` ([n] or [n, P], one row per sample of ``y_true``) over the
  bootstrap resamples `bootstrap_ci` draws for ``y_true`` (the same draw for a seed,
  with ``stratify`` and ``clusters``): [n_resamples] or [n_resamples, P]. A nan
  value is left out of its resample's mean."""
  t = _as_labels(y_true, num_classes, "y_true")
  v = np.asarray(values, np.float64)
  if v.shape[:1] != t.shape:
    raise ValueError(f"values must hold one row per sample ({t.size}), got shape {v.shape}")
  if t.size == 0:
    raise ValueError("bootstrap needs at least one sample")
  flat = v.reshape(t.size, -1)
  ok = np.isfinite(flat)
  unit, n_units, weights = _resample_weights(t, n_resamples, np.random.default_rng(seed),
                                             stratify=stratify, clusters=clusters)
  sums, counts = np.zeros((n_units, flat.shape[1])), np.zeros((n_units, flat.shape[1]))
  np.add.at(sums, unit, np.where(ok, flat, 0.0))
  np.add.at(counts, unit, ok)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.concatenate([(w @ sums) / (w @ counts) for w in weights])
  return out.reshape((n_resamples,) + v.shape[1:])


def bootstrap_p_value(d) -> float:
  """The add-one two-sided percentile-bootstrap p-value of resampled contrasts ``d`` being
  0: ``(r + 1) / (B + 1)`` with ``r = min(B, 2 * min(#(d <= 0), #(d >= 0)))`` (see
  `paired_bootstrap`)."""
  d = np.asarray(d, np.float64).ravel()
  r = min(d.size, 2 * min(int(np.sum(d <= 0)), int(np.sum(d >= 0))))
  return (r + 1) / (d.size + 1)


def bootstrap_ci(y_true, y_pred, num_classes: int, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0, *, stratify: bool = True,
                 clusters=None) -> tuple[float, float]:
  """Percentile bootstrap interval ``(low, high)`` of macro-F1.

  ``stratify`` (default) resamples within each true class, so every class of
  ``y_true`` keeps its count in every resample; ``stratify=False`` resamples
  all samples i.i.d. (scipy's draw). ``clusters`` (one group id per sample,
  e.g. the subject) resamples whole clusters instead and then ignores
  ``stratify``: a cluster holds several classes, so its draw cannot keep class
  counts. Each resample's macro-F1 averages over the classes present in its
  ``y_true``. The bounds are ``np.percentile`` (linear interpolation) at
  ``100*(1-level)/2`` and ``100*(1+level)/2``. Deterministic for a seed.
  """
  stats = bootstrap_macro_f1(y_true, y_pred, num_classes, n_resamples, seed,
                             stratify=stratify, clusters=clusters)
  return percentile_interval(stats, level)


def paired_bootstrap(y_true, pred_a, pred_b, num_classes: int, n_resamples: int = 10000,
                     level: float = 0.95, seed: int = 0, *, stratify: bool = True,
                     clusters=None, score: str = "macro_f1") -> dict:
  """Paired bootstrap of the macro-F1 difference ``a - b`` (``score="uar"``: of UAR).

  Both prediction sets are scored on the SAME resamples (drawn as in
  `bootstrap_ci`, with ``stratify`` and ``clusters``). Returns ``diff`` (the
  full-set difference), ``f1_a`` and ``f1_b`` (the full-set scores), ``ci``
  (percentile interval of the resampled differences), ``p_value`` and
  ``n_resamples`` (B).

  ``p_value`` is the add-one two-sided percentile-bootstrap p-value
  ``(r + 1) / (B + 1)`` with ``r = min(B, 2 * min(#(d <= 0), #(d >= 0)))``
  over the B resampled differences ``d``: ``r / B`` is twice the smaller tail
  mass at zero (the smallest ``1 - level`` whose percentile interval still
  reaches 0), and the added one keeps B resamples from claiming p = 0. It is
  ``1 / (B + 1)`` when no resample reaches 0 (`format_p` prints ``< 1/B``)
  and 1 when the predictions agree on every sample (every ``d`` is 0).
  """
  t, a = _check_pair(y_true, pred_a, num_classes)
  _, b = _check_pair(y_true, pred_b, num_classes)
  if score not in SCORES:
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
  f1_a, f1_b = (classification_report(t, x, num_classes)[score] for x in (a, b))
  f = _bootstrap_f1(t, [a, b], num_classes, n_resamples, seed, stratify, clusters, score)
  d = f[:, 0] - f[:, 1]          # never nan: a resample always holds a class of y_true
  return {"diff": float(f1_a - f1_b), "f1_a": float(f1_a), "f1_b": float(f1_b),
          "ci": percentile_interval(d, level), "p_value": bootstrap_p_value(d),
          "n_resamples": int(n_resamples)}


def seed_mean_ci(y_true, preds, num_classes: int, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0, *, stratify: bool = True,
                 clusters=None) -> tuple[float, float]:
  """Percentile interval ``(low, high)`` of the mean macro-F1 over S seeds.

  ``preds`` is [S, n]: S runs' predictions on the same n samples, aligned with
  ``y_true``. Each resample draws the samples as `bootstrap_ci` does (the same
  draw for ``seed``, with ``stratify`` and ``clusters``) and, independently,
  S seeds with replacement (``default_rng((seed, 1)).integers(0, S, (B, S))``),
  and averages the drawn seeds' macro-F1 on the drawn samples; so the interval
  holds both the test set's and the training seeds' variation. With S = 1 it
  is `bootstrap_ci`'s interval.
  """
  p = np.asarray(preds)
  if p.ndim != 2:
    raise ValueError(f"preds must be [seeds, samples], got shape {p.shape}")
  t = _as_labels(y_true, num_classes, "y_true")
  ps = [_check_pair(t, row, num_classes)[1] for row in p]
  f = _bootstrap_f1(t, ps, num_classes, n_resamples, seed, stratify, clusters)   # [B, S]
  s = len(ps)
  pick = np.random.default_rng((seed, 1)).integers(0, s, (n_resamples, s))
  mult = np.bincount((pick + (np.arange(n_resamples) * s)[:, None]).ravel(),
                     minlength=n_resamples * s).reshape(n_resamples, s)
  return percentile_interval((f * mult).sum(-1) / s, level)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm–Bonferroni adjusted p-values, in input order.

  Step-down: the i-th smallest of m p-values becomes
  ``max over j <= i of min(1, (m - j + 1) * p_(j))``, so the adjusted values
  keep the raw order and rejecting those <= alpha controls the family-wise
  error at alpha over the m comparisons.
  """
  p = np.asarray(p_values, np.float64).ravel()
  if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
    raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
  m = p.size
  order = np.argsort(p, kind="stable")
  adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  out = np.empty(m)
  out[order] = adj
  return out.tolist()


def format_p(p: float | None, n_resamples: int) -> str:
  """A bootstrap p-value for a table: ``< 1/B`` (e.g. ``< 0.0001`` for B = 10000)
  at its floor 1/(B + 1), else three significant digits (never ``0.000``);
  ``—`` for none."""
  if p is None or np.isnan(p):
    return "—"
  if p <= (1 + 1e-9) / (n_resamples + 1):
    return "< " + np.format_float_positional(1 / n_resamples, precision=2, fractional=False,
                                             trim="-")
  decimals = max(0, 2 - math.floor(math.log10(p)))
  return f"{p:.{decimals}f}"


# --- video level -----------------------------------------------------------

def _group(video_ids, n: int):
  ids = np.asarray(video_ids).astype(str)
  if ids.shape != (n,):
    raise ValueError(f"video_ids must have length {n}, got shape {ids.shape}")
  return np.unique(ids, return_inverse=True)


def _as_probs(frame_probs) -> np.ndarray:
  probs = np.asarray(frame_probs, np.float64)
  if probs.ndim != 2:
    raise ValueError(f"frame_probs must be [N, C], got shape {probs.shape}")
  return probs


def video_vote(frame_probs, video_ids) -> tuple[np.ndarray, np.ndarray]:
  """Majority vote of the per-frame argmax per video.

  Ties between the most-voted classes go to the tied class with the larger
  summed frame probability, then to the lowest class index. Returns the
  video ids sorted ascending (np.ndarray of str) and int64 predictions aligned
  with them.
  """
  probs = _as_probs(frame_probs)
  vids, inv = _group(video_ids, probs.shape[0])
  v, c = len(vids), probs.shape[1]
  votes = np.zeros((v, c), np.int64)
  np.add.at(votes, (inv, probs.argmax(-1)), 1)
  psum = np.zeros((v, c), np.float64)
  np.add.at(psum, inv, probs)
  tied = votes == votes.max(-1, keepdims=True)
  pred = np.where(tied, psum, -np.inf).argmax(-1)  # argmax -> lowest index on ties
  return vids, pred.astype(np.int64)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std with ddof=1) ignoring NaN; std is 0 for one value, nan for none."""
  x = np.asarray(values, np.float64).ravel()
  x = x[~np.isnan(x)]
  if x.size == 0:
    return float("nan"), float("nan")
  if x.size == 1:
    return float(x[0]), 0.0
  return float(x.mean()), float(x.std(ddof=1))
