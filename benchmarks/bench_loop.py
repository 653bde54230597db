r"""The scanned epoch against the per-step loop: training steps/s of each (mer_jax.run.programs).

  python benchmarks/bench_loop.py [--models poolformer_s12:64,vit_b32:224] [--steps 24]
      [--batch 8] [--repeats 3]

Random uint8 gray images (M2) of --steps * --batch frames at the model's size;
"step" runs `Programs.train_step` per batch as mer_jax.train's per-step path
does (the batch gathered on the host, fed by `input_pipeline.Prefetcher`),
"scan" runs `Programs.train_chunk` over the split on the device, --steps
steps a call. Both are compiled and warmed first; each figure is the median
of --repeats epochs, from random init. One device.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from mer_jax.plumbing import runtime
from mer_jax.run import input_pipeline, programs, recipe, steps


def bench(name: str, size: int, n_steps: int, batch: int, repeats: int) -> dict:
  c = recipe.get_config(name, "m2", "af")
  c.init.weights, c.model.img_size, c.batch_size, c.scan_steps = "", size, batch, n_steps
  rng = np.random.RandomState(0)
  n = n_steps * batch
  data = input_pipeline.SplitData(
      images=rng.randint(0, 256, (n, size, size, 1)).astype(np.uint8),
      labels=rng.randint(0, 7, n).astype(np.int32), video_ids=np.arange(n).astype(str),
      subjects=np.zeros(n).astype(str), frame_index=np.zeros(n, np.int32))
  mesh = runtime.make_mesh()
  prog = programs.get(c, 1, n_steps, mesh)
  values = steps.run_values(c, np.bincount(data.labels, minlength=7))
  tx = steps.make_optimizer(c, n_steps)
  images, labels = programs.device_split(data.images, data.labels, mesh)

  def per_step(state, epoch):
    feed = input_pipeline.Prefetcher(
        input_pipeline.train_batches(data, batch, seed=0, epoch=epoch),
        lambda b: runtime.to_global(b, mesh), 2)
    with feed:
      for b in feed:
        state, m = prog.train_step(state, b, values)
    return state, m["loss"]

  def scanned(state, epoch):
    order = input_pipeline.epoch_indices(data, batch, seed=0, epoch=epoch).astype(np.int32)
    state, acc = prog.train_chunk(state, images, labels, order, np.int32(n_steps), values,
                                  programs.start_acc(0.0))
    return state, acc["loss"]

  out = {"model": f"{name} {size}px", "batch": batch, "steps": n_steps}
  for label, fn in (("step", per_step), ("scan", scanned)):
    state = jax.device_put(steps.fresh_state(prog.init(np.int32(0)), tx),
                           runtime.replicated(mesh))
    state, loss = fn(state, 0)   # compile and warm
    jax.block_until_ready(loss)
    rates = []
    for r in range(repeats):
      t = time.perf_counter()
      state, loss = fn(state, r + 1)
      jax.block_until_ready(loss)
      rates.append(n_steps / (time.perf_counter() - t))
    out[label] = statistics.median(rates)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="poolformer_s12:64,vit_b32:224")
  p.add_argument("--steps", type=int, default=24)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args(argv)
  print(f"{jax.devices()[0].platform}, {jax.device_count()} device(s)")
  print("| model | batch | steps/epoch | per-step loop steps/s | scanned epoch steps/s | ratio |")
  print("|---|---|---|---|---|---|")
  for spec in a.models.split(","):
    name, size = spec.split(":")
    r = bench(name, int(size), a.steps, a.batch, a.repeats)
    print(f"| {r['model']} | {r['batch']} | {r['steps']} | {r['step']:.2f} | {r['scan']:.2f} | "
          f"{r['scan'] / r['step']:.2f} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
