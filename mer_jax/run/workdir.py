"""One trainer per run directory: WORKDIR/lock names the process that holds it.

Two trainers in one workdir (a job launched twice, a SLURM requeue while the
old job still runs) would interleave epochs and overwrite each other's
checkpoints. A run holds an exclusive `flock` on WORKDIR/lock for its whole
life and writes its host and PID there; the kernel drops the lock when the
process dies, so a lock left by a killed run is taken over (and said so).
On a file system whose locks do not reach other hosts, a lock written by
another host is also held while its heartbeat (the file's mtime, refreshed
every HEARTBEAT_S) is younger than STALE_S.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import threading
import time

from mer_jax.plumbing.errors import UserError

LOCK_FILE = "lock"
HEARTBEAT_S = 30.0
STALE_S = 3 * HEARTBEAT_S


class WorkdirBusy(UserError, FileExistsError):
  """Another live process holds the workdir."""


def _holder(text: str) -> str:
  try:
    h = json.loads(text)
    return f"{h['program']} (PID {h['pid']} on {h['host']}, since {h['since']})"
  except (ValueError, KeyError, TypeError):
    return "another process"


@contextlib.contextmanager
def hold(workdir: str | pathlib.Path, program: str = "mer_jax.train", log=print):
  """Holds WORKDIR/lock while the block runs; raises WorkdirBusy (naming the
  holder) if another live process holds it."""
  path = pathlib.Path(workdir) / LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(_busy_message(path, os.read(fd, 4096).decode(errors="replace"))) \
          from None
    previous = os.read(fd, 4096).decode(errors="replace").strip()
    if previous:
      _check_other_host(path, previous)
      log(f"{path.parent}: taking over the lock of {_holder(previous)}, which is no "
          "longer running.")
    me = {"program": program, "pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True)
    beat.start()
    try:
      yield path
    finally:
      stop.set()
      beat.join()
      os.ftruncate(fd, 0)   # an empty lock file is a free workdir
  finally:
    os.close(fd)            # releases the flock


def _busy_message(path: pathlib.Path, text: str) -> str:
  return (f"{path.parent} is in use by {_holder(text)}. Two runs in one workdir would "
          "overwrite each other's checkpoints: wait for it to finish, stop it, or use "
          "another --workdir.")


def _check_other_host(path: pathlib.Path, previous: str) -> None:
  try:
    host = json.loads(previous).get("host")
  except ValueError:
    return
  age = time.time() - path.stat().st_mtime
  if host and host != socket.gethostname() and age < STALE_S:
    raise WorkdirBusy(_busy_message(path, previous) + f" (Its heartbeat is {age:.0f} s old; "
                      f"a lock from another host is taken over after {STALE_S:.0f} s "
                      "without one.)")


def _heartbeat(path: pathlib.Path, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    with contextlib.suppress(OSError):
      os.utime(path)
