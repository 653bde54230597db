r"""Start N processes of a mer_jax command on this machine, as N hosts would run it.

  python launch/local.py --processes 2 --devices_per_process 2 -- \
      python -m mer_jax.train --config configs/quickstart.py --workdir runs/q2

Each process gets the coordinator address and its rank (see mer_jax.plumbing.runtime),
and CPU processes `--devices_per_process` emulated devices, so the multi-host
code paths (global mesh, per-process data feeding, CPU collectives) run and
can be tested on one machine. Output lines are prefixed with the rank; the
launcher exits with the first non-zero exit code and stops the others. The
processes start under the CPU malloc settings of the speed tables
(`mer_jax.plumbing.runtime.MALLOC_TUNABLES` in GLIBC_TUNABLES), unless GLIBC_TUNABLES
already sets glibc.malloc.* of your own.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run from a checkout, installed or not
  sys.path.insert(0, _REPO)

from mer_jax.plumbing import runtime


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pump(rank: int, stream, out):
  for line in iter(stream.readline, b""):
    out.write(f"[{rank}] {line.decode(errors='replace')}")
    out.flush()


def launch(command: list[str], processes: int, devices_per_process: int = 1,
           port: int | None = None, env: dict | None = None) -> int:
  """Runs `command` in `processes` local processes; returns the combined exit code."""
  port = port or _free_port()
  procs, pumps = [], []
  for rank in range(processes):
    penv = runtime.with_malloc_tunables(os.environ if env is None else env)
    penv.update({
        runtime.ENV_COORDINATOR: f"127.0.0.1:{port}",
        runtime.ENV_NUM_PROCESSES: str(processes),
        runtime.ENV_PROCESS_ID: str(rank),
        "JAX_PLATFORMS": penv.get("JAX_PLATFORMS", "cpu"),
    })
    # The checkout's package is importable in the children even when not pip-installed.
    penv["PYTHONPATH"] = os.pathsep.join(
        p for p in (_REPO, penv.get("PYTHONPATH", "")) if p)
    flags = penv.get("XLA_FLAGS", "")
    if devices_per_process > 1 and "xla_force_host_platform_device_count" not in flags:
      penv["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count="
                           f"{devices_per_process}").strip()
    p = subprocess.Popen(command, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(rank, p.stdout, sys.stdout), daemon=True)
    t.start()
    pumps.append(t)
  code = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed:
        code = failed[0]
        for p in procs:
          if p.poll() is None:
            p.terminate()
        break
      time.sleep(0.2)
  except KeyboardInterrupt:
    for p in procs:
      p.terminate()
    raise
  for p in procs:
    p.wait()
  for t in pumps:
    t.join(timeout=5)
  return code or next((p.returncode for p in procs if p.returncode), 0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2, help="number of processes (hosts)")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="emulated CPU devices per process")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --, e.g. -- python -m mer_jax.train --config ...")
  return launch(command, args.processes, args.devices_per_process, args.port)


if __name__ == "__main__":
  sys.exit(main())
