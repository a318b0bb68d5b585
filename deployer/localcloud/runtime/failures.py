"""How Cloud Run words a revision that cannot serve: reason (a v2 ``Condition`` enum name) + message.

``reason`` is the *name* of the ``run_v2.Condition`` enum value. ``CONTAINER_MISSING`` and
``SECRETS_ACCESS_CHECK_FAILED`` are ``Condition.CommonReason`` values (field ``reason``);
``HEALTH_CHECK_CONTAINER_ERROR`` is a ``Condition.RevisionReason`` value (field ``revision_reason``).
The Cloud Run API puts each in its field.

Sources of the wording (none is in gcp-facts.md; all are real API output quoted by third parties):
- image: gcloud printing the failed revision, "Revision 'handle-it-server-00042-fow' is not ready and
  cannot serve traffic. Image 'gcr.io/handleit-349522/handle-it-server:latest' not found."
  (google-github-actions/deploy-cloudrun#465, 2023; again GoogleCloudPlatform/cloud-run-mcp#25, 2025).
  DOUBT: the reason. The v2 enum documents CONTAINER_MISSING as "The container image path is
  incorrect."; some reports show the v1 reason ``ContainerImageImportFailed``, but for images that
  exist and cannot be imported (permissions, layer contents), not for a missing image.
- no listen / exit before listening: "The user-provided container failed to start and listen on the
  port defined provided by the PORT=8080 environment variable within the allocated timeout. This can
  happen when the container port is misconfigured or if the timeout is too short. The health check
  timeout can be extended. Logs for this revision might contain more information." (the revision's
  Ready condition as logged by Cloud Run, openci-org/openci#487 and octo-sts/app#1005, 2025; the LRO
  error is "Revision 'X' is not ready and cannot serve traffic. " + this message, code 9). The v1
  reason reported with it is ``HealthCheckContainerError`` (n3n/hasura-cloud-run#5). Real messages
  end with "Logs URL: <console link>"; ours points at the local log endpoint instead.
- a configured startup probe that fails: "The user-provided container failed the configured startup
  probe checks." (terraform-provider-google acceptance test ``ExpectError``, and many reports).
- secrets: "spec.template.spec.containers[0].env[0].value_from.secret_key_ref.name: Secret
  projects/623450773640/secrets/tebra-username/versions/latest was not found", one line per
  missing secret. DOUBT: Cloud Run renders the project *number*; we render the project id. The
  reason (SECRETS_ACCESS_CHECK_FAILED, "At least one Access check on secrets failed.") is our
  choice from the v2 enum, not seen in a recording.
"""

from __future__ import annotations

from deployer.localcloud.world import Readiness, RevisionState

CONTAINER_MISSING = "CONTAINER_MISSING"
HEALTH_CHECK_CONTAINER_ERROR = "HEALTH_CHECK_CONTAINER_ERROR"
SECRETS_ACCESS_CHECK_FAILED = "SECRETS_ACCESS_CHECK_FAILED"


def image_not_found(image: str) -> RevisionState:
    return RevisionState(Readiness.FAILED, CONTAINER_MISSING, f"Image '{image}' not found.")


def failed_to_listen(container_port: int, logs_url: str) -> RevisionState:
    return RevisionState(
        Readiness.FAILED,
        HEALTH_CHECK_CONTAINER_ERROR,
        "The user-provided container failed to start and listen on the port defined provided by the "
        f"PORT={container_port} environment variable within the allocated timeout. This can happen when the "
        "container port is misconfigured or if the timeout is too short. The health check timeout can be "
        f"extended. Logs for this revision might contain more information.\n\nLogs URL: {logs_url}",
    )


def failed_startup_probe(logs_url: str) -> RevisionState:
    return RevisionState(
        Readiness.FAILED,
        HEALTH_CHECK_CONTAINER_ERROR,
        f"The user-provided container failed the configured startup probe checks.\n\nLogs URL: {logs_url}",
    )


def secret_not_found(missing: list[tuple[int, str]]) -> RevisionState:
    """``missing`` = (env index, full secret version name) for each unresolved reference."""
    lines = [
        f"spec.template.spec.containers[0].env[{index}].value_from.secret_key_ref.name: Secret {name} was not found"
        for index, name in missing
    ]
    return RevisionState(Readiness.FAILED, SECRETS_ACCESS_CHECK_FAILED, "\n".join(lines))
