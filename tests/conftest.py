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
