r"""Checks of the libraries the data path trusts, to run after upgrading them.

  python benchmarks/check_decoders.py [--manual DIR]

Not tests of mer_jax: they check that its dependencies still do what its
choices assume.
  1. OpenCV decodes a JPEG to PIL's pixels exactly (`pixels.read_frame` uses
     OpenCV for speed and documents PIL's pixels), for the encoder settings
     CASME II's frames may have (4:2:0, 4:4:4, 4:2:2, progressive, optimised
     Huffman tables, gray), and for every apex/onset frame under --manual.
  2. TFDS stores the PNG bytes `pixels.encode_png` makes as given (no
     re-encode) and decodes them to the image.
Prints one line per check; exits 1 on the first difference.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np
import skimage.data
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
  sys.path.insert(0, str(ROOT))

from mer_jax.data import casme2, pixels

ENCODER_SETTINGS = [
    {"quality": 90}, {"quality": 100, "subsampling": 0}, {"quality": 75, "subsampling": 1},
    {"quality": 95, "progressive": True}, {"quality": 85, "optimize": True}]


def pil_read(path) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"))


def check_jpeg(paths) -> None:
  for path in paths:
    if not np.array_equal(pixels.read_frame(path), pil_read(path)):
      sys.exit(f"FAIL: OpenCV's decode of {path} differs from PIL's")
  print(f"ok: OpenCV's JPEG decode is PIL's pixel for pixel ({len(paths)} files)")


def noisy_frame() -> np.ndarray:
  rng = np.random.default_rng(7)
  rgb = skimage.data.astronaut()[:480, :480]
  return np.clip(rgb.astype(int) + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)


def check_png_through_tfds() -> None:
  import tensorflow_datasets as tfds
  rng = np.random.default_rng(3)
  for shape in [(224, 224, 1), (384, 384, 3), (224, 224, 3)]:
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    png = pixels.encode_png(image)
    feature = tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png")
    if feature.encode_example(png) != png:
      sys.exit(f"FAIL: TFDS re-encodes the PNG bytes of a {shape} image")
    if not np.array_equal(feature.decode_example_np(png), image):
      sys.exit(f"FAIL: TFDS decodes the PNG of a {shape} image to other pixels")
  print("ok: TFDS stores encode_png's bytes as given and decodes them to the image")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--manual", help="a CASME II folder whose apex/onset frames to check too")
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for i, options in enumerate(ENCODER_SETTINGS):
      for mode in ("RGB", "L"):
        paths.append(pathlib.Path(tmp) / f"{i}{mode}.jpg")
        Image.fromarray(noisy_frame()).convert(mode).save(paths[-1], **options)
    if args.manual:
      index = casme2.load_casme2(args.manual)
      paths += [v.frames[n] for v in index.videos for n in (v.onset, v.apex)]
    check_jpeg(paths)
  check_png_through_tfds()
  return 0


if __name__ == "__main__":
  sys.exit(main())
