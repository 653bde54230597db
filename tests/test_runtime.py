"""Multi-process plumbing: the local launcher, global mesh, per-process feeding; checkpoints."""
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mer_jax.run import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]

_PROG = textwrap.dedent("""
    import jax, numpy as np, jax.numpy as jnp
    from mer_jax.plumbing import runtime
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


_PRINT_TUNABLES = "import os; print('TUNABLES', os.environ.get('GLIBC_TUNABLES'))"


def _env_without_tunables():
  return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}


def test_local_launcher_starts_its_processes_under_the_malloc_settings():
  from mer_jax.plumbing import runtime
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", "2", "--",
       sys.executable, "-c", _PRINT_TUNABLES],
      env=_env_without_tunables(), capture_output=True, text=True, timeout=60, check=True)
  lines = sorted(l for l in out.stdout.splitlines() if "TUNABLES" in l)
  assert lines == [f"[{r}] TUNABLES {runtime.MALLOC_TUNABLES}" for r in (0, 1)]


def test_with_malloc_tunables_keeps_the_users_tunables():
  from mer_jax.plumbing import runtime
  env = runtime.with_malloc_tunables({"PATH": "/bin"})
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": runtime.MALLOC_TUNABLES}
  # Other tunables are kept beside them; malloc settings of the user's own win.
  env = runtime.with_malloc_tunables({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
  assert env["GLIBC_TUNABLES"] == "glibc.cpu.hwcaps=-AVX512F:" + runtime.MALLOC_TUNABLES
  mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  assert runtime.with_malloc_tunables(mine) == mine


def test_malloc_env_file_gives_a_command_the_runtime_settings():
  # README's way to start a command under them: env $(cat launch/malloc.env) ...
  from mer_jax.plumbing import runtime
  out = subprocess.run(["sh", "-c", f'env $(cat launch/malloc.env) "{sys.executable}" -c '
                        f'"{_PRINT_TUNABLES}"'], cwd=ROOT, env=_env_without_tunables(),
                       capture_output=True, text=True, timeout=60, check=True)
  assert out.stdout.strip() == f"TUNABLES {runtime.MALLOC_TUNABLES}"
