"""M2A: the face aligned by its eyes -- landmarks, a similarity transform, the warp.

Landmarks. dlib's 5-point shape predictor (the model dlib trained for face
alignment; it runs on the boxes of dlib's HOG detector) from the
`face_recognition_models` package, which ships the .dat files, so nothing is
downloaded at run time. The 68-point model of the same package is an option
(`points=68`). An eye's centre is the mean of its points (5-point: its two
corners; 68-point: its six). The predictor always answers, even on a box with
no face in it, so whether there is a face is the detector's call (faces.py):
`landmarks` takes the box the detector found and returns None only for no box
or landmarks that cannot be a face (eyes outside the box, a tilt over 45
degrees, eyes closer than 0.2 or farther than 0.8 box widths apart).

Template. A similarity transform (rotation, one scale, translation) puts the
eye centres level at y = EYE_Y * size, EYE_DISTANCE * size apart, centred
left-right, in a size x size gray image. These values make the aligned face
fill the image as M2's crop (dlib's box grown by 20 px per side) fills it for
a face box of ~220 px (the synthetic CASME II's): dlib's boxes put the eyes
~0.42 box widths apart and ~0.27 box heights below the top.

Per video. One transform, from the onset frame, serves every frame of a video
(`video_transform`), so alignment does not jitter from frame to frame and add
motion to M3's flow; the per-frame option computes one for each frame
(`frame_transforms(..., per_frame=True)`). The transform is refined once: the
predictor runs again on the aligned face and the remaining correction is
composed in, so the final landmarks come from an upright face at the
template's scale, the pose the predictor sees best. Without a transform (no
box, implausible landmarks) the caller falls back to M2's box and counts the
fallback.

The warp is OpenCV's `warpAffine`, bilinear, border replicated.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib
from typing import Sequence

import numpy as np

Box = tuple[int, int, int, int]  # left, top, right, bottom (dlib's rectangle, pixels)

EYE_Y = 0.30         # eye line, as a fraction of the output side from the top
EYE_DISTANCE = 0.37  # between the eye centres, as a fraction of the output side
SIZE = 224

MODEL_FILES = {5: "shape_predictor_5_face_landmarks.dat",
               68: "shape_predictor_68_face_landmarks.dat"}
# Each eye's points, image-left eye first (the subject's right eye when unmirrored).
_EYES = {5: ((2, 3), (0, 1)), 68: (tuple(range(36, 42)), tuple(range(42, 48)))}


def model_path(points: int = 5) -> pathlib.Path:
  """The shape predictor's .dat file inside the installed `face_recognition_models`."""
  if points not in MODEL_FILES:
    raise ValueError(f"points must be one of {sorted(MODEL_FILES)}, got {points}")
  # find_spec, not import: the package's __init__ needs pkg_resources, which
  # recent setuptools no longer ships.
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("dlib's landmark models come from the face_recognition_models "
                            "package: pip install face-recognition-models==0.3.0")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILES[points]
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; reinstall face-recognition-models==0.3.0")
  return path


@functools.lru_cache(maxsize=None)
def _predictor(points: int):
  import dlib
  return dlib.shape_predictor(str(model_path(points)))


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


def landmarks(gray: np.ndarray, box: Box | None, points: int = 5) -> np.ndarray | None:
  """dlib's landmarks, (points, 2) float64 (x, y), of the face in `box`; None without one."""
  gray = _as_gray(gray)
  if box is None:
    return None
  l, t, r, b = (int(round(c)) for c in box)
  h, w = gray.shape
  if r - l < 8 or b - t < 8 or r <= 0 or b <= 0 or l >= w or t >= h:
    return None
  import dlib
  shape = _predictor(points)(gray, dlib.rectangle(l, t, r, b))
  found = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
  return found if _plausible(found, (l, t, r, b)) else None


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


def warp(gray: np.ndarray, matrix: np.ndarray, size: int = SIZE) -> np.ndarray:
  """`gray` through the 2x3 `matrix` into a size x size uint8 image."""
  import cv2
  return cv2.warpAffine(_as_gray(gray), np.asarray(matrix, np.float64), (size, size),
                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
  """outer after inner, both 2x3."""
  return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def _box_through(matrix: np.ndarray, box: Box) -> Box:
  """The box's centre and width mapped by `matrix`, as an upright square box."""
  l, t, r, b = box
  centre = matrix[:, :2] @ np.array([(l + r) / 2, (t + b) / 2]) + matrix[:, 2]
  half = np.hypot(*matrix[:, 0]) * (r - l) / 2
  return (int(round(centre[0] - half)), int(round(centre[1] - half)),
          int(round(centre[0] + half)), int(round(centre[1] + half)))


def video_transform(onset_gray: np.ndarray, box: Box | None, size: int = SIZE, points: int = 5,
                    refine: bool = True) -> np.ndarray | None:
  """The 2x3 matrix that aligns the face in `box` of `onset_gray`; None without landmarks."""
  found = landmarks(onset_gray, box, points)
  if found is None:
    return None
  matrix = similarity_to_template(*eye_centres(found), size=size)
  if refine:
    upright = warp(onset_gray, matrix, size)
    again = landmarks(upright, _box_through(matrix, box), points)
    if again is not None:
      matrix = _compose(similarity_to_template(*eye_centres(again), size=size), matrix)
  return matrix


def frame_transforms(frames: Sequence[np.ndarray], boxes: Sequence[Box | None], onset: int = 0,
                     per_frame: bool = False, size: int = SIZE,
                     points: int = 5) -> list[np.ndarray | None]:
  """Each frame's matrix: the onset frame's for all (default) or each frame's own."""
  if len(frames) != len(boxes):
    raise ValueError(f"{len(frames)} frames but {len(boxes)} boxes")
  if not per_frame:
    return [video_transform(frames[onset], boxes[onset], size, points)] * len(frames)
  return [video_transform(f, b, size, points) for f, b in zip(frames, boxes)]
