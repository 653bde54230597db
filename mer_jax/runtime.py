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
