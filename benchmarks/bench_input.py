r"""Can the host feed a GPU? Images/s the training input pipeline delivers to the device.

  env $(cat launch/malloc.env) python benchmarks/bench_input.py [--root data/bench_input]
      [--videos 40] [--frames 2613] [--batch 64] [--seconds 3] [--repeats 3]
      [--configs m2_mfs,m1_mfs]

Builds once (under --root, gitignored) the M2 and M1 MFS configs of a small
synthetic CASME II, tiles each training split to --frames (CASME II's MFS
training split: 201 videos x 13 frames = 2,613; a smaller synthetic set
builds in a minute instead of several, and the tiling keeps the batches and
epochs the same as the real size), then feeds the device exactly as
`mer_jax.train` does -- per epoch `input_pipeline.train_batches` ->
`input_pipeline.Prefetcher(..., runtime.to_global, prefetch)` -> a jitted
step -- with a step that does nothing, so that the rate is the host's alone.
Each variant runs whole epochs for about --seconds, --repeats times; the
table gives the median images/s, the range, and the ratio to the target
(M2 224 gray: 5,000 images/s; M1 384 RGB: 1,000), the rate at which a GPU
step would never wait for input. Printed last, also the stages alone, per
batch: the gather (`images[idx]`) and `runtime.to_global` of a batch as
malloc places it, 64-byte aligned and unaligned.

Variants: "train loop" (the above), "no prefetch" (gather, to_global and the
step in one thread), and "aligned gather", a prototype for input_pipeline:
the batch gathered into a fresh 64-byte-aligned array. On the CPU backend
`jax.device_put` takes an aligned host array as is (zero copy) but copies
an unaligned one, slowly; a plain `images[idx]` is aligned or not as malloc
happens to place it. GPUs copy either way.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

TARGETS = {"m2": 5000.0, "m1": 1000.0}   # images/s the host must deliver (issue 13)
LABEL = {"m2": "M2 224 gray", "m1": "M1 384 RGB"}


def dataset_dir(data_dir: pathlib.Path, config: str) -> pathlib.Path | None:
  """The build of `config` from the synthetic set beside `data_dir` (ROOT/casme2)."""
  from mer_jax.data import build
  return build.find_build(config, str(data_dir.parent / "casme2"), data_dir,
                          log=lambda *a: None)


def ensure_built(args, configs: list[str]) -> pathlib.Path:
  root = pathlib.Path(args.root).absolute()
  data_dir = root / "tfds"
  missing = [c for c in configs if dataset_dir(data_dir, c) is None]
  if missing:
    cmd = [sys.executable, "-m", "mer_jax.data.build", "--configs", ",".join(missing),
           "--manual_dir", str(root / "casme2"), "--data_dir", str(data_dir), "--synthetic",
           "--videos", str(args.videos), "--subjects", str(args.subjects)]
    print("building:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
  return data_dir


def aligned_take(images, idx, align: int = 64, offset: int = 0):
  """images[idx] in a fresh array whose data starts `offset` bytes past an
  `align`-byte boundary (offset 0: aligned)."""
  import numpy as np
  shape = (len(idx),) + images.shape[1:]
  nbytes = int(np.prod(shape)) * images.itemsize
  raw = np.empty(nbytes + 2 * align, np.uint8)
  start = -raw.ctypes.data % align + offset
  out = raw[start:start + nbytes].view(images.dtype).reshape(shape)
  np.take(images, idx, axis=0, out=out, mode="clip")   # idx are in range; skip the check
  return out


def aligned_batches(data, global_batch, *, seed, epoch):
  """`input_pipeline.train_batches` with the image gather of `aligned_take`."""
  import numpy as np
  from mer_jax.run import input_pipeline
  order = input_pipeline.epoch_order(len(data), epoch, seed, data.labels, False)
  if len(order) < global_batch:
    order = np.resize(order, global_batch)
  mine = input_pipeline.process_slice(global_batch)
  for step in range(input_pipeline.steps_per_epoch(len(order), global_batch)):
    idx = order[step * global_batch:(step + 1) * global_batch][mine]
    yield {"image": aligned_take(data.images, idx), "label": data.labels[idx],
           "mask": np.ones(len(idx), np.float32)}


def measure(train, mesh, step, variant: str, batch: int, prefetch: int, seconds: float):
  """Images/s over whole epochs lasting about `seconds` (epoch starts included)."""
  import jax
  from mer_jax.run import input_pipeline
  from mer_jax.plumbing import runtime
  put = lambda b: runtime.to_global(b, mesh)  # noqa: E731
  n, epoch, out = 0, 0, None
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds or epoch == 0:
    if variant == "aligned gather":
      batches = aligned_batches(train, batch, seed=0, epoch=epoch)
    else:
      batches = input_pipeline.train_batches(train, batch, seed=0, epoch=epoch)
    if variant == "no prefetch":
      feed = map(put, batches)
    else:
      feed = input_pipeline.Prefetcher(batches, put, prefetch)
    for b in feed:
      out = step(b)
      n += batch
    epoch += 1
  jax.block_until_ready(out)
  return n / (time.perf_counter() - t0)


def stage_times(train, mesh, batch: int, reps: int = 40):
  """Median ms per batch of the gather and of to_global of a fresh batch:
  as `images[idx]` places it, 64-byte aligned, and deliberately unaligned;
  and the share of `train_batches`' image arrays that come out aligned."""
  import jax
  import numpy as np
  from mer_jax.run import input_pipeline
  from mer_jax.plumbing import runtime
  rng = np.random.default_rng(0)
  t = {"gather": [], "to_global": [], "to_global aligned": [], "to_global unaligned": []}

  def put(key, x):
    start = time.perf_counter()
    jax.block_until_ready(runtime.to_global({"image": x}, mesh))
    t[key].append(time.perf_counter() - start)

  for _ in range(reps):
    idx = rng.permutation(len(train))[:batch]
    start = time.perf_counter()
    x = train.images[idx]
    t["gather"].append(time.perf_counter() - start)
    put("to_global", x)
    put("to_global aligned", aligned_take(train.images, idx))
    put("to_global unaligned", aligned_take(train.images, idx, offset=16))
  out = {k: 1e3 * statistics.median(v) for k, v in t.items()}
  aligned = [b["image"].ctypes.data % 64 == 0
             for b in input_pipeline.train_batches(train, batch, seed=0, epoch=0)]
  out["aligned share"] = float(np.mean(aligned))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--root", default=str(ROOT / "data" / "bench_input"),
                  help="synthetic CASME II and its TFDS configs (built once)")
  ap.add_argument("--configs", default="m2_mfs,m1_mfs")
  ap.add_argument("--videos", type=int, default=40)
  ap.add_argument("--subjects", type=int, default=8)
  ap.add_argument("--frames", type=int, default=2613,
                  help="training frames after tiling (0: the split as built)")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--prefetch", type=int, default=2, help="as the config's data.prefetch")
  ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--variants", default="train loop,no prefetch,aligned gather")
  args = ap.parse_args(argv)

  configs = args.configs.split(",")
  data_dir = ensure_built(args, configs)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mer_jax.run import input_pipeline
  from mer_jax.plumbing import runtime

  mesh = runtime.make_mesh()
  # The no-op step: reads one element of each array, so it waits for every transfer.
  step = jax.jit(lambda b: b["image"][0, 0, 0, 0].astype(jnp.float32) + b["label"][0]
                 + b["mask"][0])
  rows, stages = [], []
  for config in configs:
    train = input_pipeline.load_splits(str(dataset_dir(data_dir, config)))["train"]
    if args.frames:
      train = train.take(np.resize(np.arange(len(train)), args.frames))
    method = config[:2]
    for variant in args.variants.split(","):
      rates = [measure(train, mesh, step, variant, args.batch, args.prefetch, args.seconds)
               for _ in range(args.repeats)]
      med = statistics.median(rates)
      rows.append((LABEL[method], len(train), variant, med, min(rates), max(rates),
                   TARGETS[method]))
      print(f"{config} {variant}: {med:.0f} images/s (range {min(rates):.0f}-{max(rates):.0f})",
            file=sys.stderr, flush=True)
    stages.append((LABEL[method], train.images[0].nbytes * args.batch / 2 ** 20,
                   stage_times(train, mesh, args.batch)))
    del train

  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"\nInput pipeline to {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{len(os.sched_getaffinity(0))} cores, load average {load:.1f}; batch {args.batch}, "
        f"prefetch {args.prefetch}, no-op step, median of {args.repeats} x "
        f"{args.seconds:g} s; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}\n")
  print("| input | training frames | variant | images/s | range | target | x target |")
  print("|---|---:|---|---:|---:|---:|---:|")
  for label, n, variant, med, lo, hi, target in rows:
    print(f"| {label} | {n:,} | {variant} | {med:,.0f} | {lo:,.0f}-{hi:,.0f} | "
          f"{target:,.0f} | {med / target:.1f} |")
  print("\n| input | batch MiB | gather ms | to_global ms | aligned batches | to_global ms, "
        "aligned | to_global ms, unaligned |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for label, mib, t in stages:
    print(f"| {label} | {mib:.1f} | {t['gather']:.2f} | {t['to_global']:.2f} | "
          f"{100 * t['aligned share']:.0f} % | {t['to_global aligned']:.2f} | "
          f"{t['to_global unaligned']:.2f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
