"""data/pixels.py against PIL, the previous path: which files reach PIL's decoder, M2's
crops bit-identical, M1's within the stated interpolation tolerance, the PNG bytes the
dataset stores. (That OpenCV decodes a JPEG to PIL's pixels is a check of OpenCV:
benchmarks/check_decoders.py.)"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from frames_helpers import H, W, face_patch, make_frame
from mer_jax.data import casme2
from mer_jax.data import pixels

# M1 (OpenCV's area average vs PIL's antialiased bicubic, 480x480 -> 384x384):
# mean absolute difference and 99th percentile, in grey levels. Measured on the
# synthetic frames: about 0.3 and 2; edges differ most (bicubic overshoots).
M1_MEAN_TOLERANCE = 0.5
M1_P99_TOLERANCE = 3


def pil_read(path) -> np.ndarray:
  """The previous read_frame: PIL decodes and converts to RGB."""
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"))


def pil_face_crop(rgb: np.ndarray, box, size: int = 224) -> np.ndarray:
  """The previous M2 path, all PIL: crop box + 20 px (clipped), "L", bicubic resize."""
  left, top, right, bottom = (int(round(v)) for v in box[:4])
  region = (max(0, left - 20), max(0, top - 20), min(rgb.shape[1], right + 20),
            min(rgb.shape[0], bottom + 20))
  img = Image.fromarray(rgb).crop(region).convert("L").resize((size, size), Image.BICUBIC)
  return np.asarray(img)[..., None]


def pil_centre_crop(rgb: np.ndarray, size: int = 384) -> np.ndarray:
  """The previous M1 path: the centre square, PIL's (antialiased) bicubic resize."""
  s = min(rgb.shape[:2])
  left, top = (rgb.shape[1] - s) // 2, (rgb.shape[0] - s) // 2
  return np.asarray(Image.fromarray(rgb).crop((left, top, left + s, top + s)).resize(
      (size, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def frames(synthetic_casme2):
  """Apex and onset frame files of conftest's synthetic CASME II (JPEG, quality 90)."""
  index = casme2.load_casme2(synthetic_casme2)
  return [v.frames[n] for v in index.videos for n in (v.onset, v.apex)]


def test_jpeg_with_trailing_bytes_and_non_jpeg_files_read_as_pil(tmp_path):
  rgb = make_frame([(face_patch(1.0), 100, 100)])
  Image.fromarray(rgb).save(tmp_path / "f.jpg", quality=90)
  (tmp_path / "tail.jpg").write_bytes((tmp_path / "f.jpg").read_bytes() + b"\0\0junk")
  np.testing.assert_array_equal(pixels.read_frame(tmp_path / "tail.jpg"), pil_read(tmp_path / "f.jpg"))
  Image.fromarray(rgb).save(tmp_path / "f.png")
  np.testing.assert_array_equal(pixels.read_frame(tmp_path / "f.png"), rgb)


def test_truncated_jpeg_still_raises(tmp_path):
  # OpenCV alone would return the image with its missing rows filled in.
  Image.fromarray(make_frame([(face_patch(1.0), 100, 100)])).save(tmp_path / "f.jpg")
  data = (tmp_path / "f.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[:int(len(data) * 0.8)])
  with pytest.raises(casme2.Casme2Error, match="cut.jpg"):
    pixels.read_frame(tmp_path / "cut.jpg")


def test_m2_crops_are_the_previous_paths_bit_for_bit(frames):
  boxes = [(200, 130, 408, 338), (-30, 400, 90, 520), (150.4, 99.6, 371.5, 330), (0, 0, W, H)]
  for path in frames:
    for box in boxes:
      np.testing.assert_array_equal(pixels.face_crop(pixels.read_frame(path), box),
                                    pil_face_crop(pil_read(path), box))
    rgb = pil_read(path)
    np.testing.assert_array_equal(pixels.fallback_crop(pixels.read_frame(path)),
                                  pil_face_crop(rgb, (80 + 20, 20, 560 - 20, 480 - 20)))


def test_m1_crops_are_within_the_interpolation_tolerance_of_the_previous_path(frames):
  diffs = []
  for path in frames:
    got = pixels.centre_crop(pixels.read_frame(path))
    want = pil_centre_crop(pil_read(path))
    assert got.shape == want.shape == (384, 384, 3) and got.dtype == np.uint8
    diffs.append(np.abs(got.astype(int) - want.astype(int)).ravel())
  d = np.concatenate(diffs)
  assert d.mean() <= M1_MEAN_TOLERANCE, d.mean()
  assert np.percentile(d, 99) <= M1_P99_TOLERANCE, np.percentile(d, 99)
  assert d.mean() > 0  # a different interpolation indeed: the tolerance is not vacuous


@pytest.mark.parametrize("shape", [(224, 224, 1), (384, 384, 3), (224, 224, 3), (5, 7)])
def test_png_bytes_decode_to_the_image(shape):
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, shape, dtype=np.uint8)
  png = pixels.encode_png(image)
  want = image if image.ndim == 3 else image[..., None]
  # PIL reads the channels in the array's order (a standard PNG, RGB not BGR).
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))).reshape(want.shape), want)
  with pytest.raises(ValueError, match="uint8"):
    pixels.encode_png(image.astype(np.float32))
