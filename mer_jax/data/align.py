"""M2A: the face aligned by its eyes -- landmarks' geometry, a similarity transform, the warp.

Pure geometry and an OpenCV warp: the landmarks come from a `landmarker`
argument, a callable (gray, box) -> (points, 2) or None --
`mer_jax.data.faces.LandmarkDetector` (dlib's 5-point shape predictor;
nothing but faces.py knows dlib). An eye's centre is the mean of its points
(5-point: its two corners; 68-point: its six). The predictor answers on any
box, so `landmarks` keeps only points that can be a face: eyes inside the
box, a tilt under 45 degrees, eyes 0.2 to 0.8 box widths apart; else None.

Template. A similarity transform (rotation, one scale, translation) puts the
eye centres level at y = EYE_Y * size, EYE_DISTANCE * size apart, centred
left-right, in a size x size gray image. These values make the aligned face
fill the image as M2's crop (dlib's box grown by 20 px per side) fills it for
a face box of ~220 px (the synthetic CASME II's): dlib's boxes put the eyes
~0.42 box widths apart and ~0.27 box heights below the top, so the box's
centre lands near the image's centre.

Per video. One transform, from the onset frame, serves every frame of a video
(`video_transform`), so alignment does not jitter from frame to frame and add
motion to M3's flow. Measured on the synthetic CASME II
(60 videos, onset -> apex and onset -> offset), per-frame alignment nearly
doubles the flow on the still parts of the face (median |flow| over the face
1.06 px against 0.56 px per video): the landmarks' own frame-to-frame noise is
larger than the head jitter it removes, so the builder aligns per video only. The transform is refined once: the
predictor runs again on the aligned face and the remaining correction is
composed in, so the final landmarks come from an upright face at the
template's scale, the pose the predictor sees best. Without a transform (no
box, implausible landmarks) the caller falls back to M2's box and counts the
fallback (mer_jax.data.preprocess).

The warp is OpenCV's `warpAffine`, bilinear, border replicated. Where the
transform shrinks (scale < 1: a face larger than the template's, as CASME
II's ~280 px faces), the frame is first shrunk by that scale with area
averaging (`cv2.INTER_AREA`), so fine texture does not alias (M2's resize is
antialiased for the same reason); the warp then only rotates and shifts.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Box = Sequence[float]  # left, top, right, bottom[, score] (dlib's box, pixels)
Landmarker = Callable[[np.ndarray, Box], "np.ndarray | None"]

EYE_Y = 0.30         # eye line, as a fraction of the output side from the top
EYE_DISTANCE = 0.37  # between the eye centres, as a fraction of the output side
SIZE = 224

# Each eye's points, image-left eye first (the subject's right eye when unmirrored).
_EYES = {5: ((2, 3), (0, 1)), 68: (tuple(range(36, 42)), tuple(range(42, 48)))}


def _as_gray(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 2:
    raise ValueError(f"expected a gray uint8 image (H, W), got {image.dtype} {image.shape}")
  return np.ascontiguousarray(image)


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(image-left eye, image-right eye) centres, (x, y) float64, of 5 or 68 landmarks."""
  points = np.asarray(points, np.float64)
  if len(points) not in _EYES:
    raise ValueError(f"expected 5 or 68 landmarks, got {len(points)}")
  left, right = _EYES[len(points)]
  return points[list(left)].mean(0), points[list(right)].mean(0)


def _plausible(points: np.ndarray, box: Box) -> bool:
  left, right = eye_centres(points)
  width = box[2] - box[0]
  dx, dy = right - left
  distance = np.hypot(dx, dy)
  mid = (left + right) / 2
  return bool(0.2 * width <= distance <= 0.8 * width and dx > abs(dy)
              and box[0] <= mid[0] <= box[2] and box[1] <= mid[1] <= box[3])


def landmarks(gray: np.ndarray, box: Box | None,
              landmarker: Landmarker) -> np.ndarray | None:
  """The landmarks `landmarker` finds for the face in `box`, if they can be a face; else None."""
  gray = _as_gray(gray)
  if box is None:
    return None
  found = landmarker(gray, box)
  if found is None:
    return None
  found = np.asarray(found, np.float64)
  return found if _plausible(found, box) else None


def similarity_to_template(left_eye, right_eye, size: int = SIZE, eye_y: float = EYE_Y,
                           eye_distance: float = EYE_DISTANCE) -> np.ndarray:
  """The 2x3 matrix (source -> output pixels) that puts the eyes level at the template's places."""
  left_eye, right_eye = np.asarray(left_eye, np.float64), np.asarray(right_eye, np.float64)
  dx, dy = right_eye - left_eye
  distance = np.hypot(dx, dy)
  if distance <= 0:
    raise ValueError("the two eye centres coincide")
  scale = eye_distance * size / distance
  cos, sin = scale * dx / distance, scale * dy / distance  # rotate by -angle(eye line)
  rotation = np.array([[cos, sin], [-sin, cos]])
  mid = (left_eye + right_eye) / 2
  target = np.array([size / 2, eye_y * size])
  return np.hstack([rotation, (target - rotation @ mid)[:, None]])


def scale_of(matrix: np.ndarray) -> float:
  """The scale of a similarity transform (output px per source px)."""
  matrix = np.asarray(matrix, np.float64)
  return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def apply(matrix: np.ndarray, points) -> np.ndarray:
  """(x, y) points, (N, 2) or (2,), through a 2x3 matrix."""
  matrix = np.asarray(matrix, np.float64)
  return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp(gray: np.ndarray, matrix: np.ndarray, size: int = SIZE) -> np.ndarray:
  """`gray` through the 2x3 `matrix` into a size x size uint8 image (area-shrunk first
  where the matrix shrinks; see the module's docstring)."""
  import cv2
  gray = _as_gray(gray)
  matrix = np.asarray(matrix, np.float64)
  scale = scale_of(matrix)
  if scale < 0.95:
    h, w = gray.shape
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    gray = cv2.resize(gray, (sw, sh), interpolation=cv2.INTER_AREA)
    matrix = matrix @ np.diag([w / sw, h / sh, 1.0])  # small-image px -> source px -> output
  return cv2.warpAffine(gray, matrix, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
  """outer after inner, both 2x3."""
  return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def _box_through(matrix: np.ndarray, box: Box) -> Box:
  """The box's centre and width mapped by `matrix`, as an upright square box."""
  l, t, r, b = box[:4]
  centre = apply(matrix, ((l + r) / 2, (t + b) / 2))
  half = scale_of(matrix) * (r - l) / 2
  return (int(round(centre[0] - half)), int(round(centre[1] - half)),
          int(round(centre[0] + half)), int(round(centre[1] + half)))


def video_transform(onset_gray: np.ndarray, box: Box | None, landmarker: Landmarker,
                    size: int = SIZE, refine: bool = True) -> np.ndarray | None:
  """The 2x3 matrix that aligns the face in `box` of `onset_gray`; None without landmarks."""
  found = landmarks(onset_gray, box, landmarker)
  if found is None:
    return None
  matrix = similarity_to_template(*eye_centres(found), size=size)
  if refine:
    upright = warp(onset_gray, matrix, size)
    again = landmarks(upright, _box_through(matrix, box), landmarker)
    if again is not None:
      matrix = _compose(similarity_to_template(*eye_centres(again), size=size), matrix)
  return matrix
