r"""M3: optical flow from a video's onset frame to a frame, as a fixed-scale image.

  python -m mer_jax.data.flow --bench   # accuracy and CPU cost of DIS and TV-L1 at 224

Algorithm. OpenCV's DIS (dense inverse search) at full resolution: the
"medium" preset with its finest scale set to 0 (the preset stops at half
size), 20 variational-refinement iterations (the preset's 5) and smoothness
alpha 40 (the preset's 20): the extra refinement and smoothness lower the
flow's noise on a still face. Chosen over TV-L1 (`cv2.optflow`, the contrib
build) by `--bench` and the synthetic CASME II: on known translations and
rotations of a real face DIS is as accurate on average (TV-L1's worst pixels
are a little better on rotations, its flow on a still face a little quieter);
DIS follows the larger local motions of small features (a brow, a lip moving
~10 px) where TV-L1's coarse-to-fine pyramid loses some; and DIS costs a small
fraction of TV-L1's time per frame. TV-L1 (OpenCV's defaults) stays available
as `algorithm="tvl1"`. Both run in OpenCV's thread pool: a build with one
process per core calls `cv2.setNumThreads(1)` in each (mer_jax.data.runner does).

Image. Channel 0 is the horizontal flow u (+ right), 1 the vertical flow v
(+ down), 2 the magnitude, in pixels of the input images. One fixed scale for
every image, so that values compare across frames and videos:
  u, v:      code = round(128 + 127 * clip(u, -SCALE, SCALE) / SCALE)  (128 = still)
  magnitude: code = round(255 * min(|(u, v)|, SCALE) / SCALE)
`decode_flow` inverts the first two to within STEP / 2 (the magnitude channel
adds nothing to decode). SCALE = 10 px on 224x224 faces: real micro-expressions
move a few pixels there and the synthetic CASME II's apex motions up to about
10 px, so only the strongest synthetic peaks reach the clip; STEP = SCALE / 127
(~0.08 px) is finer than the flow's own accuracy, so the rounding costs nothing.

Augmentation. A flow image is vectors, not intensities: a geometric
augmentation must move the vectors with the pixels. `hflip` is the flow image
of the mirrored pair (u negated); `scale_vectors` the vectors of a view zoomed
per axis (the random resized crop; mer_jax.run.input_pipeline.augment uses both
rules on device). Brightness, contrast and rotation have no such rule here and
stay off for M3 (mer_jax.run.steps.check_method_fields).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

SCALE = 10.0         # px that map to the ends of the u and v codes, and to full magnitude
STEP = SCALE / 127   # px per code of u and v
ZERO = 128           # the code of no motion
ALGORITHMS = ("dis", "tvl1")


def make_flow(algorithm: str = "dis"):
  """A configured OpenCV optical-flow object (`.calc(prev, next, None)`); not thread-safe."""
  import cv2
  if algorithm == "dis":
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow.setFinestScale(0)
    flow.setVariationalRefinementIterations(20)
    flow.setVariationalRefinementAlpha(40.0)
    return flow
  if algorithm == "tvl1":
    if not hasattr(cv2, "optflow"):
      raise ImportError("TV-L1 needs OpenCV's contrib build: "
                        "pip install opencv-contrib-python-headless (and no other opencv wheel)")
    return cv2.optflow.DualTVL1OpticalFlow_create()
  raise ValueError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")


def _gray(image: np.ndarray, name: str) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 2:
    raise ValueError(f"{name}: expected a gray uint8 image (H, W), got {image.dtype} {image.shape}")
  return np.ascontiguousarray(image)  # DIS refuses strided views


def optical_flow(onset: np.ndarray, frame: np.ndarray, algorithm: str = "dis",
                 flow=None) -> np.ndarray:
  """Flow (H, W, 2) float32, (u, v) px, that carries `onset`'s content to where `frame` shows it."""
  onset, frame = _gray(onset, "onset"), _gray(frame, "frame")
  if onset.shape != frame.shape:
    raise ValueError(f"onset {onset.shape} and frame {frame.shape} differ in shape")
  flow = flow if flow is not None else make_flow(algorithm)
  return flow.calc(onset, frame, None)


def encode_flow(flow: np.ndarray) -> np.ndarray:
  """(H, W, 2) flow in px -> (H, W, 3) uint8 image at the fixed SCALE."""
  flow = np.asarray(flow, np.float32)
  uv = ZERO + np.clip(flow, -SCALE, SCALE) * (127 / SCALE)
  magnitude = np.minimum(np.hypot(flow[..., 0], flow[..., 1]), SCALE) * (255 / SCALE)
  return np.rint(np.dstack([uv, magnitude])).astype(np.uint8)


def decode_flow(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(u, v), float32 px, of a flow image; within STEP / 2 of the flow where |u|, |v| <= SCALE."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 flow image (H, W, 3), got {image.dtype} {image.shape}")
  uv = (image[..., :2].astype(np.float32) - ZERO) * np.float32(STEP)
  return uv[..., 0], uv[..., 1]


def hflip(image):
  """The flow image of the left-right mirrored pair: `image` [..., H, W, 3] mirrored,
  u negated (code 2 * ZERO - code, exact on encode_flow's codes 1..255), v and the
  magnitude only mirrored. numpy or any array-API namespace (jax.numpy on device)."""
  xp = image.__array_namespace__() if hasattr(image, "__array_namespace__") else np
  image = xp.asarray(image)
  if image.ndim < 3 or image.shape[-1] != 3:
    raise ValueError(f"expected flow images (..., H, W, 3), got {image.shape}")
  mirrored = image[..., ::-1, :]
  u = mirrored[..., :1]
  if xp.isdtype(u.dtype, "integral"):  # 2 * ZERO does not fit in uint8
    u = xp.astype(u, xp.int32)
  u = xp.astype(xp.clip(2 * ZERO - u, 0, 255), image.dtype)
  return xp.concat([u, mirrored[..., 1:]], axis=-1)


def scale_vectors(codes, sx, sy):
  """Float codes [..., 3] of a flow image whose view was zoomed by sx (x) and sy (y):
  u times sx, v times sy (a negative factor mirrors), clipped at SCALE, and the
  magnitude recomputed from them (an aspect change scales it by neither factor).
  Float codes out, unrounded; numpy or any array-API namespace."""
  xp = codes.__array_namespace__()
  per_scale = SCALE / STEP  # u and v codes from ZERO to the end of the scale (127)
  du = xp.clip((codes[..., 0] - ZERO) * sx, -per_scale, per_scale)
  dv = xp.clip((codes[..., 1] - ZERO) * sy, -per_scale, per_scale)
  magnitude = xp.minimum(xp.sqrt(du * du + dv * dv) * (STEP * 255 / SCALE), 255.0)
  return xp.stack([ZERO + du, ZERO + dv, magnitude], axis=-1)


def flow_images(onset: np.ndarray, frames: Sequence[np.ndarray],
                algorithm: str = "dis") -> list[np.ndarray]:
  """`flow_image(onset, f)` for each of `frames`, with one optical-flow object."""
  flow = make_flow(algorithm)
  return [encode_flow(optical_flow(onset, f, flow=flow)) for f in frames]


def flow_image(onset: np.ndarray, frame: np.ndarray, algorithm: str = "dis") -> np.ndarray:
  """The flow from `onset` to `frame` (gray uint8, one shape) as a (H, W, 3) uint8 image."""
  return flow_images(onset, [frame], algorithm)[0]


# --- the benchmark behind the choice of algorithm --------------------------------


def _known_motions(noise: float = 2.0, seed: int = 0):
  """(name, onset, frame, u, v) for a 224 crop of skimage's astronaut's face: the onset and
  the frame each moved half way, in opposite directions, so both are resampled alike."""
  import cv2
  import skimage.data
  rng = np.random.default_rng(seed)
  img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
  x0, y0 = 113, 10  # the crop; the face is about x 140..310, y 30..215 of the 512x512 image
  ys, xs = np.mgrid[y0:y0 + 224, x0:x0 + 224].astype(np.float64)

  def grab(m):
    out = cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT)[y0:y0 + 224, x0:x0 + 224]
    return np.clip(out + rng.normal(0, noise, out.shape), 0, 255).round().astype(np.uint8)

  def case(name, m_onset, m_frame):
    t = np.vstack([m_frame, [0, 0, 1]]) @ np.linalg.inv(np.vstack([m_onset, [0, 0, 1]]))
    u = t[0, 0] * xs + t[0, 1] * ys + t[0, 2] - xs
    v = t[1, 0] * xs + t[1, 1] * ys + t[1, 2] - ys
    return name, grab(m_onset), grab(m_frame), u, v

  def shift(dx, dy):
    return np.array([[1.0, 0, dx], [0, 1, dy]])

  def turn(deg):
    return cv2.getRotationMatrix2D((225.0, 122.0), deg, 1.0)

  return [case("translate (2.5, 1.5) px", shift(-1.25, -0.75), shift(1.25, 0.75)),
          case("translate (-3.4, 4.6) px", shift(1.7, -2.3), shift(-1.7, 2.3)),
          case("rotate 2 deg", turn(-1), turn(1)),
          case("rotate 3 deg", turn(-1.5), turn(1.5)),
          case("still (noise only)", shift(0, 0), shift(0, 0))]


def bench(algorithms: Sequence[str] = ALGORITHMS, repeats: int = 5) -> None:
  import cv2
  cv2.setNumThreads(1)
  cases = _known_motions()
  face = np.zeros((224, 224), bool)
  face[35:190, 42:182] = True  # the face, 15 px inside its box
  print("endpoint error over the face, px (mean / 95th percentile), sensor noise sigma 2")
  for algorithm in algorithms:
    flow = make_flow(algorithm)
    for name, onset, frame, u, v in cases:
      f = optical_flow(onset, frame, flow=flow)
      err = np.hypot(f[..., 0] - u, f[..., 1] - v)[face]
      print(f"  {algorithm:5s} {name:26s} {err.mean():.3f} / {np.percentile(err, 95):.3f}")
    _, onset, frame, _, _ = cases[2]
    optical_flow(onset, frame, flow=flow)
    cpu = []
    for _ in range(repeats):
      t = time.process_time()
      optical_flow(onset, frame, flow=flow)
      cpu.append(time.process_time() - t)
    print(f"  {algorithm:5s} CPU time per 224x224 frame, one thread: {1000 * min(cpu):.1f} ms "
          f"(min of {repeats})")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--bench", action="store_true",
                 help="measure each algorithm's accuracy on known motions of a real face and "
                      "its CPU time per 224x224 frame")
  p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated")
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args(argv)
  if not a.bench:
    p.print_help()
    return 0
  bench(a.algorithms.split(","), a.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
