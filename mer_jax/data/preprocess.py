"""The paper's two preprocessing methods; the only module that knows dlib.

M1  the raw frame, centre-cropped to its largest square (480x480 of a 640x480
    CASME II frame), resized to 384x384, RGB.
M2  dlib's frontal face detector; the box grown by 20 px on every side and
    clipped to the frame; crop; grayscale (ITU-R 601 luma, as PIL's "L":
    Y = 0.299 R + 0.587 G + 0.114 B); resized to 224x224.

Resizing is PIL's bicubic, which PIL antialiases when it shrinks (its kernel
widens with the scale factor). Bicubic because every backbone of the paper was
pretrained on bicubic-resized ImageNet (timm's `pretrained_cfg.interpolation`
is 'bicubic' for ViT-B/32, Swin-B and PoolFormer-m36/m48), and antialiased
because both methods mostly shrink (480 -> 384; a ~250 px face box -> 224):
without it the fine texture that micro-expressions live in aliases. Gray is
taken before the resize (3x less to resize; both steps are linear, so the
order changes pixels by rounding only).

Faces. dlib's HOG detector runs on a half-size copy (320x240, no upsampling)
and, only if that finds nothing, on the full frame. Measured per 640x480 frame
(synthetic CASME II, shared 2-core machine): half size 9-12 ms, full size
23-31 ms, full size upsampled once 99-117 ms, half size upsampled once
28-51 ms; this cascade 10 ms, with the same faces found as at full size.
dlib's smallest box is 80 px at the scale it scans, so the half size finds
faces whose box is >= 160 px (the synthetic faces' are 176-250 px), and the
full-size retry finds smaller ones, down to 80 px: a copy with smaller faces
costs full-size time for them, and finds the same faces. Boxes are mapped back to
full-size pixels. Raw detections (every face, with its score) are cached on
disk per frame file (see `DetectionCache`), so all six configs of the
dataset, M1 and M2 alike, detect each frame once.

Choosing the video's face, over a video's *context* frames (the builder passes
the MFS frames for every phase, so a frame's crop does not depend on the phase
being built):
1. reference box = per-coordinate median, over the frames with a detection,
   of each frame's best box -- dlib's highest-scoring one, the larger on a tie
   (the `detector(img)[0]` of the usual MER scripts). Score, not size: on
   skimage's astronaut pasted into a 640x480 frame, dlib also finds a box on
   her suit, 87 px wide to the face's 88, scoring 0.03 to the face's 1.49;
2. each frame takes its box of highest overlap (IoU) with the reference, the
   higher-scoring on a tie, so a frame whose best box is a stray one still gets
   the video's face; a frame whose boxes all miss the reference has none;
3. a frame with none borrows the box of the nearest frame with one (in frame
   number, the earlier on a tie) -- counted as *borrowed*;
4. a video with no face in any frame is centre-cropped like M1 but to M2's
   224x224 gray -- counted as a *fallback* video.
With `steady_box=True` (not the paper's method) every frame of a video takes
the reference box instead: dlib's boxes come from a 6/5-step image pyramid, so
a still face's box can jump by ~20 % in size between frames, which rescales
the crop between onset and apex; `box_size_ratio` in the report measures it.

Quality figures (the paper's Table I), reported by `PreprocessReport`:
- information density = output pixels x channels (M1 384*384*3 = 442,368;
  M2 224*224*1 = 50,176);
- face-centring rate = the fraction of output images in which the centre of
  the frame's OWN chosen face box (step 2 above), mapped through the crop and
  resize into the output image, lies within 10 % of the output side
  (Euclidean distance) of the output image's centre. A frame without its own
  detection (borrowed or fallback) counts as not centred. For M1 the box is
  mapped through the centre crop; M1 and M2 use the same detections;
- face coverage = the mean, over output images, of the fraction of the output
  area covered by that box (clipped to the crop); 0 without own detection.
"""
from __future__ import annotations

import collections
import collections.abc
import dataclasses
import enum
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from mer_jax.data.casme2 import Casme2Error, Video

MARGIN = 20                    # px added on each side of the face box (paper)
CENTRED_WITHIN = 0.10          # of the output side, for the face-centring rate
DETECT_SCALES = (0.5, 1.0)     # tried in turn until one finds a face
DETECT_UPSAMPLE = 0

Box = Sequence[float]          # (left, top, right, bottom[, score]) in full-size px


class Method(enum.Enum):
  M1 = "m1"
  M2 = "m2"

  @classmethod
  def parse(cls, value: "str | Method") -> "Method":
    if isinstance(value, cls):
      return value
    try:
      return cls(str(value).strip().lower())
    except ValueError:
      raise ValueError(f"Unknown method {value!r}; valid: "
                       f"{', '.join(m.value for m in cls)}") from None


IMAGE_SHAPE = {Method.M1: (384, 384, 3), Method.M2: (224, 224, 1)}


def information_density(method: "Method | str") -> int:
  """Pixels x channels of one output image (the paper's Table I)."""
  h, w, c = IMAGE_SHAPE[Method.parse(method)]
  return h * w * c


# --- geometry ---------------------------------------------------------------


def read_frame(path: str | os.PathLike) -> np.ndarray:
  """HxWx3 uint8 RGB (gray, palette and RGBA files converted).

  A missing or unreadable file raises Casme2Error naming it; the caller adds
  the video.
  """
  from PIL import Image
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
    raise Casme2Error(f"cannot read frame {path} ({type(e).__name__}: {e}); "
                      "restore the file from your CASME II copy") from e


def _resize(img: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image
  squeeze = img.ndim == 3 and img.shape[2] == 1
  out = np.asarray(Image.fromarray(img[..., 0] if squeeze else img).resize(
      (size, size), Image.Resampling.BICUBIC))
  return out[..., None] if squeeze else out


def to_gray(rgb: np.ndarray) -> np.ndarray:
  """HxWx1 uint8 ITU-R 601 luma, computed by PIL's "L" conversion."""
  from PIL import Image
  return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]


def centre_square(h: int, w: int) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of the largest centred square."""
  s = min(h, w)
  left, top = (w - s) // 2, (h - s) // 2
  return left, top, left + s, top + s


def centre_crop(rgb: np.ndarray, size: int = 384) -> np.ndarray:
  """M1: the largest centred square, resized to size x size, RGB."""
  left, top, right, bottom = centre_square(*rgb.shape[:2])
  return _resize(np.ascontiguousarray(rgb[top:bottom, left:right]), size)


def expand_box(box: Box, h: int, w: int, margin: int = MARGIN) -> tuple[int, int, int, int]:
  """The box grown by `margin` px on each side (rounded), clipped to an h x w image."""
  left, top, right, bottom = (int(round(v)) for v in box[:4])
  return (max(0, left - margin), max(0, top - margin),
          min(w, right + margin), min(h, bottom + margin))


def face_crop(rgb: np.ndarray, box: Box, size: int = 224, margin: int = MARGIN) -> np.ndarray:
  """M2: box + margin (clipped to the frame), crop, gray, resized: size x size x 1."""
  left, top, right, bottom = expand_box(box, *rgb.shape[:2], margin)
  if right <= left or bottom <= top:
    raise ValueError(f"face box {list(box[:4])} lies outside the {rgb.shape[1]}x"
                     f"{rgb.shape[0]} frame")
  return _resize(to_gray(np.ascontiguousarray(rgb[top:bottom, left:right])), size)


def fallback_crop(rgb: np.ndarray, size: int = 224) -> np.ndarray:
  """M2 for a video with no face at all: M1's centre square, at M2's size and colour."""
  left, top, right, bottom = centre_square(*rgb.shape[:2])
  return _resize(to_gray(np.ascontiguousarray(rgb[top:bottom, left:right])), size)


# --- detection --------------------------------------------------------------


class FaceDetector:
  """dlib's HOG frontal face detector, tried on downscaled copies first.

  Returns every face as [left, top, right, bottom, score] in full-size pixels.
  `calls` counts frames run through the detector (for tests and reports).
  """

  def __init__(self, scales: Sequence[float] = DETECT_SCALES, upsample: int = DETECT_UPSAMPLE):
    import dlib
    self._detector = dlib.get_frontal_face_detector()
    self.scales, self.upsample = tuple(scales), upsample
    # The version is in the key: a new dlib may find other boxes.
    self.key = (f"dlib{dlib.__version__}-hog-s{','.join(map(str, self.scales))}"
                f"-u{self.upsample}")
    self.calls = 0

  def __call__(self, rgb: np.ndarray) -> list[list[float]]:
    from PIL import Image
    self.calls += 1
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


def default_cache_dir() -> pathlib.Path:
  """$MER_JAX_CACHE if set, else ~/.cache/mer_jax/detections."""
  env = os.environ.get("MER_JAX_CACHE")
  return pathlib.Path(env or "~/.cache/mer_jax/detections").expanduser()


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


def _area(b: Box) -> float:
  return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _iou(a: Box, b: Box) -> float:
  inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
  union = _area(a) + _area(b) - inter
  return inter / union if union > 0 else 0.0


def _score(b: Box) -> float:
  return float(b[4]) if len(b) > 4 else 0.0


def choose_faces(detections: Mapping[int, Sequence[Box]]) -> dict[int, Box | None]:
  """The video's face in each frame, None where a frame has none of it (steps 1-2)."""
  best = [max(boxes, key=lambda b: (_score(b), _area(b))) for boxes in detections.values()
          if boxes]
  if not best:
    return {n: None for n in detections}
  ref = reference_box(best)
  chosen = {}
  for n, boxes in detections.items():
    pick = max(boxes, key=lambda b: (_iou(b, ref), _score(b)), default=None)
    chosen[n] = pick if pick is not None and _iou(pick, ref) > 0 else None
  return chosen


def reference_box(boxes: Sequence[Box]) -> list[float]:
  """Per-coordinate median of boxes: robust to a few frames with a stray largest box."""
  return [float(v) for v in np.median(np.asarray([b[:4] for b in boxes], float), axis=0)]


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


def centring(face: Box | None, crop_box: Box, out_size: int) -> tuple[bool, float]:
  """(face centre within CENTRED_WITHIN of the output centre, face share of the output area)."""
  if face is None:
    return False, 0.0
  left, top, right, bottom = crop_box[:4]
  cx = ((face[0] + face[2]) / 2 - left) * out_size / (right - left)
  cy = ((face[1] + face[3]) / 2 - top) * out_size / (bottom - top)
  off = np.hypot(cx - out_size / 2, cy - out_size / 2) / out_size
  inside = (max(face[0], left), max(face[1], top), min(face[2], right), min(face[3], bottom))
  return bool(off <= CENTRED_WITHIN), _area(inside) / _area(crop_box)


# --- one video --------------------------------------------------------------


@dataclasses.dataclass
class VideoReport:
  """What happened to one video; `PreprocessReport` adds these up."""
  video_id: str
  frames: int = 0               # output images
  detected: int = 0             # frames run through the detector (cache misses)
  cached: int = 0               # frames whose detections came from the cache
  detect_seconds: float = 0.0
  borrowed: list = dataclasses.field(default_factory=list)  # (frame, frame its box is from)
  fallback: bool = False        # M2 found no face in any frame: centre crop
  skipped: list = dataclasses.field(default_factory=list)   # unreadable output frames (files)
  context_unreadable: list = dataclasses.field(default_factory=list)  # context-only, dropped
  centred: int = 0              # output images whose own face is centred
  coverage: float = 0.0         # summed face share of the output area
  box_size_ratio: float = float("nan")  # largest / smallest own face-box width


def _frame_number(f: Any) -> int:
  return int(getattr(f, "frame_index", f))  # ints or phases.PhaseFrame


def _frame_file(video: Video, n: int) -> str:
  path = video.frames.get(n)
  if path is not None:
    return str(path)
  folder = next((str(pathlib.Path(p).parent) for p in video.frames.values()), video.video_id)
  return f"{folder}/img{n}.jpg"


def preprocess_video(video: Video, frames: Sequence[int], method: "Method | str", *,
                     context_frames: Sequence[int] | None = None,
                     cache: DetectionCache | None = None,
                     detector: Callable[[np.ndarray], list] | None = None,
                     skip_unreadable: bool = False,
                     steady_box: bool = False) -> tuple[list[np.ndarray | None], VideoReport]:
  """Preprocessed images of `frames` (ints or PhaseFrames) of one video.

  Returns (images aligned with `frames`, report); a repeated frame is
  computed once and repeated. Faces are detected and
  chosen over frames + context_frames. An output frame that is missing or
  unreadable raises Casme2Error naming the file and the video, or with
  skip_unreadable is None in the list and named in `report.skipped`; an
  unreadable context-only frame is dropped from the context and listed in
  `report.context_unreadable`. `detector` is any callable rgb -> faces with a
  `key` attribute (default: `FaceDetector()`).
  """
  method = Method.parse(method)
  detector = detector if detector is not None else FaceDetector()
  report = VideoReport(video.video_id)
  numbers = [_frame_number(f) for f in frames]
  wanted = set(numbers)
  pixels: dict[int, np.ndarray] = {}

  def read(n: int) -> np.ndarray | None:
    if n not in pixels:
      try:
        if n not in video.frames:
          raise Casme2Error(f"frame {_frame_file(video, n)} is missing; restore it from "
                            "your CASME II copy")
        pixels[n] = read_frame(video.frames[n])
      except Casme2Error as e:
        if n in wanted and not skip_unreadable:
          raise Casme2Error(f"video {video.video_id}: {e} (or pass skip_unreadable=True "
                            "to skip such frames and list them in the report)") from None
        (report.skipped if n in wanted else report.context_unreadable).append(
            _frame_file(video, n))
        pixels[n] = None
    return pixels[n]

  detections = {}
  for n in sorted(wanted | {_frame_number(f) for f in context_frames or ()}):
    faces = None
    if cache is not None and n in video.frames:
      faces = cache.get(video.frames[n], detector.key)
    if faces is not None:
      report.cached += 1
    else:
      rgb = read(n)
      if rgb is None:
        continue
      start = time.perf_counter()
      faces = detector(rgb)
      report.detect_seconds += time.perf_counter() - start
      report.detected += 1
      if cache is not None:
        cache.put(video.frames[n], detector.key, faces)
    detections[n] = faces

  chosen = choose_faces(detections)
  own = [b for b in chosen.values() if b is not None]
  report.fallback = method is Method.M2 and not own
  if own:
    widths = [b[2] - b[0] for b in own]
    report.box_size_ratio = max(widths) / min(widths)
  if steady_box and own:
    ref = reference_box(own)
    boxes = {n: (ref, n if chosen[n] is not None else None) for n in chosen}
  else:
    boxes = borrow_nearest(chosen)

  size = IMAGE_SHAPE[method][0]
  done: dict[int, np.ndarray | None] = {}
  for n in numbers:
    if n in done:
      continue
    rgb = read(n)
    if rgb is None:
      done[n] = None
      continue
    h, w = rgb.shape[:2]
    box, src = boxes.get(n, (None, None))
    if method is Method.M1:
      done[n], crop_box = centre_crop(rgb, size), centre_square(h, w)
    elif box is None:
      done[n], crop_box = fallback_crop(rgb, size), centre_square(h, w)
    else:
      done[n], crop_box = face_crop(rgb, box, size), expand_box(box, h, w)
      if src != n:
        report.borrowed.append((n, src))
    centred, cover = centring(chosen.get(n), crop_box, size)
    report.centred += centred
    report.coverage += cover
    report.frames += 1
  return [done[n] for n in numbers], report


# --- many videos, every core -------------------------------------------------


@dataclasses.dataclass
class PreprocessReport:
  """The whole run: counts, what went wrong where, and the Table I quality figures."""
  method: str
  videos: int = 0
  frames: int = 0               # output images
  detected: int = 0             # detector runs (cache misses)
  cached: int = 0               # detections read from the cache
  detect_seconds: float = 0.0   # summed over workers
  borrowed: list = dataclasses.field(default_factory=list)   # "video_id: frame N <- frame M"
  fallback_videos: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)    # "video_id: file"
  context_unreadable: list = dataclasses.field(default_factory=list)
  centred: int = 0
  coverage: float = 0.0
  box_size_ratios: dict = dataclasses.field(default_factory=dict)  # video_id -> ratio

  def add(self, r: VideoReport) -> None:
    self.videos += 1
    self.frames += r.frames
    self.detected += r.detected
    self.cached += r.cached
    self.detect_seconds += r.detect_seconds
    self.borrowed += [f"{r.video_id}: frame {n} <- "
                      f"{'video box' if m is None else f'frame {m}'}" for n, m in r.borrowed]
    if r.fallback:
      self.fallback_videos.append(r.video_id)
    self.skipped += [f"{r.video_id}: {f}" for f in r.skipped]
    self.context_unreadable += [f"{r.video_id}: {f}" for f in r.context_unreadable]
    self.centred += r.centred
    self.coverage += r.coverage
    if not np.isnan(r.box_size_ratio):
      self.box_size_ratios[r.video_id] = r.box_size_ratio

  @property
  def face_centring_rate(self) -> float:
    return self.centred / self.frames if self.frames else float("nan")

  @property
  def face_coverage(self) -> float:
    return self.coverage / self.frames if self.frames else float("nan")

  @property
  def information_density(self) -> int:
    return information_density(self.method)

  @property
  def unsteady_videos(self) -> list[str]:
    """Videos whose face box width varies by more than 10 % between frames."""
    return [v for v, r in self.box_size_ratios.items() if r > 1.1]

  def as_dict(self) -> dict:
    """JSON-ready, with the derived figures."""
    d = dataclasses.asdict(self)
    d.update(face_centring_rate=self.face_centring_rate, face_coverage=self.face_coverage,
             information_density=self.information_density,
             image_shape=list(IMAGE_SHAPE[Method.parse(self.method)]),
             unsteady_videos=self.unsteady_videos)
    return d

  def summary(self) -> str:
    return (f"{self.method}: {self.videos} videos, {self.frames} images "
            f"{IMAGE_SHAPE[Method.parse(self.method)]}; detections run {self.detected}, "
            f"cached {self.cached}; borrowed {len(self.borrowed)}; fallback videos "
            f"{len(self.fallback_videos)}; skipped frames {len(self.skipped)}; face-centring "
            f"rate {self.face_centring_rate:.3f}; face coverage {self.face_coverage:.3f}; "
            f"information density {self.information_density:,}")


_WORKER: dict = {}


def _init_worker(cache_dir: str | None) -> None:
  # One detector per process: dlib's detector is built once and reused.
  _WORKER["detector"] = FaceDetector()
  _WORKER["cache"] = DetectionCache(cache_dir) if cache_dir else None


def _run_one(job: tuple) -> tuple[list, VideoReport]:
  video, frames, context, method, skip, steady = job
  return preprocess_video(video, frames, method, context_frames=context,
                          cache=_WORKER["cache"], detector=_WORKER["detector"],
                          skip_unreadable=skip, steady_box=steady)


def _available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


class PreprocessRun(collections.abc.Iterator):
  """Iterator over (video, frame_index, image); `report` adds up each video as it is yielded.

  Order is deterministic: videos in the input order, frames in the order given
  (skipped frames left out), whatever the number of workers.
  """

  def __init__(self, jobs: list[tuple], method: Method, cache_dir: str | None, workers: int):
    self.report = PreprocessReport(method.value)
    self.workers = workers
    self._jobs = jobs
    self._cache_dir = cache_dir
    self._it = self._generate()

  def __next__(self) -> tuple[Video, int, np.ndarray]:
    return next(self._it)

  def close(self) -> None:
    """Stops the workers early (also done when the iterator is garbage collected)."""
    self._it.close()

  def _generate(self) -> Iterator[tuple[Video, int, np.ndarray]]:
    if self.workers == 1:
      _init_worker(self._cache_dir)
      yield from self._emit(map(_run_one, self._jobs))
      return
    yield from self._emit(self._parallel())

  def _parallel(self) -> Iterator[tuple[list, VideoReport]]:
    """Results in input order, at most 2 videos per worker in flight (bounded memory)."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    # spawn, not fork: the caller (TFDS, JAX) runs threads, and forking a
    # threaded process can deadlock the child.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(self._cache_dir,)) as pool:
      pending = collections.deque()
      jobs = iter(self._jobs)
      try:
        for job in itertools.islice(jobs, 2 * self.workers):
          pending.append(pool.submit(_run_one, job))
        while pending:
          result = pending.popleft().result()
          for job in itertools.islice(jobs, 1):
            pending.append(pool.submit(_run_one, job))
          yield result
      except BrokenProcessPool as e:
        raise RuntimeError(
            "a preprocessing worker died. If the script that called preprocess_videos has "
            "no `if __name__ == '__main__':` guard, add one (workers are started with "
            "'spawn', which re-imports the main module), or pass workers=1.") from e
      finally:
        for f in pending:
          f.cancel()

  def _emit(self, results) -> Iterator[tuple[Video, int, np.ndarray]]:
    for job, (images, report) in zip(self._jobs, results):
      video, frames = job[0], job[1]
      self.report.add(report)
      for n, image in zip(frames, images):
        if image is not None:
          yield video, n, image


ContextSpec = Mapping[str, Sequence[int]] | Callable[[Video], Sequence[int]] | None


def preprocess_videos(items: Sequence[tuple[Video, Sequence[int]]], method: "Method | str", *,
                      context: ContextSpec = None,
                      cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None,
                      skip_unreadable: bool = False,
                      steady_box: bool = False) -> PreprocessRun:
  """Preprocesses [(video, frame numbers or PhaseFrames)] on every core.

  context: the frames over which each video's face is chosen, besides its
    output frames -- {video_id: frames} or a function video -> frames (the
    builder passes the MFS frames, so AF's apex crop equals MFS's).
  cache_dir: the detection cache (default `default_cache_dir()`); "" for none.
  workers: processes, one dlib detector each (default: every available core,
    or this process alone for fewer than 4 videos per core; 1 runs in this
    process).
  Returns a `PreprocessRun`: iterate it for (video, frame_index, image), then
  read `.report`. Errors name the file and the video (see `preprocess_video`).
  """
  method = Method.parse(method)
  jobs = []
  for video, frames in items:
    if context is None:
      ctx = ()
    elif callable(context):
      ctx = context(video)
    else:
      ctx = context.get(video.video_id, ())
    jobs.append((video, tuple(_frame_number(f) for f in frames),
                 tuple(_frame_number(f) for f in ctx), method, skip_unreadable, steady_box))
  if cache_dir is None:
    cache_dir = default_cache_dir()
  cache_dir = str(cache_dir) if cache_dir != "" else None
  if cache_dir:
    DetectionCache(cache_dir)  # fail here, with advice, if it cannot be created
  if workers is None:
    # A worker process takes seconds to start (it re-imports the caller's
    # modules): not worth it for a handful of videos.
    workers = _available_cores() if len(jobs) >= 4 * _available_cores() else 1
  workers = max(1, min(workers, len(jobs) or 1))
  return PreprocessRun(jobs, method, cache_dir, workers)
