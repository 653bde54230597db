r"""Build time of the six CASME II configs on a CASME II-sized synthetic set.

  python benchmarks/bench_data.py [--root data/bench] [--videos 255] [--manual DIR]
  python benchmarks/bench_data.py --manual DIR --configs m1_mfs,m1_kfs,m1_af --no_speedups

Measures, in one run on this machine:
  1. all six configs with every core and the detection cache (the default),
     in the order m2_mfs first (it detects every frame the others need);
  2. the detection cache's speed-up: m2_kfs rebuilt with a cold cache vs warm;
  3. the cores' speed-up: m2_kfs with a cold cache on 1 process vs all cores.
Prints a markdown table for BENCHMARKS.md. Writes under --root (gitignored).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
  sys.path.insert(0, str(ROOT))

from mer_jax.data import build, dataset_configs, synthetic
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method


def cpu_seconds() -> float:
  """User + system CPU of this process and its finished children (the build's workers)."""
  return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed_build(config, manual, data_dir, **options):
  shutil.rmtree(pathlib.Path(data_dir) / "casme2" / config, ignore_errors=True)
  start, cpu = time.perf_counter(), cpu_seconds()
  d = build.ensure_built(config, str(manual), str(data_dir), log=lambda *a: None, **options)
  seconds = time.perf_counter() - start
  q = build.read_quality(d)
  q["cpu_seconds"] = cpu_seconds() - cpu
  return seconds, q


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--root", default="data/bench")
  ap.add_argument("--videos", type=int, default=255)
  ap.add_argument("--subjects", type=int, default=26)
  ap.add_argument("--manual", default=None,
                  help="an existing (synthetic) CASME II copy to build from, instead of "
                       "writing one under --root")
  ap.add_argument("--configs", default="",
                  help="comma list of configs to time (default: the six of the paper); "
                       "m2_mfs is built first, untimed, where it is not listed, so that every "
                       "listed config reads its detections from the cache")
  ap.add_argument("--no_speedups", dest="speedups", action="store_false",
                  help="skip part 2 and 3 (m2_kfs rebuilt with a cold cache, 1 and all cores)")
  args = ap.parse_args()
  root = pathlib.Path(args.root)
  manual = pathlib.Path(args.manual) if args.manual else root / f"synthetic_{args.videos}"
  if not (manual / "CASME2_RAW_selected").exists():
    t, cpu = time.perf_counter(), cpu_seconds()
    synthetic.write_synthetic_casme2(manual, videos=args.videos, subjects=args.subjects)
    print(f"synthetic set written in {time.perf_counter() - t:.0f} s "
          f"({cpu_seconds() - cpu:.0f} CPU s)")
  cores = len(os.sched_getaffinity(0))
  cache = root / "detections"
  shutil.rmtree(cache, ignore_errors=True)
  rows, total = [], 0.0
  # M2's MFS first: it detects every frame that the other configs need.
  order = [dataset_configs.config_name(m, p) for m in (Method.M2, Method.M1)
           for p in (Phase.MFS, Phase.KFS, Phase.AF)]
  if args.configs:
    wanted = dataset_configs.parse_configs(args.configs)
    if order[0] not in wanted:
      timed_build(order[0], manual, root / "tfds", detection_cache=str(cache))
    order = [c for c in order if c in wanted] + [c for c in wanted if c not in order]
  for config in order:
    s, q = timed_build(config, manual, root / "tfds", detection_cache=str(cache))
    total += s
    rows.append((config, q["frames"], s, q["detected"], q["cached"], q["face_centring_rate"],
                 q["cpu_seconds"]))
    print(f"{config}: {q['frames']} images in {s:.1f} s ({q['frames'] / s:.1f} images/s, "
          f"{q['cpu_seconds']:.1f} CPU s)", flush=True)
  print(f"\n## Build of all six configs, {args.videos} videos, {cores} cores, detection cache\n")
  print("| config | images | seconds | images/s | CPU s | detections run | from cache "
        "| face-centring |")
  print("|---|---|---|---|---|---|---|---|")
  for c, n, s, det, cached, fc, cpu in rows:
    print(f"| {c} | {n} | {s:.1f} | {n / s:.1f} | {cpu:.0f} | {det} | {cached} | {fc:.3f} |")
  print(f"| **{'all six' if len(rows) == 6 else 'all'}** | {sum(r[1] for r in rows)} | "
        f"**{total:.0f}** | {sum(r[1] for r in rows) / total:.1f} | "
        f"{sum(r[6] for r in rows):.0f} | | | |")
  if not args.speedups:
    (root / "bench_data.json").write_text(json.dumps({"rows": rows, "total": total,
                                                      "cores": cores}, indent=1))
    return

  kfs = dataset_configs.config_name(Method.M2, Phase.KFS)
  warm, _ = timed_build(kfs, manual, root / "tfds", detection_cache=str(cache))
  cold_all, _ = timed_build(kfs, manual, root / "tfds", detection_cache="")
  cold_one, _ = timed_build(kfs, manual, root / "tfds", detection_cache="", workers=1)
  print(f"\n## Speed-ups ({kfs})\n")
  print("| setting | seconds | ratio |")
  print("|---|---|---|")
  print(f"| 1 process, no cache | {cold_one:.1f} | 1.00 |")
  print(f"| {cores} processes, no cache | {cold_all:.1f} | {cold_one / cold_all:.2f} |")
  print(f"| {cores} processes, warm detection cache | {warm:.1f} | {cold_one / warm:.2f} |")
  out = root / "bench_data.json"
  out.write_text(json.dumps({"rows": rows, "total": total, "warm": warm, "cold_all": cold_all,
                             "cold_one": cold_one, "cores": cores}, indent=1))


if __name__ == "__main__":
  main()
