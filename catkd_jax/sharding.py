"""The one place that decides where arrays live: a 1-D device mesh with a 'data' axis.

Parameters and optimiser state are replicated; batches are split along their batch axis over
all devices of all processes (the first axis, or the second when a leading axis holds the
batches of several runs, `catkd_jax.runs`). One `jax.jit` over this mesh is the whole parallelism story:
XLA inserts the collectives (gradient all-reduce, BatchNorm statistics of the global batch).
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


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
        raise ValueError(
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
