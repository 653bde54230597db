"""Test-session settings shared by every test and the commands tests start."""
import os
import shutil
import tempfile

# XLA without LLVM's expensive passes in the test processes (e2e.FAST_COMPILE: why).
from e2e import FAST_COMPILE  # noqa: E402

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()

# One XLA compilation cache for the whole test run, inherited by the xdist
# workers and by the processes tests start (train, study, tune and launcher
# runs compile the same small models again and again). Compiled code is the
# same either way; only the compile time is saved. A cache the caller set is
# used as is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="mer_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
else:
  _CACHE = None


# The tiny test architectures (tests/tiny.py) in every test process: the parity
# tests' references and the model the end-to-end tests train.
import tiny  # noqa: E402

tiny.register()


def pytest_unconfigure(config):
  if _CACHE:
    shutil.rmtree(_CACHE, ignore_errors=True)


# --- Order: the long modules first -------------------------------------------
# pyproject's addopts run two pytest-xdist workers, each taking whole modules
# (--dist loadscope) in collection order; the long end-to-end and model-matrix
# modules go first so that the workers finish together.
LONG_MODULES = ("test_train.py", "test_learning.py", "test_models.py", "test_study.py",
                "test_predict_bench_tune.py", "test_gpu_check.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable


# --- End-to-end data and the reference run, one each per test run -------------
# Training, evaluation, predict, tune and study tests share one small synthetic
# CASME II (its TFDS configs are built on first use into one data dir; builds
# lock) and one uninterrupted training run, instead of writing and training
# their own. Under pytest-xdist (pyproject's addopts) the workers share them:
# the first worker to ask makes one under a file lock, the others wait for it.

import json
import pathlib
import subprocess

import pytest

from e2e import run_cmd, study_args, train_cmd
from tiny import E2E_MODEL


def made_once(tmp_path_factory, name: str, make) -> pathlib.Path:
  """A directory `name` that `make(dir)` fills once per test run, shared by the
  xdist workers of the run (a failed `make` leaves nothing: the next asker retries)."""
  from mer_jax.data.build import exclusive
  root = tmp_path_factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    root = root.parent   # the run's, above each worker's
  d, done = root / name, root / f"{name}.done"
  with exclusive(root / f"{name}.lock"):
    if not done.exists():
      shutil.rmtree(d, ignore_errors=True)
      d.mkdir()
      make(d)
      done.touch()
  return d


@pytest.fixture(scope="session")
def casme2_small(tmp_path_factory):
  """(manual_dir, tfds_dir): 20 synthetic videos of 4 subjects; configs build on use."""
  from mer_jax.data import synthetic
  root = made_once(tmp_path_factory, "casme2_small", lambda d: synthetic.write_synthetic_casme2(
      d / "casme2", videos=20, subjects=4, seed=5, workers=1))
  return root / "casme2", root / "tfds"


@pytest.fixture(scope="session")
def reference_run(casme2_small, tmp_path_factory):
  """(workdir, completed process) of one uninterrupted single-process run."""
  def make(d):
    out = run_cmd(train_cmd(d / "run", casme2_small))
    assert out.returncode == 0, out.stderr[-4000:]
    (d / "process.json").write_text(json.dumps({"args": out.args, "stdout": out.stdout,
                                                "stderr": out.stderr}))
  d = made_once(tmp_path_factory, "reference_run", make)
  out = json.loads((d / "process.json").read_text())
  return d / "run", subprocess.CompletedProcess(out["args"], 0, out["stdout"], out["stderr"])


@pytest.fixture(scope="session")
def m3_af_cell(casme2_small, tmp_path_factory):
  """The run dir of a study cell E2E_MODEL M3 (optical flow) AF, trained as
  the study tests train theirs: the M3 predict test reads it, the method-pair
  study test copies it in."""
  from mer_jax import study

  def make(w):
    assert study.main(["--workdir", str(w), "--models", E2E_MODEL, "--methods", "m3",
                       "--phases", "af", "--seeds", "0"] + study_args(casme2_small)) == 0
  w = made_once(tmp_path_factory, "m3_study", make)
  return w / f"{E2E_MODEL}_m3_af" / "seed0"


# --- The data tests' synthetic CASME II, one per test run -----------------------
# test_synthetic and test_tfds_builder read one small synthetic CASME II rather
# than writing their own. Tests must not change it (copy it first).


@pytest.fixture(scope="session")
def synthetic_casme2(tmp_path_factory):
  """A synthetic CASME II: 16 videos of 4 subjects, seed 3, with the real data's
  quirks, both sheet formats (xlsx, csv) and one frame whose face is hidden."""
  from mer_jax.data import synthetic
  return made_once(tmp_path_factory, "synthetic_casme2", lambda d: synthetic.write_synthetic_casme2(
      d, videos=16, subjects=4, seed=3, workers=1, sheet_format="both", faceless_frames=1))
