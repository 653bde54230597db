"""Where a model looks, as numbers: plain functions on maps, boxes and landmarks.

- face mass (the energy-based pointing game, Wang et al. 2020, Score-CAM):
  the share of a map's positive mass inside the face box, beside the box's
  share of the image, what a map spread evenly would get (the chance level);
- region mass: the same share inside the eyes/brows, nose and mouth regions
  drawn from dlib's 68 landmarks;
- deletion curve (Petsiuk et al. 2018, RISE): the model's macro-F1 as the
  most-attributed pixels are removed, against the same share removed at random.

Pixels are unit squares; pixel (row i, column j) covers x in [j, j+1), y in
[i, i+1), and belongs to a box when its centre (j + 0.5, i + 0.5) lies inside.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mer_jax import metrics

# dlib's 68-point scheme (iBUG 300-W), 0-based indices.
REGIONS = {
    "eyes_brows": tuple(range(17, 27)) + tuple(range(36, 48)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 68)),
}
# The eyes/brows region is two hulls, one per side, so that the bridge of the
# nose between them is not counted as eyes.
_SIDES = {"eyes_brows": ((17, 18, 19, 20, 21, 36, 37, 38, 39, 40, 41),
                         (22, 23, 24, 25, 26, 42, 43, 44, 45, 46, 47))}
REGION_PAD = 0.1   # hull padding, as a share of the distance between the eye centres
DELETION_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def box_mask(box, shape: tuple[int, int]) -> np.ndarray:
  """(H, W) bool: the pixels whose centres lie in box (left, top, right, bottom)."""
  h, w = shape
  l, t, r, b = (float(v) for v in box[:4])
  x = np.arange(w) + 0.5
  y = np.arange(h) + 0.5
  return ((y >= t) & (y < b))[:, None] & ((x >= l) & (x < r))[None, :]


def mass_in(maps, masks) -> np.ndarray:
  """Per image, the share of the positive part of `maps` (N, H, W) inside `masks`
  (N, H, W) bool; nan for a map with no positive mass."""
  pos = np.clip(np.asarray(maps, np.float64), 0, None)
  total = pos.sum(axis=(1, 2))
  inside = (pos * np.asarray(masks, bool)).sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, inside / total, np.nan)


def face_mass(maps, boxes) -> tuple[np.ndarray, np.ndarray]:
  """(share of positive mass inside each image's box, the box's share of the image).

  maps (N, H, W); boxes (N, 4) as (left, top, right, bottom) in the maps' pixels.
  """
  maps = np.asarray(maps)
  shape = maps.shape[1:]
  masks = np.stack([box_mask(b, shape) for b in boxes])
  return mass_in(maps, masks), masks.mean(axis=(1, 2))


def _hull_mask(points: np.ndarray, pad: float, shape: tuple[int, int]) -> np.ndarray:
  """Pixels whose centres lie in the convex hull of `points`, grown by `pad` px."""
  from scipy.spatial import ConvexHull, QhullError
  h, w = shape
  ys, xs = np.mgrid[0:h, 0:w]
  centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
  try:
    hull = ConvexHull(points)
  except QhullError:   # collinear or coincident points: no area, only the padding
    d = np.min(np.linalg.norm(centres[:, None] - points[None], axis=-1), axis=1)
    return (d <= pad).reshape(h, w)
  # hull.equations: n . p + c <= 0 inside; the unit normals make n . p + c the
  # signed distance to each facet's line, so <= pad grows the hull by pad
  # (with straight, not rounded, corners).
  dist = centres @ hull.equations[:, :2].T + hull.equations[:, 2]
  return (dist.max(axis=1) <= pad).reshape(h, w)


def region_masks(landmarks, shape: tuple[int, int], pad: float = REGION_PAD) -> dict:
  """{region: (H, W) bool} of one face from its 68 landmarks (68, 2) as (x, y) px.

  Each region is the convex hull of its points (eyes/brows: one hull per
  side), grown by `pad` x the distance between the eye centres (points 36-41
  and 42-47), so that a region includes the skin that moves with it.
  """
  pts = np.asarray(landmarks, np.float64)
  if pts.shape != (68, 2):
    raise ValueError(f"expected 68 (x, y) landmarks, got shape {pts.shape}")
  eyes = np.linalg.norm(pts[36:42].mean(0) - pts[42:48].mean(0))
  out = {}
  for name, idx in REGIONS.items():
    parts = _SIDES.get(name, (idx,))
    out[name] = np.any([_hull_mask(pts[list(p)], pad * eyes, shape) for p in parts], axis=0)
  return out


def region_mass(maps, landmarks, pad: float = REGION_PAD) -> dict:
  """{region: (share of positive mass inside it (N,), its share of the image (N,))}.

  landmarks: (N, 68, 2) (x, y) in the maps' pixels; an image whose landmarks
  are nan (none found) gets nan.
  """
  maps = np.asarray(maps)
  shape = maps.shape[1:]
  out = {k: (np.full(len(maps), np.nan), np.full(len(maps), np.nan)) for k in REGIONS}
  for i, pts in enumerate(landmarks):
    if pts is None or not np.all(np.isfinite(pts)):
      continue
    for k, m in region_masks(pts, shape, pad).items():
      out[k][0][i] = mass_in(maps[i:i + 1], m[None])[0]
      out[k][1][i] = m.mean()
  return out


def deletion_order(maps) -> np.ndarray:
  """(N, H*W) pixel indices of each map, highest value first (ties by pixel index)."""
  maps = np.asarray(maps)
  return np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable")


def delete_top(images, order, fraction: float) -> np.ndarray:
  """The images with the first `fraction` of their pixels in `order` (N, H*W) replaced
  by the image's own per-channel mean: a flat value carries no local structure and
  keeps the image's brightness (a blur would keep the low frequencies a model may use)."""
  images = np.asarray(images)
  n, h, w = images.shape[:3]
  k = int(round(fraction * h * w))
  out = images.copy()
  if k == 0:
    return out
  mean = images.reshape(n, h * w, -1).mean(axis=1)
  if np.issubdtype(images.dtype, np.integer):
    mean = np.round(mean)
  flat = out.reshape(n, h * w, -1)
  flat[np.arange(n)[:, None], order[:, :k]] = mean[:, None].astype(images.dtype)
  return out


def deletion_curve(predict: Callable, images, maps, labels, video_ids, *,
                   fractions: Sequence[float] = DELETION_FRACTIONS, seed: int = 0,
                   num_classes: int = 7) -> dict:
  """Video-level macro-F1 as the most-attributed pixels are removed, and as random ones are.

  predict: images (N, H, W, C) -> class probabilities (N, K); frames are voted
  into videos (metrics.video_vote), each video's label is its first frame's,
  and macro-F1 is over the classes present (metrics.macro_f1). The random
  reference removes the same number of pixels in a seeded random order per
  image. AUC: the trapezoid area under each curve over the fractions (lower
  for the maps = removing what they point at hurts the model more). The
  videos (sorted ids), their labels and each point's voted predictions are
  returned too, so that an interval of the AUCs can be drawn by resampling
  videos (mer_jax.analysis.looking).
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  n, h, w = images.shape[:3]
  rng = np.random.default_rng(seed)
  random_order = np.argsort(rng.random((n, h * w)), axis=1)
  vids, first = np.unique(np.asarray(video_ids), return_index=True)
  video_labels = labels[first]

  def votes(x):
    v, pred = metrics.video_vote(predict(x), video_ids)
    assert (v == vids).all()
    return [int(p) for p in pred]

  order = deletion_order(maps)
  attributed = [votes(delete_top(images, order, f)) for f in fractions]
  random = [votes(delete_top(images, random_order, f)) for f in fractions]
  f1 = lambda preds: [metrics.macro_f1(video_labels, p, num_classes) for p in preds]
  fr = np.asarray(fractions, np.float64)
  return {"fractions": [float(f) for f in fr], "macro_f1": f1(attributed),
          "random_macro_f1": f1(random), "auc": float(np.trapezoid(f1(attributed), fr)),
          "random_auc": float(np.trapezoid(f1(random), fr)),
          "video_ids": [str(v) for v in vids], "video_labels": [int(k) for k in video_labels],
          "predictions": attributed, "random_predictions": random}
