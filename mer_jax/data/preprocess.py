"""The paper's preprocessing methods, one video at a time, and their quality figures.

M1  the raw frame, centre-cropped to its largest square (480x480 of a 640x480
    CASME II frame), resized to 384x384, RGB.
M2  the video's face (mer_jax.data.faces: dlib's frontal face detector); the
    box grown by 20 px on every side and clipped to the frame; crop; grayscale
    (ITU-R 601 luma, as PIL's "L": Y = 0.299 R + 0.587 G + 0.114 B); resized to
    224x224. A video with no face in any frame is centre-cropped like M1 but
    to M2's 224x224 gray -- counted as a *fallback* video.
M2A (beyond the paper) M2's face aligned: dlib's 5-point landmarks on the
    onset frame's face box (faces.LandmarkDetector) give one similarity
    transform per video that puts the eyes level at fixed places
    (mer_jax.data.align), applied to every frame of the video; 224x224 gray
    (same luma). One transform per video, not per frame, so that alignment
    adds no frame-to-frame jitter -- jitter is motion, and motion is what
    micro-expressions are (and what M3 measures). A video whose onset face has
    no plausible landmarks (or whose onset frame is unreadable) takes M2's
    crops of one steady box, the video's reference box (faces.video_faces
    with steady_box), for the same reason -- counted as a *landmark fallback*
    video; one with no face at all takes M2's fallback (a fallback video, as
    M2).
M3  (beyond the paper) optical flow from the onset frame's M2A face to each
    output frame's M2A face (mer_jax.data.flow: OpenCV's DIS), as a 224x224x3
    uint8 image: u, v and magnitude at one fixed scale (flow.SCALE px), so
    values compare across frames and videos, and an ImageNet RGB stem loads
    unchanged. Phases for flow (`phase_frames`): AF = onset -> apex; KFS and
    MFS = onset -> each of the phase's frames other than the onset itself
    (its flow is zero by definition): KFS gives apex and offset, MFS's onset
    window onset+[0..3] gives 3 flow frames, 12 in all. Landmark fallbacks
    and fallback videos compute flow between the M2 crops they take (one
    steady box, or the frame's centre: no box jitter in the flow).

The corners (beyond the paper): M1, M2 and M2A differ in three things at
once, so each method (but M3) is one corner of three factors -- `Crop` (frame:
M1's centre square | face: M2's box + 20 px | aligned: M2A's transform),
`Colour` (rgb | gray, the same luma) and the size (224 | 384) -- and the twelve
corners are all methods: m1 = frame_rgb_384, m2 = face_gray_224, m2a =
aligned_gray_224 keep their names, the nine others are named
`{crop}_{colour}_{size}` ("face_rgb_384"). A corner's pixels are its crop's
(with its resampler: OpenCV's area average for frames, PIL's bicubic for faces,
the warp for aligned faces), its colour taken before the resize, so M1 and M2
are their corners exactly (mer_jax.analysis.factorial measures each factor).

Pixel work (reading frames, crops, gray, resizing, PNG bytes) is in
mer_jax.data.pixels.

One video, in named steps (`preprocess_video`): read its frames
(`VideoFrames`) -> detect faces in them (`faces.detect_frames`, cached) ->
find the video's face (`faces.video_faces`) -> crop each output frame
(`CROPS[method.crop]`, in the method's colour and size) -> record its quality
(`centring`). A new method adds a `Method` member and its `FACTORS` (and a
crop function in `CROPS` for a new kind of crop).
Aligning methods (`Method.aligns`) add two steps: the onset frame's transform
(`onset_transform`) before the crops, and for M3 the flow from the onset's
face (`flow_step`) after them. Many videos on every core: mer_jax.data.runner.

Quality figures (the paper's Table I), reported by `PreprocessReport`:
- information density = output pixels x channels (M1 384*384*3 = 442,368;
  M2 and M2A 224*224*1 = 50,176; M3 224*224*3 = 150,528);
- face-centring rate = the fraction of output images in which the centre of
  the frame's OWN chosen face box (step 2 of mer_jax.data.faces), mapped
  through the crop and resize into the output image, lies within 10 % of the
  output side (Euclidean distance) of the output image's centre. A frame
  without its own detection (borrowed or fallback) counts as not centred. For
  M1 the box is mapped through the centre crop, for M2A and M3 through the
  video's similarity transform (M3: the flow image's pixel grid is the
  frame's M2A face's); all methods use the same detections;
- face coverage = the mean, over output images, of the fraction of the output
  area covered by that box (clipped to the crop); 0 without own detection.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from mer_jax.plumbing.choices import Choice
from mer_jax.data import align, faces, flow, phases
from mer_jax.data.casme2 import Casme2Error
from mer_jax.data.videos import Video
from mer_jax.data.faces import Box, box_area
from mer_jax.data.pixels import (aligned_crop, centre_crop, centre_square, expand_box,
                                face_crop, fallback_crop, read_frame, to_gray)

CENTRED_WITHIN = 0.10          # of the output side, for the face-centring rate


class Crop(Choice):
  """What a method's image shows: the frame's centre square, the face box, or the aligned face."""
  FRAME = "frame"
  FACE = "face"
  ALIGNED = "aligned"


class Colour(Choice):
  """A method's image channels: RGB, or ITU-R 601 luma (PIL's "L")."""
  RGB = "rgb"
  GRAY = "gray"


SIZES = (224, 384)             # the factorial's two output sides (M2's and M1's)


class Method(Choice):
  """A preprocessing method: the paper's M1, M2, and beyond it M2A (aligned) and M3 (flow),
  and the other corners of crop x colour x size (`Method.corner`).

  A corner's name is `{crop}_{colour}_{size}` ("frame_gray_224"), except the three the
  project named first, which keep their names (and their TFDS configs and folders):
  m1 = frame_rgb_384, m2 = face_gray_224, m2a = aligned_gray_224; `Method.corner(crop,
  colour, size)` finds any of the twelve. M3 (flow) is no corner.
  `Method.parse("m2")`, `Method.names()`.
  """
  M1 = "m1"
  M2 = "m2"
  M2A = "m2a"
  M3 = "m3"
  FRAME_RGB_224 = "frame_rgb_224"
  FRAME_GRAY_224 = "frame_gray_224"
  FRAME_GRAY_384 = "frame_gray_384"
  FACE_RGB_224 = "face_rgb_224"
  FACE_RGB_384 = "face_rgb_384"
  FACE_GRAY_384 = "face_gray_384"
  ALIGNED_RGB_224 = "aligned_rgb_224"
  ALIGNED_RGB_384 = "aligned_rgb_384"
  ALIGNED_GRAY_384 = "aligned_gray_384"

  @classmethod
  def corner(cls, crop: "Crop | str", colour: "Colour | str", size: int) -> "Method":
    """The method of one corner of crop x colour x size: (frame, rgb, 384) is M1."""
    want = (Crop.parse(crop), Colour.parse(colour), int(size))
    for m, factors in FACTORS.items():
      if factors == want and not m.is_flow:
        return m
    raise ValueError(f"no method is the corner {want}; sizes are {SIZES}")

  @property
  def crop(self) -> Crop:
    """The region the image shows (M3: the aligned faces its flow is computed between)."""
    return FACTORS[self][0]

  @property
  def colour(self) -> Colour:
    """The crop's channels (M3: gray faces, whose flow is its image)."""
    return FACTORS[self][1]

  @property
  def size(self) -> int:
    return FACTORS[self][2]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return IMAGE_SHAPE[self]

  @property
  def crops_face(self) -> bool:
    """Whether the crop follows the video's face (else the frame's centre)."""
    return self.crop is not Crop.FRAME

  @property
  def aligns(self) -> bool:
    """Whether faces are aligned by the onset frame's landmarks (M2A, and M3's input)."""
    return self.crop is Crop.ALIGNED

  @property
  def is_flow(self) -> bool:
    """Whether an image is the optical flow from the onset frame (M3)."""
    return self is Method.M3

  @property
  def description(self) -> str:
    return _DESCRIPTION.get(self) or (
        f"{_CROP_WORDS[self.crop]}, {self.size}x{self.size} "
        + ("RGB" if self.colour is Colour.RGB else "grayscale"))


# Every method's (crop, colour, size); the names above must agree with these.
FACTORS = {Method.M1: (Crop.FRAME, Colour.RGB, 384), Method.M2: (Crop.FACE, Colour.GRAY, 224),
           Method.M2A: (Crop.ALIGNED, Colour.GRAY, 224),
           Method.M3: (Crop.ALIGNED, Colour.GRAY, 224)}
FACTORS.update({m: (Crop(m.value.split("_")[0]), Colour(m.value.split("_")[1]),
                    int(m.value.split("_")[2])) for m in Method if m not in FACTORS})
IMAGE_SHAPE = {m: (m.size, m.size, 3 if m.is_flow or m.colour is Colour.RGB else 1)
               for m in Method}
_CROP_WORDS = {Crop.FRAME: "raw frame centre-cropped",
               Crop.FACE: "dlib face box +20 px, cropped",
               Crop.ALIGNED: "face aligned by the onset frame's eyes (dlib landmarks)"}
_DESCRIPTION = {
    Method.M1: "raw frame centre-cropped to 384x384 RGB",
    Method.M2: "dlib face box +20 px, cropped, 224x224 grayscale",
    Method.M2A: "face aligned by the onset frame's eyes (dlib landmarks), 224x224 grayscale",
    Method.M3: ("optical flow (DIS) from the onset frame on M2A faces, 224x224x3 "
                f"(u, v, magnitude at a fixed {flow.SCALE:g} px scale)")}


def information_density(method: "Method | str") -> int:
  """Pixels x channels of one output image (the paper's Table I)."""
  h, w, c = IMAGE_SHAPE[Method.parse(method)]
  return h * w * c


# --- the methods' crops ---------------------------------------------------------


# A method's crop: (frame, the video's face box in it or None, output size, gray) ->
# (image, the frame region it shows, for the quality figures).
CropFunction = Callable[[np.ndarray, Any, int, bool], tuple]


def crop_frame(rgb: np.ndarray, box: Box | None, size: int, gray: bool):
  return centre_crop(rgb, size, gray=gray), centre_square(*rgb.shape[:2])


def crop_face(rgb: np.ndarray, box: Box | None, size: int, gray: bool):
  if box is None:
    return fallback_crop(rgb, size, gray=gray), centre_square(*rgb.shape[:2])
  return face_crop(rgb, box, size, gray=gray), expand_box(box, *rgb.shape[:2])


# Aligned crops use the video's transform (`aligned_crop`); this is their fallback
# when the onset face has no landmarks (the face crop, or its centre-square fallback).
CROPS: dict[Crop, CropFunction] = {Crop.FRAME: crop_frame, Crop.FACE: crop_face,
                                   Crop.ALIGNED: crop_face}


def phase_frames(video: Video, phase: "phases.Phase | str",
                 method: "Method | str") -> tuple[phases.PhaseFrame, ...]:
  """The frames whose images `method` makes for `phase`: the phase's frames
  (mer_jax.data.phases), for flow (M3) without the onset frame, whose flow from
  itself is zero -- unless it is all the phase has (AF, or apex == onset == offset)."""
  selected = phases.select_frames(video, phase)
  if Method.parse(method).is_flow:
    moving = tuple(f for f in selected if f.frame_index != video.onset)
    return moving or selected
  return selected


def centring(face: Box | None, crop_box: "Box | np.ndarray",
             out_size: int) -> tuple[bool, float]:
  """(face centre within CENTRED_WITHIN of the output centre, face share of the output area).

  `crop_box` is the frame region the output shows (resized to out_size), or a
  2x3 matrix from frame to output pixels (M2A, M3).
  """
  if face is None:
    return False, 0.0
  if np.ndim(crop_box) == 2:
    return _centring_through(face, np.asarray(crop_box, np.float64), out_size)
  left, top, right, bottom = crop_box[:4]
  cx = ((face[0] + face[2]) / 2 - left) * out_size / (right - left)
  cy = ((face[1] + face[3]) / 2 - top) * out_size / (bottom - top)
  off = np.hypot(cx - out_size / 2, cy - out_size / 2) / out_size
  inside = (max(face[0], left), max(face[1], top), min(face[2], right), min(face[3], bottom))
  return bool(off <= CENTRED_WITHIN), box_area(inside) / box_area(crop_box)


def _centring_through(face: Box, matrix: np.ndarray, out_size: int) -> tuple[bool, float]:
  import cv2
  l, t, r, b = face[:4]
  centre = align.apply(matrix, ((l + r) / 2, (t + b) / 2))
  off = np.hypot(*(centre - out_size / 2)) / out_size
  corners = align.apply(matrix, [(l, t), (r, t), (r, b), (l, b)]).astype(np.float32)
  square = np.array([(0, 0), (out_size, 0), (out_size, out_size), (0, out_size)], np.float32)
  area, _ = cv2.intersectConvexConvex(corners, square)
  return bool(off <= CENTRED_WITHIN), max(0.0, float(area)) / out_size ** 2


# --- one video --------------------------------------------------------------------


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
  landmark_fallback: bool = False  # M2A/M3: no landmarks on the onset face: M2's crops
  skipped: list = dataclasses.field(default_factory=list)   # unreadable output frames (files)
  context_unreadable: list = dataclasses.field(default_factory=list)  # context-only, dropped
  centred: int = 0              # output images whose own face is centred
  coverage: float = 0.0         # summed face share of the output area
  box_size_ratio: float = float("nan")  # largest / smallest own face-box width


def frame_number(f: Any) -> int:
  """The frame number of an int or a phases.PhaseFrame."""
  return int(getattr(f, "frame_index", f))


def frame_file(video: Video, n: int) -> str:
  """Frame n's file, or where it would be for a frame without one (for messages)."""
  path = video.frames.get(n)
  if path is not None:
    return str(path)
  folder = next((str(pathlib.Path(p).parent) for p in video.frames.values()), video.video_id)
  return f"{folder}/img{n}.jpg"


class VideoFrames:
  """A video's frames, each read once, on demand: frame n -> RGB, or None where skipped.

  A missing or unreadable output frame (`wanted`) raises Casme2Error naming
  the file and the video, or with `skip_unreadable` is None and listed in
  `report.skipped`; an unreadable context-only frame is None and listed in
  `report.context_unreadable`.
  """

  def __init__(self, video: Video, wanted: set[int], skip_unreadable: bool,
               report: VideoReport):
    self.video, self.wanted, self.skip_unreadable = video, wanted, skip_unreadable
    self.report = report
    self._pixels: dict[int, np.ndarray | None] = {}

  def __call__(self, n: int) -> np.ndarray | None:
    if n not in self._pixels:
      self._pixels[n] = self._read(n)
    return self._pixels[n]

  def _read(self, n: int) -> np.ndarray | None:
    video = self.video
    try:
      if n not in video.frames:
        raise Casme2Error(f"frame {frame_file(video, n)} is missing; restore it from "
                          "your CASME II copy")
      return read_frame(video.frames[n])
    except Casme2Error as e:
      if n in self.wanted and not self.skip_unreadable:
        raise Casme2Error(f"video {video.video_id}: {e} (or pass skip_unreadable=True "
                          "to skip such frames and list them in the report)") from None
      (self.report.skipped if n in self.wanted else self.report.context_unreadable).append(
          frame_file(video, n))
      return None


def onset_transform(video: Video, read: Callable[[int], np.ndarray | None],
                    face: faces.VideoFaces, landmarker, size: int) -> np.ndarray | None:
  """M2A's per-video step: the similarity transform of the onset frame's face
  (mer_jax.data.align), or None (no readable onset frame, no box, no plausible
  landmarks)."""
  rgb = read(video.onset)
  box = face.boxes.get(video.onset, (None, None))[0]
  if rgb is None or box is None:
    return None
  return align.video_transform(to_gray(rgb)[..., 0], box, landmarker, size)


def flow_step(faces_by_frame: dict[int, np.ndarray | None],
              onset_face: np.ndarray) -> dict[int, np.ndarray | None]:
  """M3's last step: each frame's face (HxWx1) -> its flow image from `onset_face`."""
  numbers = [n for n, im in faces_by_frame.items() if im is not None]
  images = flow.flow_images(onset_face[..., 0], [faces_by_frame[n][..., 0] for n in numbers])
  out = dict.fromkeys(faces_by_frame)
  out.update(zip(numbers, images))
  return out


def preprocess_video(video: Video, frames: Sequence[int], method: "Method | str", *,
                     context_frames: Sequence[int] | None = None,
                     cache: faces.DetectionCache | None = None,
                     detector: Callable[[np.ndarray], list] | None = None,
                     landmarker: Callable | None = None,
                     skip_unreadable: bool = False,
                     steady_box: bool = False) -> tuple[list[np.ndarray | None], VideoReport]:
  """Preprocessed images of `frames` (ints or PhaseFrames) of one video.

  Returns (images aligned with `frames`, report); a repeated frame is
  computed once and repeated. Faces are detected and chosen over frames +
  context_frames (+ the onset frame for M2A/M3). Unreadable frames: see
  `VideoFrames`; M3 needs the onset frame as it needs its own. `detector` is
  any callable rgb -> faces with a `key` attribute (default:
  `faces.FaceDetector()`); `landmarker` (M2A, M3) a callable (gray, box) ->
  points (default: `faces.LandmarkDetector()`); `steady_box`: see
  mer_jax.data.faces.
  """
  method = Method.parse(method)
  detector = detector if detector is not None else faces.FaceDetector()
  report = VideoReport(video.video_id)
  numbers = [frame_number(f) for f in frames]
  onset = {video.onset} if method.aligns else set()
  read = VideoFrames(video, set(numbers) | (onset if method.is_flow else set()),
                     skip_unreadable, report)
  context = {frame_number(f) for f in context_frames or ()} | onset
  found = faces.detect_frames(sorted(set(numbers) | context), video.frames, read, detector,
                              cache)
  report.detected, report.cached, report.detect_seconds = (found.detected, found.cached,
                                                           found.seconds)
  face = faces.video_faces(found.faces, steady_box)
  report.fallback = method.crops_face and not face.found
  report.box_size_ratio = face.box_size_ratio
  size, gray = method.size, method.colour is Colour.GRAY
  matrix = None
  if method.aligns and face.found:
    landmarker = landmarker if landmarker is not None else faces.LandmarkDetector()
    matrix = onset_transform(video, read, face, landmarker, size)
    report.landmark_fallback = matrix is None
    if report.landmark_fallback:  # one box for every frame, as one transform would be
      face = faces.video_faces(found.faces, steady_box=True)

  def crop(n: int, rgb: np.ndarray):
    if matrix is not None:
      return aligned_crop(rgb, matrix, size, gray=gray), matrix
    return CROPS[method.crop](rgb, face.boxes.get(n, (None, None))[0], size, gray)

  onset_face = None
  if method.is_flow:
    rgb = read(video.onset)
    if rgb is None:  # skipped (skip_unreadable): no flow for any frame of the video
      report.skipped += [f"{frame_file(video, n)} (its flow needs the onset frame)"
                         for n in dict.fromkeys(numbers) if n != video.onset]
      return [None] * len(numbers), report
    onset_face = crop(video.onset, rgb)[0]
  images: dict[int, np.ndarray | None] = {}
  for n in dict.fromkeys(numbers):
    rgb = read(n)
    if rgb is None:
      images[n] = None
      continue
    box, src = face.boxes.get(n, (None, None))
    images[n], region = crop(n, rgb)
    if method.crops_face and box is not None and src != n:
      report.borrowed.append((n, src))
    centred, cover = centring(face.own.get(n), region, size)
    report.centred += centred
    report.coverage += cover
    report.frames += 1
  if method.is_flow:
    images = flow_step(images, onset_face)
  return [images[n] for n in numbers], report


# --- many videos' figures ---------------------------------------------------------


@dataclasses.dataclass
class PreprocessReport:
  """A run over many videos: counts, what went wrong where, and the Table I quality figures."""
  method: str
  videos: int = 0
  frames: int = 0               # output images
  detected: int = 0             # detector runs (cache misses)
  cached: int = 0               # detections read from the cache
  detect_seconds: float = 0.0   # summed over workers
  borrowed: list = dataclasses.field(default_factory=list)   # "video_id: frame N <- frame M"
  fallback_videos: list = dataclasses.field(default_factory=list)
  landmark_fallback_videos: list = dataclasses.field(default_factory=list)  # M2A, M3
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
    if r.landmark_fallback:
      self.landmark_fallback_videos.append(r.video_id)
    self.skipped += [f"{r.video_id}: {f}" for f in r.skipped]
    self.context_unreadable += [f"{r.video_id}: {f}" for f in r.context_unreadable]
    self.centred += r.centred
    self.coverage += r.coverage
    if not np.isnan(r.box_size_ratio):
      self.box_size_ratios[r.video_id] = r.box_size_ratio

  def merge(self, other: "PreprocessReport") -> None:
    """Adds another run's figures (another split's, say) to this one's."""
    for f in dataclasses.fields(self):
      if f.name != "method":
        a, b = getattr(self, f.name), getattr(other, f.name)
        setattr(self, f.name, {**a, **b} if isinstance(a, dict) else a + b)

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
