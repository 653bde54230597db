"""The pixel work of the preprocessing methods: read a frame, crop, gray, resize, PNG bytes.

Resizing is antialiased, because the methods mostly shrink (480 -> 384; a face
box of a few hundred px -> 224): without it the fine texture that
micro-expressions live in aliases. Face crops resize with PIL's bicubic, which
PIL antialiases when it shrinks (its kernel widens with the scale factor);
bicubic because every backbone of the paper was pretrained on bicubic-resized
ImageNet (timm's `pretrained_cfg.interpolation`). M1's RGB squares resize with
OpenCV's area average (`INTER_AREA`, antialiased too; OpenCV has no antialiased
bicubic): faster than PIL's bicubic and close to it (tests/test_pixels.py
holds it to its tolerance). Gray is taken before the resize (less to resize;
both steps are linear, so the order changes pixels by rounding only). JPEG
frames are decoded by OpenCV, the same pixels as PIL gives (both are
libjpeg-turbo; benchmarks/check_decoders.py checks it), faster; see
`read_frame`. Speeds: BENCHMARKS.md.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

from mer_jax.data import align
from mer_jax.data.casme2 import Casme2Error
from mer_jax.data.faces import Box

MARGIN = 20                    # px added on each side of the face box (paper)


def read_frame(path: str | os.PathLike) -> np.ndarray:
  """HxWx3 uint8 RGB (gray, palette and RGBA files converted).

  A complete JPEG (CASME II's frames) is decoded by OpenCV: the same pixels as
  PIL's decoder (both libjpeg-turbo, EXIF orientation ignored as PIL does),
  faster. Other formats, and a JPEG without its end marker, go through
  PIL: OpenCV would fill a truncated JPEG's missing rows in silently, PIL
  raises. A missing or unreadable file raises Casme2Error naming it; the
  caller adds the video.
  """
  try:
    data = pathlib.Path(path).read_bytes()
    if data[:2] == b"\xff\xd8" and data.endswith(b"\xff\xd9"):
      import cv2
      bgr = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
      if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _read_with_pil(data)
  except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
    raise Casme2Error(f"cannot read frame {path} ({type(e).__name__}: {e}); "
                      "restore the file from your CASME II copy") from e


def _read_with_pil(data: bytes) -> np.ndarray:
  import io
  from PIL import Image
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"))


# PNG is lossless whatever the settings. Paeth-filtered rows and zlib's
# run-length strategy write several times faster than TensorFlow's encoder
# (adaptive filters, zlib level 6) that TFDS used, files of about the same size,
# decoded as fast (BENCHMARKS.md).


def encode_png(image: np.ndarray) -> bytes:
  """Lossless PNG bytes of an HxW, HxWx1 or HxWx3 uint8 image, channels in the array's order.

  What the dataset stores: the build encodes in its worker processes (OpenCV)
  and hands TFDS's `Image` feature these bytes, instead of TFDS encoding every
  image in its one writing process (TensorFlow).
  """
  import cv2
  if image.ndim == 2:
    image = image[..., None]
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
    raise ValueError(f"expected an HxWx1 or HxWx3 uint8 image, got {image.dtype} {image.shape}")
  img = image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode(".png", img, [
      cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH,
      cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
  if not ok:
    raise ValueError(f"OpenCV could not encode a {image.shape} image as PNG")
  return buf.tobytes()


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


def _cut(rgb: np.ndarray, box: Sequence[int]) -> np.ndarray:
  left, top, right, bottom = box
  return np.ascontiguousarray(rgb[top:bottom, left:right])


def centre_crop(rgb: np.ndarray, size: int = 384, *, gray: bool = False) -> np.ndarray:
  """M1: the largest centred square, resized to size x size (OpenCV's area average), RGB;
  with `gray`, its luma (size x size x 1) as the frame corners frame_gray_* take it."""
  import cv2
  square = _cut(rgb, centre_square(*rgb.shape[:2]))
  if gray:
    return cv2.resize(to_gray(square), (size, size), interpolation=cv2.INTER_AREA)[..., None]
  return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def expand_box(box: Box, h: int, w: int, margin: int = MARGIN) -> tuple[int, int, int, int]:
  """The box grown by `margin` px on each side (rounded), clipped to an h x w image."""
  left, top, right, bottom = (int(round(v)) for v in box[:4])
  return (max(0, left - margin), max(0, top - margin),
          min(w, right + margin), min(h, bottom + margin))


def face_crop(rgb: np.ndarray, box: Box, size: int = 224, margin: int = MARGIN, *,
              gray: bool = True) -> np.ndarray:
  """M2: box + margin (clipped to the frame), crop, gray, resized: size x size x 1
  (`gray=False`: RGB, size x size x 3, the face_rgb_* corners)."""
  left, top, right, bottom = expand_box(box, *rgb.shape[:2], margin)
  if right <= left or bottom <= top:
    raise ValueError(f"face box {list(box[:4])} lies outside the {rgb.shape[1]}x"
                     f"{rgb.shape[0]} frame")
  cut = _cut(rgb, (left, top, right, bottom))
  return _resize(to_gray(cut) if gray else cut, size)


def fallback_crop(rgb: np.ndarray, size: int = 224, *, gray: bool = True) -> np.ndarray:
  """M2 for a video with no face at all: M1's centre square, at M2's size and colour
  (`gray=False`: RGB, for the face_rgb_* corners)."""
  cut = _cut(rgb, centre_square(*rgb.shape[:2]))
  return _resize(to_gray(cut) if gray else cut, size)



def aligned_crop(rgb: np.ndarray, matrix: np.ndarray, size: int = 224, *,
                 gray: bool = True) -> np.ndarray:
  """M2A: the frame in gray through the video's similarity transform: size x size x 1
  (`gray=False`: each RGB channel through it, size x size x 3, the aligned_rgb_* corners)."""
  if gray:
    return align.warp(to_gray(rgb)[..., 0], matrix, size)[..., None]
  return np.stack([align.warp(rgb[..., c], matrix, size) for c in range(3)], -1)
