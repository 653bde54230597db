"""Test-session settings shared by every test and the commands tests start."""
import os
import shutil
import tempfile

# One XLA compilation cache for the whole session, inherited by the processes
# tests start (train, study, tune and launcher runs compile the same small
# models again and again). Compiled code is the same either way; only the
# compile time is saved. A cache the caller set is used as is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="mer_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
else:
  _CACHE = None


def pytest_unconfigure(config):
  if _CACHE:
    shutil.rmtree(_CACHE, ignore_errors=True)


# --- End-to-end data and the reference run, one each per test session ---------
# Training, evaluation, predict, tune and study tests share one small synthetic
# CASME II (its TFDS configs are built on first use into one data dir) and one
# uninterrupted training run, instead of writing and training their own.

import pytest

from e2e import run_cmd, study_args, train_cmd


@pytest.fixture(scope="session")
def casme2_small(tmp_path_factory):
  """(manual_dir, tfds_dir): 20 synthetic videos of 4 subjects; configs build on use."""
  from mer_jax.data import synthetic
  root = tmp_path_factory.mktemp("casme2_small")
  synthetic.write_synthetic_casme2(root / "casme2", videos=20, subjects=4, seed=5, workers=1)
  return root / "casme2", root / "tfds"


@pytest.fixture(scope="session")
def reference_run(casme2_small, tmp_path_factory):
  """(workdir, completed process) of one uninterrupted single-process run."""
  w = tmp_path_factory.mktemp("reference_run")
  out = run_cmd(train_cmd(w, casme2_small))
  assert out.returncode == 0, out.stderr[-4000:]
  return w, out


@pytest.fixture(scope="session")
def m3_af_cell(casme2_small, tmp_path_factory):
  """The run dir of a study cell poolformer_s12 M3 (optical flow) AF, trained as
  the study tests train theirs: the M3 predict test reads it, the method-pair
  study test copies it in."""
  from mer_jax import study
  w = tmp_path_factory.mktemp("m3_study")
  assert study.main(["--workdir", str(w), "--models", "poolformer_s12", "--methods", "m3",
                     "--phases", "af", "--seeds", "0"] + study_args(casme2_small)) == 0
  return w / "poolformer_s12_m3_af" / "seed0"


# --- The data tests' synthetic CASME II, one per test session -------------------
# test_synthetic and test_tfds_builder read one small synthetic CASME II rather
# than writing their own. Tests must not change it (copy it first).

import pytest  # noqa: E402 (this block stands alone)


@pytest.fixture(scope="session")
def synthetic_casme2(tmp_path_factory):
  """A synthetic CASME II: 16 videos of 4 subjects, seed 3, with the real data's
  quirks, both sheet formats (xlsx, csv) and one frame whose face is hidden."""
  from mer_jax.data import synthetic
  root = tmp_path_factory.mktemp("synthetic_casme2")
  synthetic.write_synthetic_casme2(root, videos=16, subjects=4, seed=3, workers=1,
                                   sheet_format="both", faceless_frames=1)
  return root
