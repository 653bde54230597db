"""Classification metrics, bootstrap intervals and video-level voting (numpy only).

Conventions (the paper's / MER literature's):

* ``macro_f1`` (UF1) and ``uar`` average over the classes PRESENT IN ``y_true``
  only. A class predicted but absent from ``y_true`` gets no F1 of its own;
  those predictions still count as misses of the true (present) classes.
  A present class that is never predicted has F1 = 0 and recall = 0. This equals sklearn's
  ``f1_score(average='macro', labels=present, zero_division=0)``.
* Per-class lists hold ``nan`` for a class absent from ``y_true``.
* Bootstrap intervals are percentile intervals over resamples of the samples
  (e.g. videos) with replacement; the resample indices are those of
  ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))`` -- the same
  draw as ``scipy.stats.bootstrap(..., paired=True, method='percentile')``.
  Present classes are recomputed per resample from the resample's ``y_true``.
"""

from __future__ import annotations

from typing import Sequence

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


def _resample_indices(n: int, n_resamples: int, rng: np.random.Generator):
  """Yields [b, n] index chunks; concatenated they equal rng.integers(0, n, (B, n))."""
  chunk = max(1, _MAX_CHUNK_ELEMS // max(n, 1))
  done = 0
  while done < n_resamples:
    b = min(chunk, n_resamples - done)
    yield rng.integers(0, n, (b, n))
    done += b


def _resampled_macro_f1(t: np.ndarray, p: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
  """Macro-F1 of each resample idx[b] -> [b]; vectorised via one bincount each."""
  b = idx.shape[0]
  rt, rp = t[idx], p[idx]                                  # [b, n]
  offs = (np.arange(b) * k)[:, None]
  size = b * k
  support = np.bincount((rt + offs).ravel(), minlength=size).reshape(b, k)
  pred_count = np.bincount((rp + offs).ravel(), minlength=size).reshape(b, k)
  hit = (rt == rp)
  tp = np.bincount((rt + offs)[hit], minlength=size).reshape(b, k)
  return _macro_f1_from_counts(tp, support, pred_count)


def _percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  alpha = (1.0 - level) / 2.0
  stats = stats[~np.isnan(stats)]
  if stats.size == 0:
    return float("nan"), float("nan")
  lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
  return float(lo), float(hi)


def bootstrap_macro_f1(y_true, y_pred, num_classes: int, n_resamples: int = 1000,
                       seed: int = 0) -> np.ndarray:
  """The [n_resamples] macro-F1 values of the bootstrap resamples."""
  t, p = _check_pair(y_true, y_pred, num_classes)
  if t.size == 0:
    raise ValueError("bootstrap needs at least one sample")
  rng = np.random.default_rng(seed)
  return np.concatenate([_resampled_macro_f1(t, p, idx, num_classes)
                         for idx in _resample_indices(t.size, n_resamples, rng)])


def bootstrap_ci(y_true, y_pred, num_classes: int, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval ``(low, high)`` of macro-F1.

  Samples are resampled with replacement (indices from
  ``default_rng(seed).integers(0, n, (n_resamples, n))``); each resample's
  macro-F1 averages over the classes present in that resample's ``y_true``.
  The bounds are ``np.percentile`` (linear interpolation) at
  ``100*(1-level)/2`` and ``100*(1+level)/2``. Deterministic for a seed.
  """
  stats = bootstrap_macro_f1(y_true, y_pred, num_classes, n_resamples, seed)
  return _percentile_interval(stats, level)


def paired_bootstrap(y_true, pred_a, pred_b, num_classes: int, n_resamples: int = 10000,
                     level: float = 0.95, seed: int = 0) -> dict:
  """Paired bootstrap of the macro-F1 difference ``a - b``.

  Both prediction sets are scored on the SAME resample indices. Returns
  ``diff`` (the full-set difference), ``ci`` (percentile interval of the
  resampled differences), ``p_value`` and ``n_resamples``.

  ``p_value`` is the two-sided percentile-bootstrap p-value
  ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` where ``P*`` is the fraction of
  resampled differences ``d``; i.e. twice the smaller tail mass at zero (the
  smallest ``1 - level`` for which the percentile CI would include 0). It is 1
  when the predictions agree on every sample, and its resolution is
  ``2 / n_resamples`` (it can be 0).
  """
  t, a = _check_pair(y_true, pred_a, num_classes)
  _, b = _check_pair(y_true, pred_b, num_classes)
  if t.size == 0:
    raise ValueError("bootstrap needs at least one sample")
  diff = macro_f1(t, a, num_classes) - macro_f1(t, b, num_classes)
  rng = np.random.default_rng(seed)
  ds = []
  for idx in _resample_indices(t.size, n_resamples, rng):
    ds.append(_resampled_macro_f1(t, a, idx, num_classes)
              - _resampled_macro_f1(t, b, idx, num_classes))
  d = np.concatenate(ds)
  d = d[~np.isnan(d)]
  p_value = float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))
  return {"diff": float(diff), "ci": _percentile_interval(d, level),
          "p_value": p_value, "n_resamples": int(n_resamples)}


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


def video_probs(frame_probs, video_ids) -> tuple[np.ndarray, np.ndarray]:
  """Sorted video ids and the mean frame probability per video [V, C]."""
  probs = _as_probs(frame_probs)
  vids, inv = _group(video_ids, probs.shape[0])
  psum = np.zeros((len(vids), probs.shape[1]), np.float64)
  np.add.at(psum, inv, probs)
  counts = np.bincount(inv, minlength=len(vids))
  return vids, psum / counts[:, None]


def video_labels(frame_labels, video_ids) -> tuple[np.ndarray, np.ndarray]:
  """Sorted video ids and the label per video; ValueError if a video's frames disagree."""
  labels = np.asarray(frame_labels).astype(np.int64)
  if labels.ndim != 1:
    raise ValueError(f"frame_labels must be 1-D, got shape {labels.shape}")
  vids, inv = _group(video_ids, labels.shape[0])
  lo = np.full(len(vids), np.iinfo(np.int64).max)
  hi = np.full(len(vids), np.iinfo(np.int64).min)
  np.minimum.at(lo, inv, labels)
  np.maximum.at(hi, inv, labels)
  bad = np.nonzero(lo != hi)[0]
  if bad.size:
    raise ValueError(f"Frames of video(s) {list(vids[bad[:5]])} disagree on the label")
  return vids, lo


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std with ddof=1) ignoring NaN; std is 0 for one value, nan for none."""
  x = np.asarray(values, np.float64).ravel()
  x = x[~np.isnan(x)]
  if x.size == 0:
    return float("nan"), float("nan")
  if x.size == 1:
    return float(x[0]), 0.0
  return float(x.mean()), float(x.std(ddof=1))
