"""Multi-process plumbing: the local launcher, global mesh, per-process feeding; checkpoints."""
import os
import pathlib
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mer_jax import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]

_PROG = textwrap.dedent("""
    import jax, numpy as np, jax.numpy as jnp
    from mer_jax import runtime
    runtime.maybe_initialize_distributed()
    mesh = runtime.make_mesh()
    p = jax.process_index()
    # Each process feeds rows [4p, 4p+4) of an 8-row global batch.
    local = {"x": np.arange(4, dtype=np.float32).reshape(4, 1) + 4 * p}
    g = runtime.to_global(local, mesh)
    total = jax.jit(lambda b: jnp.sum(b["x"] * jnp.arange(1, 9)[:, None]),
                    out_shardings=runtime.replicated(mesh))(g)
    print("RESULT", jax.process_count(), jax.device_count(), g["x"].shape, float(total))
""")


def test_local_launcher_two_processes_form_one_mesh(tmp_path):
  prog = tmp_path / "prog.py"
  prog.write_text(_PROG)
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", "2",
       "--devices_per_process", "2", "--", sys.executable, str(prog)],
      capture_output=True, text=True, timeout=180)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  results = [l for l in out.stdout.splitlines() if "RESULT" in l]
  assert len(results) == 2
  # Global row order is process 0's rows then process 1's: sum_i i * (i + 1) for i < 8.
  expected = float(sum(i * (i + 1) for i in range(8)))
  for line in results:
    assert line.split("RESULT ")[1] == f"2 4 (8, 1) {expected}"


def test_local_launcher_propagates_failure(tmp_path):
  prog = tmp_path / "fail.py"
  prog.write_text("import sys, os; sys.exit(3 if os.environ['MER_JAX_PROCESS_ID'] == '1' else 0)")
  code = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", "2", "--",
       sys.executable, str(prog)], capture_output=True, timeout=60).returncode
  assert code == 3


def _state(value):
  params = {"w": jnp.full((3, 4), value), "b": jnp.zeros(4)}
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  _, opt_state = tx.update(params, opt_state, params)  # non-trivial moments
  return {"step": jnp.asarray(int(value), jnp.int32), "params": params, "opt_state": opt_state}


def test_checkpoints_latest_and_best_roundtrip(tmp_path):
  ckpt = checkpointing.Checkpoints(tmp_path, keep=2)
  assert ckpt.restore_latest(_state(0.0)) is None
  ckpt.save(1, _state(1.0), {"epoch": 1, "best": 0.5}, best=True)
  ckpt.save(2, _state(2.0), {"epoch": 2, "best": 0.5})
  ckpt.save(3, _state(3.0), {"epoch": 3, "best": 0.5})
  ckpt.wait()
  ckpt.close()

  again = checkpointing.Checkpoints(tmp_path, keep=2)
  r = again.restore_latest(_state(0.0))
  state, meta = r.state, r.meta
  assert meta == {"epoch": 3, "best": 0.5} and (r.kind, r.step, r.corrupt) == ("latest", 3, [])
  expected = _state(3.0)
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  best = again.restore_best(_state(0.0))
  assert best.meta["epoch"] == 1 and int(best.state["step"]) == 1 and best.kind == "best"
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()
                if p.name.isdigit()) == ["2", "3"]
  again.close()


def test_malloc_tuned_env_rules():
  from mer_jax import runtime
  env = runtime.malloc_tuned_env({"PATH": "/bin"}, system="Linux", libc="glibc")
  assert env["GLIBC_TUNABLES"] == runtime.MALLOC_TUNABLES
  assert env[runtime.ENV_MALLOC] == "applied" and env["PATH"] == "/bin"
  # Once only, off on request, only glibc on Linux, the user's malloc choice wins.
  assert runtime.malloc_tuned_env(env, system="Linux", libc="glibc") is None
  assert runtime.malloc_tuned_env({runtime.ENV_MALLOC: "0"}, system="Linux", libc="glibc") is None
  assert runtime.malloc_tuned_env({}, system="Darwin", libc="") is None
  assert runtime.malloc_tuned_env({}, system="Linux", libc="musl") is None
  assert runtime.malloc_tuned_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                  system="Linux", libc="glibc") is None
  # Other tunables are kept.
  env = runtime.malloc_tuned_env({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"},
                                 system="Linux", libc="glibc")
  assert env["GLIBC_TUNABLES"] == "glibc.cpu.hwcaps=-AVX512F:" + runtime.MALLOC_TUNABLES


def test_reexec_restarts_the_command_with_the_tunables():
  from mer_jax import runtime
  prog = ("import os, sys; from mer_jax import runtime; runtime.reexec_with_tuned_malloc(); "
          "print('ARGS', sys.argv[1:], os.environ.get('GLIBC_TUNABLES'), "
          "os.environ.get('MER_JAX_MALLOC_TUNING'))")
  env = {k: v for k, v in __import__("os").environ.items()
         if k not in ("GLIBC_TUNABLES", runtime.ENV_MALLOC)}
  out = subprocess.run([sys.executable, "-c", prog, "a", "--b=1"], capture_output=True,
                       text=True, env=env, check=True).stdout
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    assert out.strip() == f"ARGS ['a', '--b=1'] {runtime.MALLOC_TUNABLES} applied"
  else:
    assert out.strip() == "ARGS ['a', '--b=1'] None None"
  env[runtime.ENV_MALLOC] = "0"
  out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env,
                       check=True).stdout
  assert out.strip() == "ARGS [] None 0"


_STEP_ALLOCATIONS = """
import numpy as np
def hwm():
  s = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
  return int(s["VmHWM"].split()[0]) * 1024
N = 256 << 20
base = hwm()
temps = np.ones(N, np.uint8)         # one step's temporaries (XLA: one block)
kept = np.ones(1 << 20, np.uint8)    # allocated during the step, outlives it
del temps                            # the step ends
small = np.ones(64 << 10, np.uint8)  # small allocations before the next step
temps = np.ones(N, np.uint8)         # the next step's temporaries
print((hwm() - base) / N)
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"),
                    reason="glibc malloc tunables exist only with glibc on Linux")
def test_malloc_settings_do_not_grow_memory_step_after_step():
  # A step's block is mapped fresh and unmapped when freed, so a small
  # allocation between steps cannot strand it and the next step's block does
  # not grow the heap (settings that served it from the heap did: Swin-B 384
  # ran out of 24 GiB on its second step).
  from mer_jax import runtime
  env = dict(os.environ, GLIBC_TUNABLES=runtime.MALLOC_TUNABLES)
  out = subprocess.run([sys.executable, "-c", _STEP_ALLOCATIONS], env=env, capture_output=True,
                       text=True, check=True)
  assert float(out.stdout.split()[-1]) < 1.2
