"""The measuring shared by the speed harnesses (`mer_jax.bench`, benchmarks/bench_models.py,
benchmarks/gpu_check.py): call timing with warm-up, peak resident memory, XLA's flop count of a
compiled function and the markdown table they print.

Imports nothing heavy (no JAX): gpu_check's parent process and the GPU machine's plain
checkout use it too.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence


def durations(fn: Callable[[], object], repeats: int, *, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
  """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed ones (compilation,
  caches). `fn` must wait for its own result (e.g. `block_until_ready`)."""
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(repeats):
    t = clock()
    fn()
    out.append(clock() - t)
  return out


def summary(times: Sequence[float]) -> dict[str, float]:
  """The statistics the harnesses report of `durations`: best (the least disturbed call),
  median and 90th percentile (numpy's linear interpolation between order statistics)."""
  import numpy as np
  return {"best": float(min(times)), "median": float(np.median(times)),
          "p90": float(np.percentile(times, 90))}


def pipelined_seconds(fn: Callable[[], object], block: Callable[[object], object], *,
                      warmup: int, iters: int, case_seconds: float,
                      clock: Callable[[], float] = time.perf_counter) -> float:
  """Seconds per call: `warmup` calls, one timed call to size the run, then enough calls
  (2..iters) to last about `case_seconds`, timed together with only the last one waited for
  by `block` (the device pipelines them, as in training)."""
  for _ in range(max(1, warmup)):
    block(fn())
  t = clock()
  block(fn())
  one = clock() - t
  n = max(2, min(iters, math.ceil(case_seconds / max(one, 1e-6))))
  t = clock()
  for _ in range(n - 1):
    fn()
  block(fn())
  return (clock() - t) / n


def peak_rss_gb() -> float:
  """Peak resident memory of this process since the last `reset_peak_rss`, GB (Linux /proc)."""
  with open("/proc/self/status") as f:
    status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
  return int(status["VmHWM"].split()[0]) / 1e6


def reset_peak_rss() -> None:
  """Hand freed heap back to the OS, then restart the peak-RSS count (Linux; a no-op elsewhere)."""
  import ctypes
  import gc
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def xla_flops(compiled) -> float | None:
  """XLA's count of the floating-point operations of one call of a compiled function
  (`jax.jit(f).lower(...).compile()`), or None where the backend gives none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - a backend without cost analysis
    return None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
    cost = cost[0] if cost else {}
  f = (cost or {}).get("flops")
  return float(f) if f else None


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]],
                   right_from: int | None = None) -> str:
  """A markdown table of already formatted cells; columns from index `right_from` on are
  right-aligned (numbers), all left-aligned where None."""
  right = len(columns) if right_from is None else right_from
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---" if i < right else "---:" for i in range(len(columns))) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)
