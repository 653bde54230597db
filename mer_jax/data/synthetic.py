r"""A synthetic CASME II: the real layout and coding sheet, a public-domain face, learnable motion.

  python -m mer_jax.data.synthetic --out data/synthetic_casme2 [--videos 255 --subjects 26]
  python -m mer_jax.data.synthetic --dataset samm --out data/synthetic_samm   # also smic_hs, casme3

The other datasets' stand-ins (`write_stand_in`) reuse this renderer in their
release's layout, small frames and quirks.

CASME II is licensed and cannot ship, so this writes a stand-in with its exact
layout -- `OUT/CASME2_RAW_selected/subNN/EPxx_yy[f]/img{N}.jpg` (640x480, N the
absolute frame number) and `OUT/CASME2-coding-20190701.xlsx` -- through which
every part of the system runs as on the real data.

The face is scikit-image's `astronaut` (Eileen Collins, NASA; public domain).
Each subject puts it at its own place, scale, brightness, tilt and mirror on a
plain background (some sit off-centre, so M1's centre crop is less
face-centred than M2's face crop, as in the paper). Between onset and offset
a class-specific LOCAL motion rises to the apex and decays: smooth
displacement fields around hand-located landmarks (mouth corners up for
happiness, upper lip and nose for disgust, brows up and jaw down for
surprise, lips pressed for repression, inner brows up and mouth corners down
for sadness, brows up and together with stretched lips for fear, assorted
small motions for others), with per-frame sensor noise. Class counts default
to CASME II's (others 99, disgust 63, happiness 32, repression 27, surprise
25, sadness 7, fear 2). With `quirks` the real data's oddities are mirrored:
a stray `Desktop - Shortcut.lnk` in sub01, an ApexFrame of '/', a video with
apex == onset, an emotion in odd case with a trailing space, a Filename with a
trailing space, names without the trailing 'f', frames not starting at 1.

Speed (the quickstart writes the whole set first): each frame is rendered with
OpenCV -- the motion as one remap of the small face patch, scale and tilt as
one affine warp, the noise looked up from random bytes -- and JPEG-encoded in
the worker process that rendered it, one per core (timings: BENCHMARKS.md).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import pathlib

import numpy as np

from mer_jax.data import casme3, fingerprint, labels, samm
from mer_jax.data.casme2 import FRAMES_DIR
from mer_jax.plumbing.errors import UsageError

REAL_COUNTS = {"others": 99, "disgust": 63, "happiness": 32, "repression": 27, "surprise": 25,
               "sadness": 7, "fear": 2}
# The other sets' published label counts (SAMM's 159 coded movements; SMIC-HS's
# 164 micro clips). CAS(ME)^3's stand-in draws its 7 labels evenly.
SAMM_COUNTS = {"anger": 57, "contempt": 12, "disgust": 9, "fear": 8, "happiness": 26,
               "sadness": 6, "surprise": 15, "other": 26}
SMIC_HS_COUNTS = {"negative": 70, "positive": 51, "surprise": 43}
SHEET_NAME = "CASME2-coding-20190701"
FRAME_W, FRAME_H = 640, 480

# The face patch cut from skimage's 512x512 astronaut, and its landmarks in
# patch coordinates (x, y), located by eye on the image.
PATCH_BOX = (140, 30, 310, 215)  # left, top, right, bottom
LANDMARKS = {
    "brow_l": (60, 62), "brow_r": (108, 63), "brow_in_l": (77, 64), "brow_in_r": (93, 64),
    "eye_l": (63, 72), "eye_r": (107, 73), "cheek_l": (62, 96), "cheek_r": (108, 96),
    "nose": (85, 94), "lip_up": (85, 109), "lip_low": (85, 121), "corner_l": (65, 113),
    "corner_r": (103, 113), "chin": (85, 138),
}
# Class -> [(landmark, (dx, dy))], unit displacements scaled by the amplitude.
_MOTIONS = {
    "happiness": [("corner_l", (-0.5, -1.0)), ("corner_r", (0.5, -1.0)),
                  ("cheek_l", (0.0, -0.6)), ("cheek_r", (0.0, -0.6))],
    "disgust": [("lip_up", (0.0, -1.0)), ("nose", (0.0, -0.8)),
                ("cheek_l", (0.3, -0.4)), ("cheek_r", (-0.3, -0.4))],
    "surprise": [("brow_l", (0.0, -1.2)), ("brow_r", (0.0, -1.2)), ("chin", (0.0, 1.0))],
    "repression": [("lip_up", (0.0, 0.7)), ("lip_low", (0.0, -0.9)),
                   ("corner_l", (0.6, 0.0)), ("corner_r", (-0.6, 0.0))],
    "sadness": [("brow_in_l", (0.0, -1.0)), ("brow_in_r", (0.0, -1.0)),
                ("corner_l", (0.0, 1.0)), ("corner_r", (0.0, 1.0))],
    "fear": [("brow_l", (0.7, -0.9)), ("brow_r", (-0.7, -0.9)),
             ("corner_l", (-0.8, 0.2)), ("corner_r", (0.8, 0.2))],
}
_OTHERS_POOL = [("eye_l", (0.0, 0.8)), ("eye_r", (0.0, 0.8)), ("corner_l", (-0.7, 0.0)),
                ("corner_r", (0.7, 0.0)), ("nose", (0.6, 0.0)), ("brow_l", (0.0, 0.7)),
                ("brow_r", (0.0, 0.7)), ("chin", (0.5, 0.0))]
_AUS = {"happiness": "6+12", "disgust": "9+10", "surprise": "1+2+26", "repression": "14+24",
        "sadness": "1+15", "fear": "1+2+4+20", "others": "4"}
_SIGMA = 8.0  # spread of each local motion, in patch pixels
NOISE_SD = 2.0  # sensor noise, grey levels
JPEG_QUALITY = 90


def class_counts(videos: int = 255, real: dict[str, int] = REAL_COUNTS) -> dict[str, int]:
  """A dataset's class counts (CASME II's by default), scaled by largest remainder;
  every class >= 1 from as many videos as classes."""
  total = sum(real.values())
  if videos == total:
    return dict(real)
  exact = {e: c * videos / total for e, c in real.items()}
  counts = {e: int(np.floor(x)) for e, x in exact.items()}
  if videos >= len(real):
    counts = {e: max(1, c) for e, c in counts.items()}
  order = sorted(exact, key=lambda e: -(exact[e] - np.floor(exact[e])))
  i = 0
  while sum(counts.values()) < videos:
    counts[order[i % len(order)]] += 1
    i += 1
  while sum(counts.values()) > videos:  # the minimum of 1 overshot: take from the largest
    big = max(counts, key=counts.get)
    counts[big] -= 1
  return counts


@dataclasses.dataclass(frozen=True)
class Subject:
  number: int
  scale: float
  cx: float
  cy: float
  brightness: float
  angle: float
  flip: bool
  background: int


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
  subject: Subject
  episode: str                 # folder name
  sheet_name: str              # as written in the sheet (may carry quirks)
  emotion: str
  sheet_emotion: str
  first: int
  last: int
  onset: int
  apex: int
  offset: int
  sheet_apex: str | int
  motions: tuple               # ((landmark, (dx, dy)), ...)
  amplitude: float
  seed: int
  faceless: tuple[int, ...] = ()  # frames whose face is hidden
  faceless_all: bool = False


def plan(videos: int = 255, subjects: int = 26, seed: int = 0, intensity: float = 1.0,
         quirks: bool = True, faceless_frames: int = 0,
         faceless_videos: int = 0) -> list[SyntheticVideo]:
  """Everything about the dataset but the pixels; deterministic for a seed."""
  rng = np.random.default_rng(seed)
  subs = []
  for s in range(1, subjects + 1):
    off_centre = rng.random() < 0.4
    subs.append(Subject(
        number=s, scale=float(rng.uniform(2.0, 2.35)),
        cx=float(FRAME_W / 2 + (rng.choice([-1, 1]) * rng.uniform(70, 110) if off_centre
                                else rng.uniform(-25, 25))),
        cy=float(FRAME_H / 2 + rng.uniform(-15, 15)), brightness=float(rng.uniform(0.85, 1.15)),
        angle=float(rng.uniform(-5, 5)), flip=bool(rng.random() < 0.3),
        background=int(rng.integers(150, 215))))
  labels = [e for e, c in class_counts(videos).items() for _ in range(c)]
  labels = [labels[i] for i in rng.permutation(len(labels))]
  # Uneven videos per subject, every subject at least one (as in CASME II).
  weights = rng.gamma(2.0, 1.0, subjects)
  owner = list(range(subjects)) + list(rng.choice(subjects, max(0, videos - subjects),
                                                  p=weights / weights.sum()))
  owner = sorted(owner[:videos])
  per_sub_episode = {}
  out = []
  for i, (label, o) in enumerate(zip(labels, owner)):
    sub = subs[o]
    k = per_sub_episode[o] = per_sub_episode.get(o, 0) + 1
    # EPxx_yy with xx unique per subject, so folder names never collide.
    episode = f"EP{k:02d}_{int(rng.integers(1, 8)):02d}" + ("f" if rng.random() < 0.85 else "")
    n = int(rng.integers(24, 36))
    first = int(rng.integers(1, 300))
    onset = first + int(rng.integers(2, 5))
    offset = first + n - 1 - int(rng.integers(2, 4))
    apex = onset + int(round((offset - onset) * rng.uniform(0.3, 0.6)))
    if label == "others":
      picks = rng.choice(len(_OTHERS_POOL), 2, replace=False)
      motions = tuple(_OTHERS_POOL[j] for j in picks)
    else:
      motions = tuple(_MOTIONS[label])
    out.append(SyntheticVideo(
        subject=sub, episode=episode, sheet_name=episode, emotion=label, sheet_emotion=label,
        first=first, last=first + n - 1, onset=onset, apex=apex, offset=offset,
        sheet_apex=apex, motions=motions, amplitude=float(4.0 * intensity * rng.uniform(0.8, 1.2)),
        seed=int(rng.integers(2**31))))
  if quirks and len(out) >= 5:
    out[1] = dataclasses.replace(out[1], sheet_apex="/")               # apex unknown
    out[2] = dataclasses.replace(out[2], apex=out[2].onset, sheet_apex=out[2].onset)
    out[3] = dataclasses.replace(out[3], sheet_emotion=out[3].emotion.capitalize() + " ")
    out[4] = dataclasses.replace(out[4], sheet_name=out[4].episode + " ")
  if quirks and len(out) >= 2:
    # The reader puts an unknown apex at the middle frame; draw the motion there.
    v = out[1]
    out[1] = dataclasses.replace(v, apex=(v.onset + v.offset) // 2)
  for j in range(min(faceless_frames, len(out))):
    v = out[-1 - j]
    out[-1 - j] = dataclasses.replace(v, faceless=(v.onset + 1,))
  for j in range(min(faceless_videos, len(out))):
    out[j] = dataclasses.replace(out[j], faceless_all=True)
  return out


@functools.lru_cache(maxsize=1)
def _face_patch() -> np.ndarray:
  import skimage.data
  l, t, r, b = PATCH_BOX
  return skimage.data.astronaut()[t:b, l:r].astype(np.float32)


@functools.lru_cache(maxsize=8)
def _alpha(h: int, w: int) -> np.ndarray:
  """Soft elliptical mask so the patch has no hard edges (one per face size: cached)."""
  y, x = np.mgrid[0:h, 0:w]
  d = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2
  return np.clip((1.15 - d) / 0.3, 0, 1)[..., None].astype(np.float32)


def intensity_at(v: SyntheticVideo, n: int) -> float:
  """0 at onset, 1 at apex, back to ~0.1 at offset; 0 outside onset..offset."""
  if n < v.onset or n > v.offset:
    return 0.0
  if n <= v.apex:
    return 1.0 if v.apex == v.onset else float(np.sin(0.5 * np.pi * (n - v.onset) / (v.apex - v.onset)))
  return float(0.1 + 0.9 * np.cos(0.5 * np.pi * (n - v.apex) / max(1, v.offset - v.apex)))


@functools.lru_cache(maxsize=1)
def _patch_grid() -> tuple[np.ndarray, np.ndarray]:
  h, w = _face_patch().shape[:2]
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  return x, y


@functools.lru_cache(maxsize=None)
def _bump(landmark: str) -> np.ndarray:
  """A landmark's Gaussian weight over the patch (the shape of its local motion)."""
  x, y = _patch_grid()
  cx, cy = LANDMARKS[landmark]
  return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * _SIGMA ** 2)).astype(np.float32)


def _warp(patch: np.ndarray, motions, amount: float) -> np.ndarray:
  import cv2
  if amount == 0:
    return patch
  x, y = _patch_grid()
  dx = np.zeros_like(x)
  dy = np.zeros_like(y)
  for name, (ux, uy) in motions:
    dx += amount * ux * _bump(name)
    dy += amount * uy * _bump(name)
  # Backward map: the pixel at p shows what was at p - d (content moves by d).
  return cv2.remap(patch, x - dx, y - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _place(patch: np.ndarray, size: tuple[int, int], angle: float, fill: float) -> np.ndarray:
  """The patch scaled to `size` (w, h) and tilted by `angle` degrees (counter-clockwise)
  about the centre, bilinear, corners filled with `fill`: one affine warp."""
  import cv2
  h, w = patch.shape[:2]
  sx, sy = size[0] / w, size[1] / h
  c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
  rot = np.array([[c, s], [-s, c]])
  centre = np.array([(size[0] - 1) / 2, (size[1] - 1) / 2])
  # pixel centres: patch q -> scaled (q + 0.5) * scale - 0.5 -> rotated about the centre
  shift = rot @ (np.array([0.5 * (sx - 1), 0.5 * (sy - 1)]) - centre) + centre
  matrix = np.hstack([rot @ np.diag([sx, sy]), shift[:, None]])
  return cv2.warpAffine(patch, matrix, size, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 3)


@functools.lru_cache(maxsize=8)
def _background(level: int) -> np.ndarray:
  """A subject's plain background with a left-to-right lighting gradient, float32."""
  frame = np.full((FRAME_H, FRAME_W, 3), level, np.float32)
  frame += np.linspace(-12, 12, FRAME_W, dtype=np.float32)[None, :, None]
  frame.setflags(write=False)
  return frame


@functools.lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
  """Gaussian quantiles (sd NOISE_SD) of 256 equiprobable levels: a uniform byte -> noise."""
  import statistics
  gauss = statistics.NormalDist(0.0, NOISE_SD)
  return np.array([gauss.inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


def render_frame(v: SyntheticVideo, n: int) -> np.ndarray:
  """Frame n of video v, 480x640x3 uint8 RGB (deterministic for v and n)."""
  import cv2
  rng = np.random.default_rng([v.seed, n])
  s = v.subject
  frame = _background(s.background).copy()
  if not v.faceless_all and n not in v.faceless:
    patch = _warp(_face_patch(), v.motions, v.amplitude * intensity_at(v, n))
    if s.flip:
      patch = cv2.flip(patch, 1)
    h, w = patch.shape[:2]
    size = (int(round(w * s.scale)), int(round(h * s.scale)))
    face = _place(patch, size, s.angle, s.background)
    face *= s.brightness
    alpha = _alpha(size[1], size[0])
    jx, jy = rng.normal(0, 0.3, 2)
    x0 = int(round(s.cx - size[0] / 2 + jx))
    y0 = int(round(s.cy - size[1] / 2 + jy))
    fx0, fy0 = max(0, -x0), max(0, -y0)
    x0c, y0c = max(0, x0), max(0, y0)
    x1c, y1c = min(FRAME_W, x0 + size[0]), min(FRAME_H, y0 + size[1])
    region = frame[y0c:y1c, x0c:x1c]
    a = alpha[fy0:fy0 + (y1c - y0c), fx0:fx0 + (x1c - x0c)]
    f = face[fy0:fy0 + (y1c - y0c), fx0:fx0 + (x1c - x0c)]
    region += a * (f - region)
  # Per-frame sensor noise: a Gaussian quantised to 256 levels, looked up from
  # random bytes (5x cheaper than drawing 921,600 normals).
  frame += cv2.LUT(rng.integers(0, 256, frame.shape, dtype=np.uint8), _noise_table())
  return np.clip(frame, 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """JPEG bytes of an RGB frame (OpenCV's libjpeg-turbo; baseline, 4:2:0, as PIL writes)."""
  import cv2
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise RuntimeError("OpenCV could not encode a JPEG")
  return buf.tobytes()


def _init_writer() -> None:
  import cv2
  cv2.setNumThreads(1)  # one process per core already


def _write_video(args) -> int:
  v, root = args
  d = root / FRAMES_DIR / f"sub{v.subject.number:02d}" / v.episode
  d.mkdir(parents=True, exist_ok=True)
  for n in range(v.first, v.last + 1):
    (d / f"img{n}.jpg").write_bytes(encode_jpeg(render_frame(v, n)))
  return v.last - v.first + 1


def _sheet_rows(vs: list[SyntheticVideo]):
  header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
            "Action Units", "Estimated Emotion"]
  rows = [[v.subject.number, v.sheet_name, None, v.onset, v.sheet_apex, v.offset, None,
           _AUS[v.emotion], v.sheet_emotion] for v in vs]
  return header, rows


def write_sheet(vs: list[SyntheticVideo], out: pathlib.Path, fmt: str = "xlsx") -> pathlib.Path:
  header, rows = _sheet_rows(vs)
  path = out / f"{SHEET_NAME}.{fmt}"
  if fmt == "csv":
    import csv
    with open(path, "w", newline="") as f:
      csv.writer(f).writerows([["" if h is None else h for h in header]] + rows)
  else:
    import openpyxl
    wb = openpyxl.Workbook()
    wb.active.title = "Sheet1"
    wb.active.append(header)
    for r in rows:
      wb.active.append(r)
    wb.save(path)
  return path


def write_synthetic_casme2(out: str | pathlib.Path, videos: int = 255, subjects: int = 26,
                           seed: int = 0, intensity: float = 1.0, quirks: bool = True,
                           sheet_format: str = "xlsx", faceless_frames: int = 0,
                           faceless_videos: int = 0, workers: int | None = None,
                           progress: bool = False) -> pathlib.Path:
  """Writes the synthetic CASME II under `out` and returns `out`."""
  if subjects < 1 or videos < subjects:
    raise UsageError(f"need videos >= subjects >= 1 (got {videos} videos, {subjects} subjects)")
  out = pathlib.Path(out)
  vs = plan(videos, subjects, seed, intensity, quirks, faceless_frames, faceless_videos)
  (out / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
  jobs = [(v, out) for v in vs]
  from mer_jax.data import runner
  workers = min(workers or runner.available_cores(), len(jobs))
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), unit="video", desc="synthetic CASME II")
  if workers > 1:
    # Frames are rendered and encoded in the workers; every core writes.
    with runner.spawning_without_main():
      pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_writer)
    with pool:
      for _ in pool.imap_unordered(_write_video, jobs):
        bar and bar.update()
  else:
    for j in jobs:
      _write_video(j)
      bar and bar.update()
  if bar:
    bar.close()
  # What made this tree, for the fingerprint of a build from it (written
  # before the sheet, whose presence marks a complete tree).
  (out / fingerprint.SYNTHETIC_FILE).write_text(json.dumps({
      "generator": "mer_jax.data.synthetic", "videos": videos, "subjects": subjects,
      "seed": seed, "intensity": intensity, "quirks": quirks, "faceless_frames": faceless_frames,
      "faceless_videos": faceless_videos, "code": fingerprint.code_version(("synthetic",))}))
  if quirks:
    (out / FRAMES_DIR / "sub01").mkdir(parents=True, exist_ok=True)
    (out / FRAMES_DIR / "sub01" / "Desktop - Shortcut.lnk").write_bytes(b"L\x00\x00\x00")
  for fmt in (("xlsx", "csv") if sheet_format == "both" else (sheet_format,)):
    write_sheet(vs, out, fmt)
  return out


# Native label -> the CASME II motion drawn for it (negative labels move like
# CASME II's negative classes, so a 3-class model can learn the composite).
_MOTION_OF = {
    "samm": {"anger": "repression", "contempt": "repression", "disgust": "disgust",
             "fear": "fear", "sadness": "sadness", "happiness": "happiness",
             "surprise": "surprise", "other": "others"},
    "smic_hs": {"negative": "disgust", "positive": "happiness", "surprise": "surprise"},
    "casme3": {"anger": "repression", "disgust": "disgust", "fear": "fear",
               "happy": "happiness", "sad": "sadness", "surprise": "surprise",
               "others": "others"},
}
# Stand-in frame sizes (w, h): each release's aspect, scaled down for speed
# (SAMM 2040x1088 / 10, SMIC-HS 640x480 / 2, CAS(ME)^3 1280x720 / 4), but not
# below what dlib's detector needs: its smallest box is about 80 px, and the
# rendered face (about 0.3 of the frame's width, as in SMIC-HS and CAS(ME)^3)
# fills that from about 250 px of frame width (at 160 px it found 5 of 60 faces).
STAND_IN_SIZE = {"samm": (204, 109), "smic_hs": (320, 240), "casme3": (320, 180)}
LAYOUTS = ("casme2", "samm", "smic_hs", "casme3")


def _relabel(vs: list[SyntheticVideo], dataset: str, seed: int, length: int
             ) -> list[SyntheticVideo]:
  """The planned videos with the dataset's native labels (its real proportions) and
  motions, each `length` frames long (onset at the 2nd, apex near the middle)."""
  real = {"samm": SAMM_COUNTS, "smic_hs": SMIC_HS_COUNTS}.get(
      dataset, {e: 1 for e in labels.NATIVE[dataset]})
  natives = [e for e, c in class_counts(len(vs), real).items() for _ in range(c)]
  rng = np.random.default_rng([seed, 1])
  natives = [natives[i] for i in rng.permutation(len(natives))]
  out = []
  for v, e in zip(vs, natives):
    motion = _MOTION_OF[dataset][e]
    motions = tuple(_MOTIONS[motion]) if motion in _MOTIONS else v.motions
    if motion == "others" and v.emotion != "others":
      motions = tuple(_OTHERS_POOL[j] for j in rng.choice(len(_OTHERS_POOL), 2, replace=False))
    out.append(dataclasses.replace(
        v, emotion=motion, sheet_emotion=e, motions=motions, last=v.first + length - 1,
        onset=v.first + 1, apex=v.first + length // 2, offset=v.first + length - 2))
  return out


def _shift(v: SyntheticVideo, to: int) -> SyntheticVideo:
  """The video with its frames renumbered to start at `to` (same pixels)."""
  d = to - v.first
  return dataclasses.replace(v, first=v.first + d, last=v.last + d, onset=v.onset + d,
                             apex=v.apex + d, offset=v.offset + d)


def _write_frames(v: SyntheticVideo, folder: pathlib.Path, name, size, gray: bool,
                  ext: str) -> None:
  """Frames first..last of v, rendered, cut to the release's aspect, shrunk to `size`."""
  import cv2
  folder.mkdir(parents=True, exist_ok=True)
  w, h = size
  rows = min(FRAME_H, round(FRAME_W * h / w))
  top = (FRAME_H - rows) // 2
  for n in range(v.first, v.last + 1):
    rgb = cv2.resize(render_frame(v, n)[top:top + rows], size, interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if gray else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, image)
    if not ok:
      raise RuntimeError(f"OpenCV could not encode {ext}")
    (folder / name(n)).write_bytes(buf.tobytes())


def _write_table(path: pathlib.Path, rows: list[list], title_rows: int = 0) -> None:
  import openpyxl
  wb = openpyxl.Workbook()
  for k in range(title_rows):  # the title and notes above the table
    wb.active.append([f"Synthetic stand-in, note {k + 1}" if k % 4 == 0 else None])
  for r in rows:
    wb.active.append(r)
  wb.save(path)


def _write_samm(vs, out: pathlib.Path, quirks: bool) -> None:
  rows = [["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
           "Offset Frame", "Duration", "Micro", "Objective Classes", "Notes",
           "Estimated Emotion", "Action Units"]]
  for k, v in enumerate(vs):
    s = v.subject.number + 5  # SAMM's subjects start at 006
    if quirks and k % 2:  # frame numbers above 9999: written with 5 digits
      v = _shift(v, v.first + 10000)
    episode = f"{s:03d}_{k + 1}_{1 + k % 3}"
    apex = "-1" if quirks and k == 1 else v.apex
    if quirks and k == 1:  # the reader falls back to the middle frame; draw the motion there
      v = dataclasses.replace(v, apex=(v.onset + v.offset) // 2)
    _write_frames(v, out / samm.FRAMES_DIR / f"{s:03d}" / episode,
                  lambda n, s=s: f"{s:03d}_{n:04d}.jpg", STAND_IN_SIZE["samm"], True, ".jpg")
    rows.append([f"{s:03d}", episode, 1 + k % 4, v.onset, apex, v.offset,
                 v.offset - v.onset + 1, "Micro - 1/2", "IV", None,
                 v.sheet_emotion.capitalize(), _AUS[v.emotion]])
  _write_table(out / samm.SHEET_NAME, rows, title_rows=13 if quirks else 0)


def _write_smic_hs(vs, out: pathlib.Path, quirks: bool) -> None:
  for k, v in enumerate(vs):
    s = v.subject.number
    v = dataclasses.replace(v, onset=v.first, offset=v.last, apex=(v.first + v.last) // 2)
    prefix = "reg_image" if quirks and s % 2 == 0 else "image"  # the cropped release's naming
    clip = f"s{s}_{v.sheet_emotion[:2]}_{k + 1:02d}"
    _write_frames(v, out / f"s{s}" / "micro" / v.sheet_emotion / clip,
                  lambda n: f"{prefix}{n}.bmp", STAND_IN_SIZE["smic_hs"], False, ".bmp")
  if quirks:
    (out / f"s{vs[0].subject.number}" / "non_micro").mkdir(parents=True, exist_ok=True)


def _write_casme3(vs, out: pathlib.Path, quirks: bool) -> None:
  rows = [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]]
  last = {}  # subject -> (filename, last frame) of its previous clip
  for k, v in enumerate(vs):
    s = v.subject.number
    filename = "abcdefghijklmnopqrstuvwxyz"[k % 26]
    if quirks and s in last:  # a second ME cut from the same recording: same filename
      filename, end = last[s]
      v = _shift(v, end + 7)
    last[s] = (filename, v.last)
    _write_frames(v, out / f"spNO.{s}" / filename / casme3.COLOR_DIR, lambda n: f"{n}.jpg",
                  STAND_IN_SIZE["casme3"], False, ".jpg")
    rows.append([f"spNO.{s}", filename, v.onset, v.apex, v.offset, _AUS[v.emotion],
                 1 + k % 7, v.sheet_emotion])
  _write_table(out / casme3.SHEET_NAME, rows)


def write_stand_in(dataset: str, out: str | pathlib.Path, videos: int = 12, subjects: int = 4,
                   seed: int = 0, intensity: float = 1.0, quirks: bool = True,
                   length: int = 10) -> pathlib.Path:
  """Writes a small synthetic copy of `dataset` (one of LAYOUTS) in its release's layout.

  CASME II: `write_synthetic_casme2`. SAMM: gray frames at a tenth of 2040x1088
  named {subject:03d}_{frame}.jpg with 4- and 5-digit numbers, the sheet with
  13 title rows above its header, one apex -1. SMIC-HS: colour bmp clips at
  half of 640x480 in s{N}/micro/{label}/, image<N> and (even subjects)
  reg_image<N> naming, a non_micro/ folder, no sheet (apex drawn at the middle
  frame). CAS(ME)^3: colour frames at a quarter of 1280x720 in
  {subject}/{filename}/color/{N}.jpg, each subject's second
  and later clips cut from its first recording (repeated filenames), and
  the part A label sheet. Labels in the datasets' proportions
  (SAMM_COUNTS, SMIC_HS_COUNTS; CAS(ME)^3 even), motions as in CASME II;
  clips of `length` frames (>= 4), so that a stand-in takes a second or two.
  """
  if length < 4:
    raise UsageError(f"length {length}: a clip needs >= 4 frames (onset, apex, offset)")
  if dataset not in LAYOUTS:
    raise UsageError(f"unknown dataset {dataset!r}; valid: {', '.join(LAYOUTS)}")
  if dataset == "casme2":
    return write_synthetic_casme2(out, videos, subjects, seed, intensity, quirks, workers=1)
  if subjects < 1 or videos < subjects:
    raise UsageError(f"need videos >= subjects >= 1 (got {videos} videos, {subjects} subjects)")
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  vs = _relabel(plan(videos, subjects, seed, intensity, quirks=False), dataset, seed, length)
  {"samm": _write_samm, "smic_hs": _write_smic_hs, "casme3": _write_casme3}[dataset](
      vs, out, quirks)
  # What made this tree, for a build's fingerprint (as write_synthetic_casme2 writes it).
  (out / fingerprint.SYNTHETIC_FILE).write_text(json.dumps({
      "generator": "mer_jax.data.synthetic", "dataset": dataset, "videos": videos,
      "subjects": subjects, "seed": seed, "intensity": intensity, "quirks": quirks,
      "length": length, "code": fingerprint.code_version(("synthetic",))}))
  return out


def main(argv=None) -> int:
  from mer_jax.plumbing import cli  # here, not above: the library itself needs no CLI dependencies
  p = cli.parser("mer_jax.data.synthetic", __doc__)
  p.add_argument("--out", required=True, help="directory to write (the manual dir)")
  p.add_argument("--dataset", choices=LAYOUTS, default="casme2",
                 help="layout to write (not casme2: a small stand-in, see write_stand_in)")
  p.add_argument("--videos", type=int, default=None, help="default: 255 (casme2), else 12")
  p.add_argument("--subjects", type=int, default=None, help="default: 26 (casme2), else 4")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--intensity", type=float, default=1.0,
                 help="motion amplitude (1 = ~9 px at apex)")
  p.add_argument("--no_quirks", dest="quirks", action="store_false",
                 help="do not mirror the real data's oddities")
  p.add_argument("--sheet_format", choices=("xlsx", "csv", "both"), default="xlsx")
  p.add_argument("--faceless_frames", type=int, default=0,
                 help="videos with one frame whose face is hidden (tests M2's fallback)")
  p.add_argument("--faceless_videos", type=int, default=0, help="videos with no face at all")
  p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  a = cli.parse(p, argv)
  if a.dataset != "casme2":
    out = write_stand_in(a.dataset, a.out, a.videos or 12, a.subjects or 4, a.seed, a.intensity,
                         a.quirks)
    print(f"wrote a synthetic {a.dataset} stand-in to {out}")
    return 0
  a.videos, a.subjects = a.videos or 255, a.subjects or 26
  out = write_synthetic_casme2(a.out, a.videos, a.subjects, a.seed, a.intensity, a.quirks,
                               a.sheet_format, a.faceless_frames, a.faceless_videos, a.workers,
                               progress=True)
  print(f"wrote a synthetic CASME II ({a.videos} videos, {a.subjects} subjects) to {out}")
  return 0


if __name__ == "__main__":
  from mer_jax.plumbing import cli
  cli.run(main)
