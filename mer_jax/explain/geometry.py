"""Where the face and its parts are in a dataset image: the frame's dlib face box and
68 landmarks, mapped into the method's output image (the pixels the maps cover).

The face is found as the build found it (mer_jax.data.preprocess): dlib's
detections over the frame and the video's MFS frames, from the detection cache,
the video's face chosen by mer_jax.data.faces. The box is that face's box in
the frame; the landmarks are dlib's 68-point model on it. Mapping:
- M1: the centre square of the frame, scaled to the output side;
- M2 (and M2A/M3 without plausible onset landmarks): the face box + 20 px,
  scaled to the output square (the crop is the face box plus its margin, so
  the box fills most of the image: its chance level is high by construction);
  a video without any face: the centre square (M2's fallback);
- M2A, M3: the video's alignment transform (the box: the bounding box of its
  four corners through it).
"""
from __future__ import annotations

import numpy as np

from mer_jax.data import align, faces, phases, preprocess
from mer_jax.data.videos import Video
from mer_jax.data.pixels import centre_square, expand_box, read_frame, to_gray


def _box_map(region, size: int):
  """(x, y) points of the frame -> the output image of a crop of `region`, resized."""
  l, t, r, b = region
  scale = np.array([size / (r - l), size / (b - t)])
  return lambda p: (np.asarray(p, np.float64) - [l, t]) * scale


def _corners(box) -> np.ndarray:
  l, t, r, b = box[:4]
  return np.array([[l, t], [r, t], [l, b], [r, b]], np.float64)


def video_geometry(video: Video, numbers, method, *, detector=None, landmarker68=None,
                   landmarker5=None, cache: faces.DetectionCache | None = None) -> dict:
  """{frame: (box (4,), landmarks (68, 2))} in the output image's pixels for the
  frames `numbers` of a video; nan where the frame has no face (or no landmarks)."""
  method = preprocess.Method.parse(method)
  size = preprocess.IMAGE_SHAPE[method][0]
  detector = detector if detector is not None else faces.FaceDetector()
  landmarker68 = landmarker68 if landmarker68 is not None else faces.LandmarkDetector(68)
  cached: dict[int, np.ndarray] = {}

  def read(n):
    if n not in cached and n in video.frames:
      cached[n] = read_frame(video.frames[n])
    return cached.get(n)

  context = {f.frame_index for f in phases.select_frames(video, "mfs")}
  found = faces.detect_frames(sorted(set(numbers) | context | {video.onset}), video.frames,
                              read, detector, cache)
  face = faces.video_faces(found.faces)
  matrix = None
  if method.aligns and face.found:
    landmarker5 = landmarker5 if landmarker5 is not None else faces.LandmarkDetector(5)
    matrix = preprocess.onset_transform(video, read, face, landmarker5, size)
    if matrix is None:
      face = faces.video_faces(found.faces, steady_box=True)
  out = {}
  for n in numbers:
    rgb = read(n)
    box = face.boxes.get(n, (None, None))[0]
    if rgb is None or box is None:
      out[n] = (np.full(4, np.nan), np.full((68, 2), np.nan))
      continue
    if matrix is not None:
      to_out = lambda p: align.apply(matrix, p)
    elif method is preprocess.Method.M1:
      to_out = _box_map(centre_square(*rgb.shape[:2]), size)
    else:
      to_out = _box_map(expand_box(box, *rgb.shape[:2]), size)
    c = to_out(_corners(box))
    mapped = np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])
    pts = landmarker68(to_gray(rgb)[..., 0], box)
    out[n] = (mapped, to_out(pts) if pts is not None else np.full((68, 2), np.nan))
  return out
