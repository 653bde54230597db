"""Helpers of the end-to-end tests: the reference run's command and environment."""
import os
import pathlib
import subprocess
import sys

from tiny import E2E_MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Tests check values, not speed: XLA compiles without LLVM's optimisation passes, which
# halves the compile time of a small model (most of an end-to-end test's time; BENCHMARKS
# "Tests"). conftest sets it for the test processes; benchmarks/gpu_check.py --tiny does
# the same. README's quickstart test runs without it, as users do.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def subprocess_env(devices: int = 1, fast_compile: bool = True) -> dict:
  """The environment of a command a test starts: CPU, N devices, this checkout."""
  e = dict(os.environ, JAX_PLATFORMS="cpu",
           PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  if fast_compile:
    e["XLA_FLAGS"] += " " + FAST_COMPILE
  return e


def train_overrides(data, **extra) -> list[str]:
  """`--config.X=Y` flags of the reference run (the tiny E2E_MODEL, M2 KFS, 32 px,
  3 epochs, checkpoints every 2 steps) over configs/quickstart.py."""
  manual, tfds_dir = data
  opts = {"data.manual_dir": manual, "data.data_dir": tfds_dir, "data.phase": "kfs",
          "data.synthetic": False, "model.name": E2E_MODEL, "model.img_size": 32,
          "batch_size": 8, "eval_batch_size": 16, "num_epochs": 3, "patience": 10,
          "log_every_steps": 2, "checkpoint_every_steps": 2, "bootstrap_resamples": 100, "optim.warmup_epochs": 0,
          "aug.enabled": True, "seed": 1}
  opts.update(extra)
  return [f"--config.{k}={v}" for k, v in opts.items()]


def train_cmd(workdir, data, **extra) -> list[str]:
  """`python -m mer_jax.train` of the reference run, through tests/with_tiny.py (which
  registers E2E_MODEL in the process)."""
  return [sys.executable, str(ROOT / "tests" / "with_tiny.py"), "mer_jax.train",
          "--config", str(ROOT / "configs/quickstart.py"),
          "--workdir", str(workdir)] + train_overrides(data, **extra)


def run_cmd(cmd, devices: int = 1, timeout: int = 600):
  return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(devices),
                        timeout=timeout, cwd=ROOT)


def study_args(data) -> list[str]:
  """`mer_jax.study` flags of the study tests' cells (`--models` E2E_MODEL) at 32 px,
  2 epochs, on the session's small synthetic CASME II."""
  manual, tfds_dir = data
  return ["--set", f"data.manual_dir={manual}", "--set", f"data.data_dir={tfds_dir}",
          "--set", "init.weights=", "--set", "model.img_size=32", "--set", "num_epochs=2",
          "--set", "batch_size=8", "--set", "eval_batch_size=16", "--set", "patience=5",
          "--set", "model.drop_path_rate=0.0", "--set", "optim.lr=0.001",
          "--set", "bootstrap_resamples=100", "--bootstrap", "200"]
