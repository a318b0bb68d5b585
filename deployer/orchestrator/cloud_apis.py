"""The clients a deploy or a resume acts through: one ``Clients`` for the config's endpoint and project,
Cloud Run and Compute over it with the run's retry policies.

Imports ``google.cloud.compute_v1`` (through ``deployer.gcp.compute``): not for the emergency path, which
builds its Compute only when ``--infra`` needs it (emergency.py)."""

from __future__ import annotations

from deployer.config import DeployConfig
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.gcp.cloudrun import CloudRun
from deployer.gcp.compute import Compute


def cloud_apis(
    config: DeployConfig, *, policy: retry.RetryPolicy, read_policy: retry.RetryPolicy
) -> tuple[Clients, CloudRun, Compute]:
    clients = Clients(endpoint=config.endpoint, project=config.project)
    run_api = CloudRun(clients, policy=policy, read_policy=read_policy)
    compute = Compute(clients, config.project, policy=policy, read_policy=read_policy)
    return clients, run_api, compute
