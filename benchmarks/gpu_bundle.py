r"""Wheels and a prebuilt dataset for benchmarks/gpu_check.py's training part on the GPU machine.

  python benchmarks/gpu_bundle.py .gpu_bundle [--videos 40] [--subjects 8]

The GPU machine (Python 3.12, no network) lacks what `mer_jax.train` needs beyond jax, flax,
optax, orbax, timm and torch; this fetches those wheels (cp312, manylinux x86-64, the versions
installed here) and builds a small synthetic M2 MFS dataset into one folder to carry there;
BENCHMARKS.md, "GPU check", has the device command.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
  sys.path.insert(0, str(ROOT))

BUNDLE_WHEELS = ("ml_collections", "tensorflow-datasets", "tensorflow-metadata",
                 "array-record", "dm-tree", "immutabledict", "toml", "protobuf")
BUNDLE_SDISTS = ("promise",)       # no wheel on PyPI: built here (pure Python)
BUNDLE_LIMIT_MIB = 40


def make_bundle(args) -> int:
  """Wheels (cp312, manylinux x86-64) of what part 2 needs and a prebuilt small
  M2 MFS dataset, into one folder to carry to the GPU machine."""
  from importlib import metadata
  out = pathlib.Path(args.out).absolute()
  wheels, tfds_dir = out / "wheels", out / "tfds"
  wheels.mkdir(parents=True, exist_ok=True)
  from mer_jax.data import build
  if not build.built_dirs(tfds_dir, "m2_mfs"):
    with tempfile.TemporaryDirectory() as tmp:
      cmd = [sys.executable, "-m", "mer_jax.data.build", "--configs", "m2_mfs",
             "--manual_dir", str(pathlib.Path(tmp) / "casme2"), "--data_dir", str(tfds_dir),
             "--synthetic", "--videos", str(args.videos),
             "--subjects", str(args.subjects)]
      print("building the dataset:", " ".join(cmd[1:]), flush=True)
      subprocess.run(cmd, check=True, cwd=ROOT, env=dict(
          os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                               os.environ.get("PYTHONPATH")]))))
    shutil.rmtree(tfds_dir / "downloads", ignore_errors=True)
    for lock in tfds_dir.rglob(".*.lock"):
      lock.unlink()
  pyver = args.python
  platforms = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
               "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
  pins = [f"{n}=={metadata.version(n)}" for n in BUNDLE_WHEELS]
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", pyver, "--implementation", "cp", "-d", str(wheels)]
  cmd += [a for p in platforms for a in ("--platform", p)] + pins
  print("fetching wheels:", " ".join(pins), flush=True)
  subprocess.run(cmd, check=True)
  sdists = [f"{n}=={metadata.version(n)}" for n in BUNDLE_SDISTS]
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", str(wheels)] + sdists, check=True)
  size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2 ** 20
  print(f"\n{out}: {size:.1f} MiB (limit {BUNDLE_LIMIT_MIB})")
  for p in sorted(wheels.iterdir()):
    print(f"  {p.name}  {p.stat().st_size / 2 ** 20:.1f} MiB")
  return 0 if size <= BUNDLE_LIMIT_MIB else 1


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("out", metavar="DIR", help="the bundle folder (made if absent)")
  ap.add_argument("--videos", type=int, default=40, help="synthetic videos of the dataset")
  ap.add_argument("--subjects", type=int, default=8, help="their subjects")
  ap.add_argument("--python", default="3.12", help="the GPU machine's Python of the wheels")
  return make_bundle(ap.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
