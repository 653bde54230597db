r"""The issue-23 LOSO study, a reference commit's code against this checkout, back to back.

  python benchmarks/bench_loso.py [--folds 0,1,2,3] [--ref df395aa] [--data DIR] [--keep]

Makes a throwaway `git worktree` of --ref in a temporary folder, renders the synthetic
CASME II once and builds its M2 AF TFDS config with each side's own code (the data code
differs between commits, so each side gets the build of its own fingerprint, from the same
source frames), then runs the same study command (BENCHMARKS "Study scale") with the
reference's code and with this checkout's, each in a process of its own, one after the other:

  python -m mer_jax.study --models poolformer_s12 --methods m2 --phases af --protocol loso
      --folds F --workdir W --set init.weights= --set model.img_size=64 --set num_epochs=2
      --set batch_size=16 --set data.synthetic=true --set data.manual_dir=D/casme
      --set data.data_dir=D/tfds

A fold's wall time is the time between the study finishing the fold before it and finishing
this one (the mtimes of consecutive folds' metrics.json, which every version writes last):
everything the study spends on a cell, set-up and report included. The first fold (it
compiles, and the study's start) is shown but left out of the mean. Prints a markdown table:
per compared fold both walls, the ratio, and whether its predictions_test.csv (and
predictions_validation.csv) are byte-identical, else identical on the columns both have; the
load average before and after each side and each side's process CPU seconds. Removes the worktree at the end (and the temporary
folder unless --keep).
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CELL = pathlib.Path("poolformer_s12_m2_af") / "seed0"


def study_command(folds: str, workdir: pathlib.Path, data: pathlib.Path) -> list[str]:
  """The issue's study command, on --folds."""
  sets = ["init.weights=", "model.img_size=64", "num_epochs=2", "batch_size=16",
          "data.synthetic=true", f"data.manual_dir={data / 'casme'}",
          f"data.data_dir={data / 'tfds'}"]
  return ([sys.executable, "-m", "mer_jax.study", "--models", "poolformer_s12", "--methods",
           "m2", "--phases", "af", "--protocol", "loso", "--folds", folds, "--workdir",
           str(workdir)] + [a for s in sets for a in ("--set", s)])


def build_command(data: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "mer_jax.data.build", "--configs", "m2_af", "--synthetic",
          "--manual_dir", str(data / "casme"), "--data_dir", str(data / "tfds")]


def run(cmd: list[str], code: pathlib.Path, log: pathlib.Path) -> dict:
  """Runs `cmd` with `code` first on the import path; its wall, CPU and load around it."""
  env = dict(os.environ, PYTHONPATH=str(code))
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  load0, t0 = os.getloadavg(), time.time()
  with open(log, "w") as f:
    rc = subprocess.run(cmd, cwd=code, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if rc:
    sys.exit(f"error: {' '.join(cmd[1:4])} with {code} exited {rc}; see {log}")
  return {"start": t0, "wall": time.time() - t0, "load": (load0, os.getloadavg()),
          "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def fold_walls(workdir: pathlib.Path, folds: list[int], start: float) -> dict[int, float]:
  """Each fold's wall: its metrics.json mtime minus the previous fold's (the first: minus
  the process's start)."""
  out, prev = {}, start
  for k in folds:
    end = (workdir / CELL / f"fold{k:02d}" / "metrics.json").stat().st_mtime
    out[k], prev = end - prev, end
  return out


def compare(a: pathlib.Path, b: pathlib.Path) -> str:
  """"identical" (byte for byte), else whether the rows agree on the columns both CSVs
  have (a later version may add one: issue 21 added `dataset`)."""
  if not (a.exists() and b.exists()):
    return "MISSING"
  if a.read_bytes() == b.read_bytes():
    return "identical"
  ra, rb = (list(csv.DictReader(open(f))) for f in (a, b))
  shared = [k for k in ra[0] if k in rb[0]] if ra and rb else []
  same = sum(all(x[k] == y[k] for k in shared) for x, y in zip(ra, rb))
  added = ", ".join(k for k in (rb[0] if rb else {}) if k not in shared)
  if len(ra) == len(rb) == same:
    return f"identical on {','.join(shared)}" + (f" (+{added})" if added else "")
  return f"DIFFER ({max(len(ra), len(rb)) - same} of {max(len(ra), len(rb))} rows)"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ref", default="df395aa", help="the reference commit (default: before "
                 "issue 23's work)")
  p.add_argument("--folds", default="0,1,2,3", help="LOSO folds, in order (the first is "
                 "not compared)")
  p.add_argument("--data", default="", help="data folder (casme/, tfds/) to use and keep; "
                 "default: a temporary one")
  p.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, logs)")
  args = p.parse_args(argv)
  folds = [int(f) for f in args.folds.split(",")]
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_loso_"))
  ref = tmp / "ref"
  data = pathlib.Path(args.data).absolute() if args.data else tmp / "data"
  subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(ref), args.ref],
                 check=True, capture_output=True)
  sides = {"reference": ref, "current": REPO}
  try:
    for name, code in sides.items():   # each side's build (the same source frames)
      print(f"building the data with the {name} code ...", flush=True)
      run(build_command(data), code, tmp / f"build_{name}.log")
    res = {}
    for name, code in sides.items():
      print(f"the study with the {name} code ({code}) ...", flush=True)
      r = run(study_command(args.folds, tmp / name, data), code, tmp / f"study_{name}.log")
      r["folds"] = fold_walls(tmp / name, folds, r["start"])
      res[name] = r
      print(f"  {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, load "
            f"{r['load'][0][0]:.1f} -> {r['load'][1][0]:.1f}", flush=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    a, b = res["reference"], res["current"]
    print(f"\n| fold | {args.ref} s | {head} s | ratio | test predictions | validation "
          "predictions |\n|---:|---:|---:|---:|---|---|")
    for k in folds:
      fa, fb = a["folds"][k], b["folds"][k]
      d = [tmp / s / CELL / f"fold{k:02d}" for s in ("reference", "current")]
      same = [compare(d[0] / f, d[1] / f) for f in ("predictions_test.csv", "predictions_validation.csv")]
      first = " (first, not compared)" if k == folds[0] else ""
      print(f"| {k}{first} | {fa:.1f} | {fb:.1f} | {fa / fb:.2f}x | {same[0]} | {same[1]} |")
    rest = folds[1:]
    if rest:
      ma = statistics.mean(a["folds"][k] for k in rest)
      mb = statistics.mean(b["folds"][k] for k in rest)
      print(f"| mean of folds {','.join(map(str, rest))} | {ma:.1f} | {mb:.1f} | "
            f"**{ma / mb:.2f}x** | | |")
    for name, r in res.items():
      print(f"\n{name}: process {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, load average "
            f"{r['load'][0][0]:.2f} before, {r['load'][1][0]:.2f} after")
  finally:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(ref)],
                   capture_output=True)
    if args.keep:
      print(f"\nkept: {tmp}")
    else:
      shutil.rmtree(tmp, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
