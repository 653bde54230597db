"""Faces: dlib's detector, its per-frame disk cache, and the video's face.

The only module that knows dlib (imported when a `FaceDetector` is made, so the
rest of the package runs without it).

Detection. dlib's HOG frontal face detector runs on a half-size copy (320x240
of a CASME II frame, no upsampling) and, only if that finds nothing, on the
full frame: the half size is the fast case, and the full-size retry finds the
same faces where they are too small for it. dlib's smallest box is 80 px at
the scale it scans, so the half size finds faces whose box is >= 160 px and
the full size finds smaller ones, down to 80 px. Boxes are mapped back to
full-size pixels. The timings behind this choice are in BENCHMARKS.md.

Cache. Raw detections (every face, with its score) are cached on disk per
frame file (see `DetectionCache`), so all the dataset's configs, M1 and M2
alike, detect each frame once.

The video's face, over a video's frames (output frames and *context* frames:
the builder passes the MFS frames for every phase, so a frame's crop does not
depend on the phase being built):
1. reference box = per-coordinate median, over the frames with a detection,
   of each frame's best box -- dlib's highest-scoring one, the larger on a tie
   (the `detector(img)[0]` of the usual MER scripts). Score, not size: on
   skimage's astronaut pasted into a 640x480 frame, dlib also finds a box on
   her suit about as wide as the face's, scoring far lower;
2. each frame takes its box of highest overlap (IoU) with the reference, the
   higher-scoring on a tie, so a frame whose best box is a stray one still gets
   the video's face; a frame whose boxes all miss the reference has none;
3. a frame with none borrows the box of the nearest frame with one (in frame
   number, the earlier on a tie) -- counted as *borrowed*;
4. a video with no face in any frame has no face (M2 then falls back to a
   centre crop; see mer_jax.data.preprocess).
With `steady_box=True` (not the paper's method) every frame of a video takes
the reference box instead: dlib's boxes come from a 6/5-step image pyramid, so
a still face's box can jump in size between frames, which rescales the crop
between onset and apex; `VideoFaces.box_size_ratio` measures it.

Landmarks (for M2A/M3's alignment, mer_jax.data.align): dlib's 5-point shape
predictor (the model dlib trained for face alignment, on the boxes of its HOG
detector) from the `face_recognition_models` package, which ships the .dat
files, so nothing is downloaded at run time; the package's 68-point model is an
option (`LandmarkDetector(points=68)`). The predictor always answers, even on a
box with no face in it: whether there is a face is the detector's call, and
whether the points can be a face is align's.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import tempfile
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mer_jax.plumbing import paths
from mer_jax.plumbing.errors import NotFound

DETECT_SCALES = (0.5, 1.0)     # tried in turn until one finds a face
DETECT_UPSAMPLE = 0

Box = Sequence[float]          # (left, top, right, bottom[, score]) in full-size px


# --- boxes --------------------------------------------------------------------


def box_area(b: Box) -> float:
  """Area of a (left, top, right, bottom[, score]) box; 0 for an empty one."""
  return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def box_iou(a: Box, b: Box) -> float:
  """Intersection over union of two boxes."""
  inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
  union = box_area(a) + box_area(b) - inter
  return inter / union if union > 0 else 0.0


def box_score(b: Box) -> float:
  """dlib's detection score of a box (0 for a box without one)."""
  return float(b[4]) if len(b) > 4 else 0.0


# --- detection ----------------------------------------------------------------


class FaceDetector:
  """dlib's HOG frontal face detector, tried on downscaled copies first.

  Returns every face as [left, top, right, bottom, score] in full-size pixels.
  `key` names the detector and its settings, for the detection cache.
  """

  def __init__(self, scales: Sequence[float] = DETECT_SCALES, upsample: int = DETECT_UPSAMPLE):
    import dlib
    self._detector = dlib.get_frontal_face_detector()
    self.scales, self.upsample = tuple(scales), upsample
    # The version is in the key: a new dlib may find other boxes.
    self.key = (f"dlib{dlib.__version__}-hog-s{','.join(map(str, self.scales))}"
                f"-u{self.upsample}")

  def __call__(self, rgb: np.ndarray) -> list[list[float]]:
    from PIL import Image
    h, w = rgb.shape[:2]
    faces = []
    for scale in self.scales:
      small = rgb
      if scale != 1.0:
        small = np.asarray(Image.fromarray(rgb).resize(
            (int(round(w * scale)), int(round(h * scale))), Image.Resampling.BILINEAR))
      rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
      faces = [[r.left() / scale, r.top() / scale, (r.right() + 1) / scale,
                (r.bottom() + 1) / scale, float(s)] for r, s in zip(rects, scores)]
      if faces:
        break
    return faces


# --- landmarks ------------------------------------------------------------------

LANDMARK_MODELS = {5: "shape_predictor_5_face_landmarks.dat",
                   68: "shape_predictor_68_face_landmarks.dat"}


def landmark_model_path(points: int = 5) -> pathlib.Path:
  """The shape predictor's .dat file inside the installed `face_recognition_models`."""
  if points not in LANDMARK_MODELS:
    raise ValueError(f"points must be one of {sorted(LANDMARK_MODELS)}, got {points}")
  # find_spec, not import: the package's __init__ needs pkg_resources, which
  # recent setuptools no longer ships.
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise NotFound("dlib's landmark models come from the face_recognition_models "
                   "package: pip install face-recognition-models==0.3.0")
  path = (pathlib.Path(list(spec.submodule_search_locations)[0]) / "models"
          / LANDMARK_MODELS[points])
  if not path.is_file():
    raise NotFound(f"{path} is missing; reinstall face-recognition-models==0.3.0")
  return path


@functools.lru_cache(maxsize=None)
def _shape_predictor(points: int):
  import dlib
  return dlib.shape_predictor(str(landmark_model_path(points)))


class LandmarkDetector:
  """dlib's shape predictor: (gray uint8 (H, W), box) -> (points, 2) float64 (x, y), or None.

  None only for a box too small (< 8 px) or outside the image; otherwise the
  predictor's points, face or not (see the module's docstring). The model is
  loaded once per process and points count.
  """

  def __init__(self, points: int = 5):
    import dlib
    self.points = points
    self._predictor = _shape_predictor(points)
    self._rectangle = dlib.rectangle
    self.key = f"dlib{dlib.__version__}-shape{points}"

  def __call__(self, gray: np.ndarray, box: Box | None) -> np.ndarray | None:
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2:
      raise ValueError(f"expected a gray uint8 image (H, W), got {gray.dtype} {gray.shape}")
    if box is None:
      return None
    l, t, r, b = (int(round(c)) for c in box[:4])
    h, w = gray.shape
    if r - l < 8 or b - t < 8 or r <= 0 or b <= 0 or l >= w or t >= h:
      return None
    shape = self._predictor(np.ascontiguousarray(gray), self._rectangle(l, t, r, b))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


# --- the detection cache --------------------------------------------------------


def default_cache_dir() -> pathlib.Path:
  """The detection cache: `detections/` under mer_jax's cache root (mer_jax.plumbing.paths)."""
  return paths.cache_dir("detections")


class DetectionCache:
  """Raw detections of every face of a frame file, on disk, one small JSON file per frame.

  The key is the file's resolved path, size and mtime (ns) plus the detector's
  key, so an edited or replaced frame is detected again. Writes go to a temp
  file renamed into place (atomic on POSIX), so processes building several
  configs at once never read half a file; two of them detecting the same
  frame simply write the same content twice.
  """

  def __init__(self, cache_dir: str | os.PathLike | None = None):
    self.dir = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
      self.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise OSError(f"cannot create the detection cache {self.dir} ({e}); set "
                    "$MER_JAX_CACHE or pass cache_dir= to a writable directory") from e

  def _file(self, path: str | os.PathLike, detector_key: str) -> tuple[pathlib.Path, str]:
    path = pathlib.Path(path).resolve()
    st = path.stat()
    ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{detector_key}"
    digest = hashlib.sha1(ident.encode()).hexdigest()
    return self.dir / digest[:2] / f"{digest}.json", ident

  def get(self, path: str | os.PathLike, detector_key: str) -> list | None:
    """The cached faces of a frame file, or None (never detected, changed or gone)."""
    try:
      file, ident = self._file(path, detector_key)
      entry = json.loads(file.read_text())
    except (OSError, ValueError):
      return None
    return entry["faces"] if entry.get("key") == ident else None

  def put(self, path: str | os.PathLike, detector_key: str, faces: list) -> None:
    file, ident = self._file(path, detector_key)
    file.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".json")
    try:
      with os.fdopen(fd, "w") as f:
        json.dump({"key": ident, "faces": faces}, f)
      os.replace(tmp, file)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise


@dataclasses.dataclass
class Detections:
  """Every face of each frame of a video, and where they came from."""
  faces: dict[int, list]       # frame -> [[left, top, right, bottom, score], ...]
  detected: int = 0            # frames run through the detector (cache misses)
  cached: int = 0              # frames whose faces came from the cache
  seconds: float = 0.0         # time in the detector


def detect_frames(numbers: Iterable[int], files: Mapping[int, os.PathLike],
                  read: Callable[[int], np.ndarray | None],
                  detector: Callable[[np.ndarray], list],
                  cache: DetectionCache | None = None) -> Detections:
  """The faces of frames `numbers` (in that order), from the cache where it has them.

  `files` maps frame numbers to their files (the cache's key); `read(n)` gives
  a frame's RGB pixels, or None for a frame to leave out (unreadable). A frame
  without a file is never looked up in the cache. `detector` is any callable
  rgb -> faces with a `key` attribute.
  """
  out = Detections({})
  for n in numbers:
    faces = None
    if cache is not None and n in files:
      faces = cache.get(files[n], detector.key)
    if faces is not None:
      out.cached += 1
    else:
      rgb = read(n)
      if rgb is None:
        continue
      start = time.perf_counter()
      faces = detector(rgb)
      out.seconds += time.perf_counter() - start
      out.detected += 1
      if cache is not None:
        cache.put(files[n], detector.key, faces)
    out.faces[n] = faces
  return out


# --- the video's face -----------------------------------------------------------


def reference_box(boxes: Sequence[Box]) -> list[float]:
  """Per-coordinate median of boxes: robust to a few frames with a stray largest box."""
  return [float(v) for v in np.median(np.asarray([b[:4] for b in boxes], float), axis=0)]


def choose_faces(detections: Mapping[int, Sequence[Box]]) -> dict[int, Box | None]:
  """The video's face in each frame, None where a frame has none of it (steps 1-2)."""
  best = [max(boxes, key=lambda b: (box_score(b), box_area(b)))
          for boxes in detections.values() if boxes]
  if not best:
    return {n: None for n in detections}
  ref = reference_box(best)
  chosen = {}
  for n, boxes in detections.items():
    pick = max(boxes, key=lambda b: (box_iou(b, ref), box_score(b)), default=None)
    chosen[n] = pick if pick is not None and box_iou(pick, ref) > 0 else None
  return chosen


def borrow_nearest(chosen: Mapping[int, Box | None]) -> dict[int, tuple[Box | None, int | None]]:
  """frame -> (box, frame it is from); a frame without a box takes the nearest one's (step 3)."""
  have = sorted(n for n, b in chosen.items() if b is not None)
  out = {}
  for n, b in chosen.items():
    if b is not None:
      out[n] = (b, n)
    elif have:
      src = min(have, key=lambda m: (abs(m - n), m))
      out[n] = (chosen[src], src)
    else:
      out[n] = (None, None)
  return out


@dataclasses.dataclass
class VideoFaces:
  """The video's face in each of its frames."""
  own: dict[int, Box | None]   # frame -> its own detection of the video's face, or None
  boxes: dict[int, tuple[Box | None, int | None]]  # frame -> (box to crop, frame it is from)
  box_size_ratio: float = float("nan")  # largest / smallest own face-box width

  @property
  def found(self) -> bool:
    """Whether any frame has its own detection of the face."""
    return any(b is not None for b in self.own.values())


def video_faces(detections: Mapping[int, Sequence[Box]], steady_box: bool = False) -> VideoFaces:
  """Steps 1-3 over a video's detections; with `steady_box` every frame takes the
  reference box (its source is the frame itself where it has its own box, else None)."""
  own = choose_faces(detections)
  found = [b for b in own.values() if b is not None]
  ratio = float("nan")
  if found:
    widths = [b[2] - b[0] for b in found]
    ratio = max(widths) / min(widths)
  if steady_box and found:
    ref = reference_box(found)
    boxes = {n: (ref, n if own[n] is not None else None) for n in own}
  else:
    boxes = borrow_nearest(own)
  return VideoFaces(own, boxes, ratio)
