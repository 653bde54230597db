"""Hand-made frames and videos for the preprocessing and face tests."""
from __future__ import annotations

import pathlib

import numpy as np
import skimage.data
from PIL import Image

from mer_jax.data.videos import Video

H, W = 480, 640


def face_patch(scale: float = 2.0) -> np.ndarray:
  """The astronaut's face and hair, scaled to about CASME II's face size (~200 px box)."""
  patch = Image.fromarray(skimage.data.astronaut()[30:215, 140:310])
  return np.asarray(patch.resize((round(170 * scale), round(185 * scale)), Image.BICUBIC))


def make_frame(faces=(), background: int = 128) -> np.ndarray:
  """A 640x480 frame with face patches pasted at (x, y) top-left corners."""
  out = np.full((H, W, 3), background, np.uint8)
  for patch, x, y in faces:
    out[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
  return out


def make_video(tmp: pathlib.Path, frames: dict[int, np.ndarray], name: str = "EP01_01") -> Video:
  """A Video whose frames are lossless PNG files, so crops can be compared exactly."""
  folder = tmp / "sub01" / name
  folder.mkdir(parents=True, exist_ok=True)
  paths = {}
  for n, rgb in frames.items():
    paths[n] = folder / f"img{n}.png"
    Image.fromarray(rgb).save(paths[n])
  ns = sorted(frames)
  return Video("casme2", "sub01", name, ns[0], ns[len(ns) // 2], ns[-1], "others", paths)


class StubDetector:
  """Boxes looked up by a frame's top-left pixel value."""
  key = "stub"

  def __init__(self, boxes_by_value: dict[int, list]):
    self.boxes_by_value = boxes_by_value

  def __call__(self, rgb):
    return [list(b) for b in self.boxes_by_value.get(int(rgb[0, 0, 0]), [])]


def marked(value: int, h: int = H, w: int = W) -> np.ndarray:
  """A plain frame whose top-left pixel is `value` (StubDetector's key)."""
  out = np.full((h, w, 3), 100, np.uint8)
  out[0, 0] = value
  return out


def three_videos(tmp_path):
  """Three 3-frame videos of a real face moving right, each asking for frames [3, 1]."""
  patch = face_patch(2.0)
  out = []
  for k in range(3):
    frames = {n: make_frame([(patch, 100 + 20 * k + n, 40)]) for n in (1, 2, 3)}
    out.append((make_video(tmp_path, frames, f"EP0{k}_01"), [3, 1]))
  return out
