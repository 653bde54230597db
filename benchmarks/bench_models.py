r"""Flax vs timm on this CPU: forward images/s and one training step, batch 8.

  env $(cat launch/malloc.env) python benchmarks/bench_models.py \
      [--models vit_b32,poolformer_m36,...] [--methods M1,M2] [--batch 8] [--repeats 3]
  python benchmarks/bench_models.py --matmuls   # XLA vs torch on the models' dense layers

Both run in one process (one per model and input) on the same threads, from the same random weights
(timm model -> `from_timm`), at the paper's sizes: M1 384x384 RGB and M2
224x224 gray (timm gets the gray image repeated to 3 channels, which is what
the converted 1-channel stem computes). A training step is forward + backward
+ AdamW (lr 5e-5, wd 1e-3) with cross-entropy; Flax's is one jitted function,
timed after compilation, with its state donated as in training. Flax runs
first, is freed, then timm runs; the peak resident memory of each phase is
reported too (Linux /proc; both include the timm model and the inputs,
which the process holds throughout). Prints a markdown table with the
Flax/timm ratios (> 1 = Flax faster), the step's useful GFLOP/s (XLA's cost
analysis of the compiled step over each framework's step time) and the float32
matmul rate of XLA and torch on this CPU, so the gap left is a number.
BENCHMARKS.md's tables ran under the CPU malloc settings of launch/malloc.env
(`mer_jax.plumbing.runtime.MALLOC_TUNABLES`); the header prints the GLIBC_TUNABLES in use.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import timm
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
  sys.path.insert(0, str(ROOT))

from mer_jax.plumbing import timing
from mer_jax.models import create_model, from_timm

TIMM = {("vit_b32", 224): "vit_base_patch32_224", ("vit_b32", 384): "vit_base_patch32_384",
        ("swin_b", 224): "swin_base_patch4_window7_224",
        ("swin_b", 384): "swin_base_patch4_window12_384",
        ("poolformer_m36", 224): "poolformer_m36", ("poolformer_m36", 384): "poolformer_m36",
        ("poolformer_m48", 224): "poolformer_m48", ("poolformer_m48", 384): "poolformer_m48"}


def best_of(fn, repeats):
  """Seconds of the fastest of `repeats` calls (the caller has warmed `fn` up)."""
  return timing.summary(timing.durations(fn, repeats, warmup=0))["best"]


def bench(name, size, chans, batch, repeats):
  """Flax, then timm, in this process: all Flax work first, freed, then timm's,
  so the two never hold their step memory at the same time (Swin-B at 384
  needs most of 24 GiB for either)."""
  torch.manual_seed(0)
  tm = timm.create_model(TIMM[(name, size)], num_classes=7, img_size=size) \
      if name.startswith(("vit", "swin")) else timm.create_model(TIMM[(name, size)], num_classes=7)
  sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
  variables = from_timm(name, sd, img_size=size, in_chans=chans)
  del sd
  model = create_model(name, img_size=size, in_chans=chans)
  x = np.random.RandomState(0).uniform(-2, 2, (batch, size, size, chans)).astype(np.float32)
  y = np.arange(batch) % 7
  xt = torch.from_numpy(np.repeat(x, 3, -1) if chans == 1 else x).permute(0, 3, 1, 2).contiguous()
  yt = torch.from_numpy(y)
  timing.reset_peak_rss()

  # Flax: forward in eval mode, then the training step.
  # On the device first, as training holds them: numpy arguments would be
  # copied in on every call (all 88 M parameters of ViT-B/32 or Swin-B).
  variables, xj, yj = jax.device_put((variables, x, y))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  fwd(variables, xj).block_until_ready()
  flax_f = best_of(lambda: fwd(variables, xj).block_until_ready(), repeats)
  tx = optax.adamw(5e-5, weight_decay=1e-3)
  params = variables["params"]
  opt_state = tx.init(params)

  # Donated state, as in mer_jax.train: XLA updates parameters and AdamW moments
  # in place (torch's optimizer does too) instead of allocating new buffers.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y, key):
    def loss(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(loss)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  key = jax.random.PRNGKey(0)
  # XLA's own count of the step's floating-point work (its cost analysis).
  step_flop = timing.xla_flops(step.lower(params, opt_state, xj, yj, key).compile())
  step_flop = float("nan") if step_flop is None else step_flop
  state = step(params, opt_state, xj, yj, key)
  jax.block_until_ready(state)
  def f_step():
    nonlocal state
    state = step(*state, xj, yj, key)
    jax.block_until_ready(state)
  flax_s = best_of(f_step, repeats)
  flax_peak = timing.peak_rss_gb()
  del state, params, opt_state, variables, step, fwd, xj, yj
  jax.clear_caches()
  timing.reset_peak_rss()

  # timm: the same, in eval mode then training.
  tm.eval()
  def t_fwd():
    with torch.no_grad():
      tm(xt)
  t_fwd()
  timm_f = best_of(t_fwd, repeats)
  tm.train()
  opt = torch.optim.AdamW(tm.parameters(), lr=5e-5, weight_decay=1e-3)
  def t_step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(tm(xt), yt).backward()
    opt.step()
  t_step()
  timm_s = best_of(t_step, repeats)
  timm_peak = timing.peak_rss_gb()
  return batch / flax_f, batch / timm_f, flax_s, timm_s, flax_peak, timm_peak, step_flop


def matmul_gflops(m=1568, k=512, n=2048, repeats=20):
  """XLA's and torch's float32 rate for x[m, k] @ w[k, n] on this CPU, GFLOP/s
  (best of `repeats`): a Swin-B stage-3 MLP matmul at batch 8 by default."""
  return matmul_pass_gflops(m, k, n, repeats, forward_only=True)[0]


def matmul_pass_gflops(m, k, n, repeats=5, forward_only=False):
  """(XLA, torch) GFLOP/s for each matmul of a dense layer's training step:
  forward x[m,k] @ w[k,n], input gradient dy @ w.T, weight gradient x.T @ dy
  (the forward one alone with `forward_only`)."""
  rng = np.random.RandomState(0)
  x, w, dy = (rng.randn(*s).astype(np.float32) for s in ((m, k), (k, n), (m, n)))
  xj, wj, dyj = jax.device_put((x, w, dy))
  xt, wt, dyt = (torch.from_numpy(a) for a in (x, w, dy))
  passes = [(jax.jit(lambda a, b: a @ b), (xj, wj), lambda: xt @ wt),
            (jax.jit(lambda d, b: d @ b.T), (dyj, wj), lambda: dyt @ wt.T),
            (jax.jit(lambda a, d: a.T @ d), (xj, dyj), lambda: xt.T @ dyt)]
  flop = 2 * m * k * n
  out = []
  for fn, args, torch_fn in passes[:1] if forward_only else passes:
    fn(*args).block_until_ready()
    torch_fn()
    out.append((flop / best_of(lambda: fn(*args).block_until_ready(), repeats) / 1e9,
                flop / best_of(torch_fn, repeats) / 1e9))
  return out


# The paper models' dense layers at batch 8 (tokens x in x out).
MATMUL_SHAPES = {
    "PoolFormer M1 stage 1 fc1": (73728, 96, 384), "PoolFormer M1 stage 1 fc2": (73728, 384, 96),
    "PoolFormer M1 stage 2 fc1": (18432, 192, 768), "PoolFormer M1 stage 3 fc1": (4608, 384, 1536),
    "Swin-B M1 stage 1 fc1": (73728, 128, 512), "Swin-B M2 stage 1 fc1": (25088, 128, 512),
    "Swin-B M2 stage 3 fc1": (1568, 512, 2048), "ViT-B/32 M1 fc1": (1160, 768, 3072)}


def matmul_table():
  rows = []
  for label, (m, k, n) in MATMUL_SHAPES.items():
    r = matmul_pass_gflops(m, k, n)
    rows.append([label, f"{m} x {k} x {n}", " / ".join(f"{a:.0f}" for a, _ in r),
                 " / ".join(f"{b:.0f}" for _, b in r)])
    print(f"{label}: done", file=sys.stderr, flush=True)
  print(timing.markdown_table(["matmul (batch 8)", "M x K x N", "XLA fwd / dx / dW GFLOP/s",
                               "torch fwd / dx / dW GFLOP/s"], rows, right_from=2))


METHODS = {"M1": (384, 3), "M2": (224, 1)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="vit_b32,swin_b,poolformer_m36,poolformer_m48")
  ap.add_argument("--methods", default="M1,M2")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--matmuls", action="store_true",
                  help="only the matmul table: the paper models' dense layers, XLA vs torch")
  ap.add_argument("--one", help=argparse.SUPPRESS)  # MODEL,METHOD: one case, JSON on stdout
  args = ap.parse_args()
  if args.matmuls:
    matmul_table()
    return
  if args.one:
    name, method = args.one.split(",")
    size, chans = METHODS[method]
    print("RESULT " + json.dumps(bench(name, size, chans, args.batch, args.repeats)), flush=True)
    return
  print(f"CPU threads: torch {torch.get_num_threads()}, cores {len(os.sched_getaffinity(0))}; "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__}, "
        f"timm {timm.__version__}; batch {args.batch}, best of {args.repeats}; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  xla_mm, torch_mm = matmul_gflops()
  print(f"matmul 1568x512 @ 512x2048 float32: XLA {xla_mm:.0f} GFLOP/s, torch {torch_mm:.0f} "
        f"GFLOP/s", flush=True)
  rows = []
  for name in args.models.split(","):
    for method in args.methods.split(","):
      # Each case in its own process: memory is returned between cases (Swin-B's
      # 384 training step alone needs most of a 24 GiB machine).
      out = subprocess.run([sys.executable, __file__, "--one", f"{name},{method}",
                            "--batch", str(args.batch), "--repeats", str(args.repeats)],
                           capture_output=True, text=True)
      line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
      if line is None:
        why = "killed (out of memory?)" if out.returncode < 0 else \
            (out.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{name} {method}: failed, {why}", flush=True)
        continue
      r = json.loads(line[len("RESULT "):])
      rows.append((name, method, *r))
      print(f"{name} {method}: fwd flax {r[0]:.1f} img/s, timm {r[1]:.1f}; step flax "
            f"{r[2]:.2f} s, timm {r[3]:.2f} s; peak RSS flax {r[4]:.1f} GB, timm {r[5]:.1f} GB; "
            f"step {r[6] / 1e9:.0f} GFLOP", flush=True)
  # Useful GFLOP/s: XLA's flop count of the step over each framework's step time
  # (the same work for both), beside the matmul rates above.
  cells = [[name, m, f"{ff:.1f}", f"{tf:.1f}", f"{ff / tf:.2f}", f"{fs:.2f}", f"{ts:.2f}",
            f"{ts / fs:.2f}", f"{flop / 1e9:.0f}", f"{flop / fs / 1e9:.0f}",
            f"{flop / ts / 1e9:.0f}", f"{fm:.1f}", f"{tmem:.1f}"]
           for name, m, ff, tf, fs, ts, fm, tmem, flop in rows]
  print("\n" + timing.markdown_table(
      ["model", "input", "fwd img/s Flax", "fwd img/s timm", "ratio", "train step s Flax",
       "train step s timm", "ratio", "step GFLOP", "useful GFLOP/s Flax", "useful GFLOP/s timm",
       "peak RSS GB Flax", "peak RSS GB timm"], cells, right_from=2))
  print(f"\nmatmul rate on this CPU (float32, 1568x512 @ 512x2048): XLA {xla_mm:.0f} GFLOP/s, "
        f"torch {torch_mm:.0f} GFLOP/s")


if __name__ == "__main__":
  main()
