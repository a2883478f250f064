"""The one place that decides where arrays live: a 1-D device mesh with a 'data' axis.

`start_processes()` joins a multi-process job (several hosts, or several processes on one) when
the environment describes one; every process then sees all devices of all processes.

Parameters and optimiser state are replicated; batches are split along their batch axis over
all devices of all processes (the first axis, or the second when a leading axis holds the
batches of several runs, `catkd_jax.runs`). One `jax.jit` over this mesh is the whole parallelism story:
XLA inserts the collectives (gradient all-reduce, BatchNorm statistics of the global batch).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from catkd_jax.errors import ConfigError, UserError

DATA_AXIS = "data"

# A job described by hand: all three, JAX_LOCAL_DEVICE_IDS optional.
JAX_PROCESS_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Clusters whose variables jax.distributed reads itself (its SLURM and Open MPI detection).
_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI_VARIABLE = "OMPI_MCA_orte_hnp_uri"


def start_processes(environ: Mapping[str, str] = os.environ) -> None:
    """Joins the multi-process job `environ` describes, if any; call before any other JAX use.

    A job is described by JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES
    and JAX_PROCESS_ID (optionally JAX_LOCAL_DEVICE_IDS, e.g. "0,1"), or is a SLURM step or an
    Open MPI launch of more than one task. Anything else runs as one process.
    """
    given = [name for name in JAX_PROCESS_VARIABLES if environ.get(name)]
    if given:
        missing = [name for name in JAX_PROCESS_VARIABLES if name not in given]
        if missing:
            raise UserError(
                f"{', '.join(given)} set but {', '.join(missing)} not; a multi-process job needs all of "
                f"{', '.join(JAX_PROCESS_VARIABLES)} (unset them all to run as one process)"
            )
        try:
            num_processes, process_id = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
            local_ids = environ.get("JAX_LOCAL_DEVICE_IDS")
            local_device_ids = [int(item) for item in local_ids.split(",")] if local_ids else None
        except ValueError as error:
            raise UserError(f"JAX_NUM_PROCESSES, JAX_PROCESS_ID and JAX_LOCAL_DEVICE_IDS must be integers "
                            f"(the last a comma-separated list): {error}") from None
        if not 0 <= process_id < num_processes:
            raise UserError(f"JAX_PROCESS_ID={process_id} must be in 0..JAX_NUM_PROCESSES-1 ({num_processes - 1})")
        jax.distributed.initialize(environ["JAX_COORDINATOR_ADDRESS"], num_processes, process_id,
                                   local_device_ids)
    elif all(name in environ for name in _SLURM_VARIABLES) and int(environ["SLURM_NTASKS"]) > 1:
        jax.distributed.initialize()
    elif _OPEN_MPI_VARIABLE in environ and int(environ.get("OMPI_COMM_WORLD_SIZE", "2")) > 1:
        jax.distributed.initialize()


def create_mesh() -> Mesh:
    """All devices of all processes on one 'data' axis."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, run_axis: bool = False) -> NamedSharding:
    """Split along the batch axis: the first, or the second after a leading run axis."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS) if run_axis else PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """A global batch must split evenly over devices (and so over processes)."""
    if batch_size % mesh.size:
        raise ConfigError(
            f"config.{what}={batch_size} is not divisible by the {mesh.size} devices; "
            f"choose a multiple of {mesh.size}"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device."""
    return jax.device_put(tree, replicated(mesh))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, run_axis: bool = False) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays split over the 'data' axis."""
    sharding = batch_sharded(mesh, run_axis)
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }


def prefetch(
    batches: Iterable[dict[str, np.ndarray]], mesh: Mesh, size: int = 2, run_axis: bool = False
) -> Iterator[dict[str, jax.Array]]:
    """Global batches placed `size` steps ahead: transfers are asynchronous, so they overlap compute."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(global_batch(batch, mesh, run_axis))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
