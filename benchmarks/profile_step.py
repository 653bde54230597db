r"""Where a compiled training step spends its time, per layer and op, on this CPU.

  python benchmarks/profile_step.py [--model poolformer_s12] [--size 64] [--batch 16]
      [--steps 8] [--top 30]

Builds the study's training step (`Programs.train_step`, M2 gray, random init), times
--steps steps after compiling, then runs them again under `jax.profiler` and maps every
XLA thunk of the trace to its HLO instruction's `op_name` (the compiled module's text),
summing its time per (forward or backward, layer, op) of the model; ops outside it (the
optimizer's) under their op's name, the augmentation and drop path under theirs, thunks
without metadata (copies, loop control) under "?". Prints the step's time and XLA's FLOP count, then the --top rows in ms a step.
The per-thunk times overlap where XLA runs independent thunks on both cores, so the rows
can add up to more than the step. How issue 23 found the MLP weight gradient's transposes,
the downsampling's base-dilated convolution and the pool's reduce_window (BENCHMARKS
"The MLPs' weight gradient ...").
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax
import numpy as np

from mer_jax.plumbing import runtime
from mer_jax.run import input_pipeline, programs, recipe, steps


def layer_of(op_name: str | None) -> str:
  """'bwd blk/mlp/fc1 dot_general' from an op_name; the last path part outside the model."""
  if not op_name:
    return "?"
  last = op_name.split("/")[-1]
  for part in ("augment", "drop_path"):
    if part in op_name:
      return part
  way = "bwd " if "transpose(" in op_name else "fwd "
  m = re.search(r"(stem|stages_\d_downsample|stages_\d_blocks_\d+(/[\w]+)*|blocks_\d+(/[\w]+)*|"
                r"head\w*|patch_embed\w*|layers_\d+\w*)", op_name)
  if m:
    where = re.sub(r"(stages_\d_)?blocks_\d+", "blk", m.group(1))
    where = re.sub(r"stages_\d_downsample", "downsample", where)
    where = "/".join(p for p in where.split("/") if p != last)
    return f"{way}{where} {last}"
  return last


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="poolformer_s12")
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--top", type=int, default=30)
  a = p.parse_args(argv)
  c = recipe.get_config(a.model, "m2", "af")
  c.init.weights, c.model.img_size, c.batch_size = "", a.size, a.batch
  rng = np.random.RandomState(0)
  n = a.steps * a.batch
  data = input_pipeline.SplitData(
      images=rng.randint(0, 256, (n, a.size, a.size, 1)).astype(np.uint8),
      labels=rng.randint(0, 7, n).astype(np.int32), video_ids=np.arange(n).astype(str),
      subjects=np.zeros(n).astype(str), frame_index=np.zeros(n, np.int32),
      datasets=np.full(n, "casme2"))
  mesh = runtime.make_mesh()
  prog = programs.get(c, 1, a.steps, mesh)
  values = steps.run_values(c, np.bincount(data.labels, minlength=7))
  tx = steps.make_optimizer(c, a.steps)
  state = jax.device_put(steps.fresh_state(prog.init(np.int32(0)), tx), runtime.replicated(mesh))
  batches = [runtime.to_global(b, mesh)
             for b in input_pipeline.train_batches(data, a.batch, seed=0, epoch=0)]
  compiled = prog.train_step.lower(state, batches[0], values).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  meta = {}
  for line in compiled.as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
    if m:
      meta[m.group(1)] = m.group(2)

  def epoch(state):
    for b in batches:
      state, m = prog.train_step(state, b, values)
    jax.block_until_ready(m)
    return state
  state = epoch(state)   # compile and warm
  times = []
  for _ in range(3):
    t = time.perf_counter()
    state = epoch(state)
    times.append((time.perf_counter() - t) / a.steps)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      state = epoch(state)
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "Pjit", "Slinky",
                                              "CommonPjRt", "end:")):
      continue
    key = layer_of(meta.get(name)) if name in meta or "." in name else "?"
    total[key] += e.get("dur", 0)
    count[key] += 1
  print(f"{a.model} {a.size} px, batch {a.batch}, {jax.devices()[0].platform}: step "
        f"{1e3 * statistics.median(times):.1f} ms (median of 3 x {a.steps}), "
        f"{cost.get('flops', 0) / 1e9:.2f} GFLOP; thunks "
        f"{sum(total.values()) / 1e3 / a.steps:.1f} ms")
  print("| ms a step | thunks a step | where |\n|---:|---:|---|")
  for key, us in total.most_common(a.top):
    print(f"| {us / 1e3 / a.steps:.2f} | {count[key] / a.steps:.0f} | {key} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
