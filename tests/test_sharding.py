"""Joining a multi-process job from the environment (`sharding.start_processes`)."""

from __future__ import annotations

import jax
import pytest

from catkd_jax import sharding
from catkd_jax.errors import UserError


@pytest.fixture
def initialize_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append(args))
    return calls


def test_the_jax_variables_start_a_job_with_their_values(initialize_calls):
    sharding.start_processes({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                              "JAX_PROCESS_ID": "3", "JAX_LOCAL_DEVICE_IDS": "0,1"})
    assert initialize_calls == [("10.0.0.1:1234", 4, 3, [0, 1])]


@pytest.mark.parametrize("environ, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"},
     "JAX_COORDINATOR_ADDRESS set but JAX_NUM_PROCESSES, JAX_PROCESS_ID not; a multi-process job needs all of "
     "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (unset them all to run as one process)"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES, JAX_PROCESS_ID and JAX_LOCAL_DEVICE_IDS must be integers"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2 must be in 0..JAX_NUM_PROCESSES-1 (1)"),
])
def test_incomplete_or_malformed_jax_variables_are_refused_before_any_connection(environ, message, initialize_calls):
    with pytest.raises(UserError) as error:
        sharding.start_processes(environ)
    assert str(error.value).startswith(message)
    assert initialize_calls == []


SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("environ, joins", [
    ({**SLURM, "SLURM_NTASKS": "2"}, True),
    ({**SLURM, "SLURM_NTASKS": "1"}, False),  # a one-task step is one process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, False),  # inside an allocation, not in a step
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"}, False),
    ({}, False),
])
def test_clusters_jax_detects_itself_start_a_job_of_several_tasks(environ, joins, initialize_calls):
    sharding.start_processes(environ)
    assert initialize_calls == ([()] if joins else [])
