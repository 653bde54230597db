"""Devices, processes and shardings: what makes one command run on 1 CPU, N GPUs or many hosts."""
from __future__ import annotations

import os

from absl import logging
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Set by launch/local.py for each of its processes.
ENV_COORDINATOR = "MER_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "MER_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MER_JAX_PROCESS_ID"


# glibc malloc settings for XLA on CPU. XLA on CPU allocates each step's
# temporaries as one block (gigabytes for the paper models). By default glibc
# maps such a block with 4 KiB pages and every step faults it in again.
# hugetlb=1 backs malloc's memory with transparent huge pages (the kernel's THP
# set to "madvise" or "always"), so the block faults in 2 MiB at a time; blocks
# of 32 MiB and more are still mapped fresh and unmapped when freed, which keeps
# the peak memory that of a single step; smaller blocks stay in one heap that is
# never trimmed. (Serving the big block from that heap as well, mmap_max=0, is
# not safe: once the freed block is split by small allocations, the next step's
# block no longer fits and the heap grows by a whole step.) BENCHMARKS.md
# ("Models") has the measurements.
#
# glibc reads GLIBC_TUNABLES only when a process starts, so no program can
# apply them to itself: they belong in the environment of the command.
# launch/malloc.env holds them as GLIBC_TUNABLES=... (a test keeps it equal to
# this), for `env $(cat launch/malloc.env) python -m mer_jax.train ...` and the
# SLURM scripts; launch/local.py sets them in the processes it starts.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
                   "glibc.malloc.trim_threshold=68719476736:glibc.malloc.arena_max=1")


def with_malloc_tunables(environ) -> dict:
  """A copy of `environ` for a child process, its GLIBC_TUNABLES extended by
  MALLOC_TUNABLES; a GLIBC_TUNABLES that already sets glibc.malloc.* is the
  user's choice and stays as it is. Other systems ignore the variable."""
  env = dict(environ)
  current = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc." not in current:
    env["GLIBC_TUNABLES"] = f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES
  return env


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, "1"))
  except ValueError:
    return 1


def maybe_initialize_distributed() -> bool:
  """Joins the other processes of a multi-process launch; must run before any JAX work.

  Under the project's local launcher the address and ranks come from its
  variables; under SLURM (or Open MPI) with more than one task JAX reads the
  cluster's own variables. A single process does nothing.
  """
  if os.environ.get(ENV_COORDINATOR):
    # CPU processes talk through gloo collectives (the GPU path uses NCCL itself).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[ENV_COORDINATOR],
        num_processes=int(os.environ[ENV_NUM_PROCESSES]),
        process_id=int(os.environ[ENV_PROCESS_ID]))
  elif _int_env("SLURM_NTASKS") > 1 or _int_env("OMPI_COMM_WORLD_SIZE") > 1:
    jax.distributed.initialize()
  else:
    return False
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, the batch axis `data`."""
  # Auto axis: XLA propagates the batch sharding through the step (as GSPMD
  # does); parameters stay replicated because they are put there.
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def to_global(local_batch: dict, mesh: Mesh) -> dict:
  """This process's share of a global batch -> global jax.Arrays split on `data`."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def is_main_process() -> bool:
  return jax.process_index() == 0
