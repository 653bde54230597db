r"""Inference speed per model and method, on whatever device JAX sees.

  python -m mer_jax.bench [--models vit_b32,swin_b,poolformer_m36,poolformer_m48]
                          [--methods m1,m2[,m2a,m3]] [--batch 32] [--repeats 20]
                          [--dtype float32]
                          [--preprocess] [--json out.json]

As the paper's section D: for each model at each method's input (M1 384x384
RGB, M2 224x224 gray; beyond the paper M2A 224x224 gray, M3 224x224x3 flow)
it reports the latency of one sample (batch 1, median
and 90th percentile over --repeats calls, after compilation, the device
synchronised), the throughput at --batch, the compile time, the parameter
count and XLA's FLOP count per image. The network is the one training tests
with (uint8 frames in, resize/normalise on device, softmax out); weights are
random, which does not change the speed. `--preprocess` adds the host-side
cost of getting a 640x480 frame to the network's input (M1 centre crop, M2
dlib detection + crop, M2A detection + alignment warp, M3 M2A + DIS flow
from the onset's face; M2A/M3's once-per-video landmarks on the onset are
left out) on a synthetic CASME II frame. The device name and
count head the table.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Sequence

import numpy as np

from mer_jax.plumbing import cli, timing
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import UsageError

PAPER_MODELS = ("vit_b32", "swin_b", "poolformer_m36", "poolformer_m48")
# Each method's network input: (side, channels).
METHODS = {m.value: (m.image_shape[0], m.image_shape[-1]) for m in Method}
PAPER_METHODS = (Method.M1.value, Method.M2.value)


def device_line() -> str:
  import jax
  d = jax.devices()
  kind = getattr(d[0], "device_kind", d[0].platform)
  return (f"{jax.default_backend()} ({kind}) x{len(d)}, jax {jax.__version__}, "
          f"{jax.process_count()} process(es)")


def bench_model(name: str, method: str, *, batch: int = 32, repeats: int = 20,
                dtype: str = "float32", img_size: int | None = None) -> dict:
  """One row: latency (batch 1), throughput (batch), compile time, params, FLOPs."""
  import jax
  import jax.numpy as jnp

  from mer_jax import models
  from mer_jax.run import steps

  size, chans = METHODS[method]
  size = img_size or size
  model = models.create_model(name, num_classes=7, img_size=size, in_chans=chans,
                              dtype=jnp.dtype(dtype))
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               jnp.zeros((1, size, size, chans), jnp.float32))["params"]
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  fn = jax.jit(steps.make_predict_step(model, size))
  rng = np.random.default_rng(0)
  row = {"model": name, "method": method, "img_size": size, "in_chans": chans, "dtype": dtype,
         "params_m": n_params / 1e6}
  for b, key in ((1, "latency"), (batch, "throughput")):
    x = jnp.asarray(rng.integers(0, 256, (b, size, size, chans), dtype=np.uint8))
    t = time.perf_counter()
    compiled = fn.lower(params, x).compile()
    compile_s = time.perf_counter() - t
    flops = timing.xla_flops(compiled)
    flops = float("nan") if flops is None else flops
    times = timing.summary(
        timing.durations(lambda: compiled(params, x).block_until_ready(), repeats))
    if key == "latency":
      row.update(compile_s=compile_s, gflops=flops / 1e9, latency_ms=1e3 * times["median"],
                 latency_p90_ms=1e3 * times["p90"])
    else:
      row.update(batch=b, images_per_s=b / times["median"], batch_ms=1e3 * times["median"])
  return row


def bench_preprocess(repeats: int = 10) -> dict:
  """ms per 640x480 frame: M1 centre crop + resize; M2 dlib detection + crop; M2A
  detection + aligned warp; M3 that + DIS flow from the onset's aligned face."""
  from mer_jax.data import align, faces, flow, pixels, synthetic
  vids = synthetic.plan(videos=7, subjects=7, seed=0)
  frame = synthetic.render_frame(vids[0], vids[0].apex)
  onset = synthetic.render_frame(vids[0], vids[0].onset)
  det = faces.FaceDetector()
  box = max(det(onset), key=faces.box_score)
  matrix = align.video_transform(pixels.to_gray(onset)[..., 0], box,
                                 faces.LandmarkDetector(), 224)
  onset_face = pixels.aligned_crop(onset, matrix)[..., 0]
  dis = flow.make_flow()

  def m2a():
    det(frame)  # the frame's own detection (the quality figures; M2A crops by the onset's)
    return pixels.aligned_crop(frame, matrix)

  def m3():
    return flow.encode_flow(flow.optical_flow(onset_face, m2a()[..., 0], flow=dis))

  def m2():
    found = det(frame)
    box = max(found, key=faces.box_area) if found else None
    return (pixels.face_crop(frame, box, 224) if box is not None
            else pixels.fallback_crop(frame, 224))

  m1 = lambda: pixels.centre_crop(frame, 384)  # noqa: E731
  fns = {"m1": m1, "m2": m2, "m2a": m2a, "m3": m3}
  return {k: 1e3 * timing.summary(timing.durations(fn, repeats))["median"]
          for k, fn in fns.items()}


def table(rows: Sequence[dict], preprocess_ms: dict | None = None) -> str:
  columns = ["model", "method", "input", "params (M)", "GFLOPs/img", "latency ms (b=1)",
             "p90 ms", "throughput img/s", "batch", "compile s"]
  if preprocess_ms:
    columns.append("+ preprocessing ms/frame")
  cells = []
  for r in rows:
    line = [r["model"], r["method"].upper(), f"{r['img_size']}x{r['img_size']}x{r['in_chans']}",
            f"{r['params_m']:.1f}", f"{r['gflops']:.2f}", f"{r['latency_ms']:.1f}",
            f"{r['latency_p90_ms']:.1f}", f"{r['images_per_s']:.1f}", str(r["batch"]),
            f"{r['compile_s']:.1f}"]
    if preprocess_ms:
      line.append(f"{preprocess_ms[r['method']]:.1f}")
    cells.append(line)
  return timing.markdown_table(columns, cells)


def main(argv: Sequence[str] | None = None) -> int:
  p = cli.parser("mer_jax.bench", __doc__)
  p.add_argument("--models", default=",".join(PAPER_MODELS))
  p.add_argument("--methods", default=",".join(PAPER_METHODS),
                 help=f"comma list of {', '.join(METHODS)} (default: the paper's two)")
  p.add_argument("--batch", type=int, default=32, help="batch of the throughput measurement")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--img_size", type=int, default=None,
                 help="override both methods' input size (smoke tests)")
  p.add_argument("--preprocess", action="store_true",
                 help="also time the host-side preprocessing of a frame")
  p.add_argument("--json", help="also write the rows here")
  args = cli.parse(p, argv)

  from mer_jax import models
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
  bad = [m for m in names if m not in models.MODEL_NAMES]
  bad_methods = [m for m in methods if m not in METHODS]
  if bad:
    raise UsageError(f"unknown model(s) {bad} (valid: {', '.join(models.MODEL_NAMES)})")
  if bad_methods:
    raise UsageError(f"unknown method(s) {bad_methods} (valid: {', '.join(METHODS)})")
  if args.batch < 1 or args.repeats < 1:
    raise UsageError("--batch and --repeats must be >= 1")
  print(f"device: {device_line()}", flush=True)
  rows = []
  for name in names:
    for method in methods:
      r = bench_model(name, method, batch=args.batch, repeats=args.repeats, dtype=args.dtype,
                      img_size=args.img_size)
      rows.append(r)
      print(f"  {name} {method.upper()}: {r['latency_ms']:.1f} ms/sample, "
            f"{r['images_per_s']:.1f} img/s at batch {r['batch']}", flush=True)
  pre = bench_preprocess() if args.preprocess else None
  print()
  print(table(rows, pre))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {"device": device_line(), "rows": rows, "preprocess_ms": pre}, indent=1))
  return 0


if __name__ == "__main__":
  cli.run(main)
