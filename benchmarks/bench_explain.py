r"""What explaining a run costs: each attribution method's time per frame, its compile time, and
the estimate for one run's AF test split (28 videos, one frame each), per model.

  python benchmarks/bench_explain.py [--cases vit_b32:224:1,vit_b32:384:3,swin_b:384:3,\
      poolformer_m36:384:3] [--frames 4] [--steps 32] [--samples 16]

A case is model:size:channels (M1: 384 RGB; M2: 224 gray), random weights (the
cost does not depend on them) and random uint8 images at the dataset's size
(224 or 384; the model sees them at `size`). Each method goes through
mer_jax.explain.survey.compute_maps, the program's own path (the on-device
resize and normalisation are part of the explained function; the weights are
the compiled programs' arguments, not constants), twice on the same --frames
frames: the first call compiles (as the program does once per method), the
second finds the program in a persistent compilation cache this script sets
up, so per frame = T_2 / frames and compile = T_1 - T_2. Integrated gradients and SmoothGrad scale linearly in --steps and
--samples (one scan step each), so on a slow CPU they may run with fewer and
be scaled to the program's defaults (32 steps, 16 samples): the table says
which. The deletion curve is 9 fractions x 2 (maps, random) forward passes of
every frame, timed as one jitted forward per frame. The run estimate: compile
+ 32 x per frame for each method (28 frames in two padded batches of 16), plus
the deletion passes of each; dlib's face boxes and landmarks come on top
(cached after the first run).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
  sys.path.insert(0, str(ROOT))

from mer_jax.explain import survey, where
from mer_jax.models import create_model
from mer_jax.plumbing import timing
from mer_jax.run import steps as run_steps

DEFAULTS = {"integrated_gradients": ("steps", 32), "smoothgrad": ("samples", 16)}
PADDED_FRAMES = 32   # 28 AF test frames in two batches of 16 (the last one padded)
VIDEOS = 28


def seconds(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def bench(model_name: str, size: int, chans: int, frames: int, steps: int, samples: int,
          say=print) -> list[dict]:
  data_size = 384 if size > 224 else 224
  model = create_model(model_name, num_classes=7, img_size=size, in_chans=chans)
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                      np.zeros((1, size, size, chans), np.float32),
                                      train=False))()["params"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (frames, data_size, data_size, chans)).astype(np.uint8)
  targets = rng.integers(0, 7, frames)
  settings = {"integrated_gradients": {"steps": steps},
              "smoothgrad": {"samples": samples, "noise": 0.15, "seed": 0}}
  predict = jax.jit(run_steps.make_predict_step(model, size))
  fwd = timing.summary(timing.durations(
      lambda: np.asarray(predict(params, images)), 2))["best"] / frames
  deletion = 2 * len(where.DELETION_FRACTIONS) * VIDEOS * fwd
  rows = []
  for name in survey.default_methods(model_name):
    run = lambda n: survey.compute_maps(name, model, params, images[:n], targets[:n], size,
                                        settings.get(name, {}))
    t1, t2 = seconds(lambda: run(frames)), seconds(lambda: run(frames))
    per_frame, compile_s = t2 / frames, max(t1 - t2, 0.0)
    scale = 1.0
    if name in DEFAULTS:
      field, default = DEFAULTS[name]
      scale = default / settings[name][field]
    row = {"model": model_name, "size": size, "chans": chans, "method": name,
           "ran_with": {"integrated_gradients": f"{steps} steps",
                        "smoothgrad": f"{samples} samples"}.get(name, "-"),
           "per_frame_s": per_frame * scale, "compile_s": compile_s,
           "deletion_s": deletion,
           "run_s": compile_s + PADDED_FRAMES * per_frame * scale + deletion}
    say(f"{model_name} {size} {chans}ch {name}: per frame {row['per_frame_s']:.2f} s"
        f" (x{scale:g} from {row['ran_with']}), compile {compile_s:.1f} s, deletion "
        f"{deletion:.1f} s, run {row['run_s']:.0f} s", flush=True)
    rows.append(row)
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cases", default="vit_b32:224:1,vit_b32:384:3,swin_b:384:3,"
                 "poolformer_m36:384:3", help="model:size:channels, comma-separated")
  p.add_argument("--frames", type=int, default=4)
  p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps run")
  p.add_argument("--samples", type=int, default=16, help="SmoothGrad samples run")
  args = p.parse_args(argv)
  import tempfile
  # Each compute_maps call jits a new closure: the second call of a method finds the
  # first's compiled program here instead of compiling again.
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_explain_"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  rows = []
  for case in args.cases.split(","):
    name, size, chans = case.split(":")
    rows += bench(name, int(size), int(chans), args.frames, args.steps, args.samples)
  print(f"\n{jax.devices()[0].platform}, {args.frames} frames; per frame scaled to 32 IG "
        "steps / 16 SmoothGrad samples; run: one AF test split (28 videos)\n")
  print("| model | input | method | ran with | per frame | compile | deletion curve | "
        "run (28 videos) |\n|---|---|---|---|---:|---:|---:|---:|")
  by_model = {}
  for r in rows:
    print(f"| {r['model']} | {r['size']} {'RGB' if r['chans'] == 3 else 'gray'} | "
          f"{r['method'].replace('_', ' ')} | {r['ran_with']} | {r['per_frame_s']:.2f} s | "
          f"{r['compile_s']:.1f} s | {r['deletion_s']:.1f} s | {r['run_s']:.0f} s |")
    by_model.setdefault((r["model"], r["size"], r["chans"]), []).append(r["run_s"])
  for (m, s, c), t in by_model.items():
    print(f"| {m} | {s} {'RGB' if c == 3 else 'gray'} | **all three** | | | | | "
          f"**{sum(t):.0f} s** |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
