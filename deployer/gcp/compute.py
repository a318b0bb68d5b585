"""Compute Engine for the orchestrator: the backend service and Cloud Armor rules, thin and idempotent.

Resources go in and out as REST JSON. Every write:

- runs through ``retry.call`` (only transient failures are retried);
- is safe to retry: backend-service writes carry the current ``fingerprint`` ("An up-to-date
  fingerprint must be provided in order to update the BackendService, otherwise the request will fail
  with error 412 conditionNotMet", gcp-facts §5.1) and one ``requestId`` (a UUID) reused by every
  attempt ("If you make the request again with the same request ID, the server can check if original
  operation with the same request ID was received, and if so, will ignore the second request");
- for Cloud Armor goes rule by rule — ``addRule`` / ``patchRule`` / ``removeRule`` by priority
  (gcp-facts §3.6: the policy's ``patch`` "cannot be used to be update the rules"). These calls carry
  neither a requestId nor a fingerprint, so a retry after an attempt that may have landed re-reads the
  rule: already as intended means done.

Mutations use the ``*_unary`` calls (the raw ``Operation``, no library poller); ``wait_once`` asks
``globalOperations.wait`` (gcp-facts §5.2, §7 item 7: "Poll Compute operations with
globalOperations.wait in a loop") and reports whether the operation is DONE, raising its error — which
a Compute operation reports in ``httpErrorStatusCode`` / ``httpErrorMessage`` (§5.2: "Check both"
the synchronous HTTP error and ``Operation.error``) — as a ``CloudError``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from deployer.errors import CloudError, NotFoundError
from deployer.gcp import retry
from deployer.gcp.clients import Clients
from deployer.gcp.observe import to_rest_json

JSON = dict[str, Any]

# Fields of a BackendService the server owns: never sent back (compute.proto: "[Output Only]";
# securityPolicy is attached with setSecurityPolicy, gcp-facts §3.6).
BACKEND_OUTPUT_ONLY = (
    "id",
    "kind",
    "selfLink",
    "creationTimestamp",
    "fingerprint",
    "securityPolicy",
    "edgeSecurityPolicy",
)
RULE_OUTPUT_ONLY = ("kind",)


def new_request_id() -> str:
    return str(uuid.uuid4())


class Compute:
    def __init__(
        self,
        clients: Clients,
        project: str,
        *,
        policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
        read_policy: retry.RetryPolicy = retry.READ_POLICY,
    ) -> None:
        self.clients = clients
        self.project = project
        self.policy = policy
        self.read_policy = read_policy

    # ---- reads ---------------------------------------------------------------------------------
    def _read(self, fn: Any, method: str) -> JSON | None:
        try:
            return to_rest_json(retry.call(fn, method=method, policy=self.read_policy))
        except NotFoundError:
            return None

    def get_backend_service(self, name: str) -> JSON | None:
        client = self.clients.backend_services()
        return self._read(lambda: client.get(project=self.project, backend_service=name), "compute.backendServices.get")

    def get_security_policy(self, name: str) -> JSON | None:
        client = self.clients.security_policies()
        return self._read(
            lambda: client.get(project=self.project, security_policy=name), "compute.securityPolicies.get"
        )

    def get_rule(self, policy: str, priority: int) -> JSON | None:
        found = self.get_security_policy(policy)
        for rule in (found or {}).get("rules") or []:
            if int(rule.get("priority", 0)) == priority:
                return dict(rule)
        return None

    # ---- backend service -----------------------------------------------------------------------
    def write_backend_service(
        self, verb: str, name: str, body: Mapping[str, Any], *, fingerprint: str, request_id: str
    ) -> str:
        """``verb`` "patch": PATCH (JSON merge patch, lists replace) the fields in ``body``; "update": PUT the
        whole backend service ``body`` (needed to clear a field a merge patch cannot). Returns the operation
        name. The verb is what the plan or restore chose (``backend_restore_write``, ``Change``)."""
        from google.cloud import compute_v1

        if not fingerprint:
            raise ValueError("a backend-service write from deployer always carries the current fingerprint")
        doc = {k: v for k, v in body.items() if k not in BACKEND_OUTPUT_ONLY}
        doc["fingerprint"] = fingerprint
        if verb == "update":
            doc["name"] = name
        resource = compute_v1.BackendService.from_json(json.dumps(doc), ignore_unknown_fields=False)
        client = self.clients.backend_services()
        method = f"compute.backendServices.{verb}"
        if verb == "patch":
            request: Any = compute_v1.PatchBackendServiceRequest(
                project=self.project, backend_service=name, backend_service_resource=resource, request_id=request_id
            )
            call = client.patch_unary
        else:
            request = compute_v1.UpdateBackendServiceRequest(
                project=self.project, backend_service=name, backend_service_resource=resource, request_id=request_id
            )
            call = client.update_unary
        op = retry.call(lambda: call(request=request), method=method, policy=self.policy)
        return str(op.name)

    # ---- Cloud Armor rules -----------------------------------------------------------------------
    def _rule(self, rule: Mapping[str, Any]) -> Any:
        from google.cloud import compute_v1

        doc = {k: v for k, v in rule.items() if k not in RULE_OUTPUT_ONLY}
        return compute_v1.SecurityPolicyRule.from_json(json.dumps(doc), ignore_unknown_fields=False)

    def _landed(self, policy: str, priority: int, want: Mapping[str, Any] | None) -> bool:
        """After an unknown outcome: is the rule at ``priority`` already what we asked for?"""
        now = self.get_rule(policy, priority)
        if want is None:
            return now is None
        if now is None:
            return False
        strip = {k: v for k, v in now.items() if k not in RULE_OUTPUT_ONLY}
        return all(strip.get(k) == v for k, v in want.items() if k not in RULE_OUTPUT_ONLY)

    def _rule_write(
        self, method: str, policy: str, priority: int, want: Mapping[str, Any] | None, fn: Any
    ) -> str | None:
        try:
            op = retry.call(fn, method=method, policy=self.policy)
        except CloudError as exc:
            if exc.outcome_unknown and self._landed(policy, priority, want):
                return None  # an earlier attempt landed: nothing to wait for
            raise
        return str(op.name)

    def add_rule(self, policy: str, rule: Mapping[str, Any]) -> str | None:
        """addRule; the operation name (None when an earlier attempt had already landed)."""
        from google.cloud import compute_v1

        client = self.clients.security_policies()
        request = compute_v1.AddRuleSecurityPolicyRequest(
            project=self.project, security_policy=policy, security_policy_rule_resource=self._rule(rule)
        )
        priority = int(rule["priority"])
        return self._rule_write(
            "compute.securityPolicies.addRule", policy, priority, rule, lambda: client.add_rule_unary(request=request)
        )

    def patch_rule(
        self, policy: str, priority: int, rule: Mapping[str, Any], *, clear: Sequence[str] = ()
    ) -> str | None:
        """patchRule at ``priority``: ``rule``'s top-level fields replace the rule's; ``clear`` names
        fields to empty ("To clear fields in the rule, leave the fields empty and specify them in the
        updateMask", gcp-facts §3.6)."""
        from google.cloud import compute_v1

        client = self.clients.security_policies()
        fields: dict[str, Any] = {
            "project": self.project,
            "security_policy": policy,
            "priority": priority,
            "security_policy_rule_resource": self._rule(rule),
        }
        if clear:
            fields["update_mask"] = ",".join(clear)
        request = compute_v1.PatchRuleSecurityPolicyRequest(**fields)
        return self._rule_write(
            "compute.securityPolicies.patchRule",
            policy,
            priority,
            rule,
            lambda: client.patch_rule_unary(request=request),
        )

    def remove_rule(self, policy: str, priority: int) -> str | None:
        from google.cloud import compute_v1

        client = self.clients.security_policies()
        request = compute_v1.RemoveRuleSecurityPolicyRequest(
            project=self.project, security_policy=policy, priority=priority
        )
        return self._rule_write(
            "compute.securityPolicies.removeRule",
            policy,
            priority,
            None,
            lambda: client.remove_rule_unary(request=request),
        )

    # ---- operations ----------------------------------------------------------------------------
    def wait_once(self, operation: str) -> bool:
        """One ``globalOperations.wait`` (it answers when the operation is DONE or near its deadline);
        True when DONE; the operation's own error as a ``CloudError``."""
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        client = self.clients.global_operations()
        op = retry.call(
            lambda: client.wait(project=self.project, operation=operation),
            method="compute.globalOperations.wait",
            policy=self.read_policy,
        )
        if op.status != compute_v1.Operation.Status.DONE:
            return False
        if op.http_error_status_code or op.http_error_message or (op.error and op.error.errors):
            code = int(op.http_error_status_code or 500)
            message = op.http_error_message or "; ".join(e.message for e in op.error.errors) or "operation failed"
            exc = gexc.from_http_status(code, message, errors=list(op.error.errors) if op.error else [])
            err = retry.to_cloud_error(exc, method=f"compute.operation:{op.operation_type or 'unknown'}")
            assert err is not None
            raise err from exc
        return True

    def wait(self, operation: str | None, *, attempts: int = 100) -> None:
        """Block until ``operation`` is DONE (``None``: nothing to wait for)."""
        if operation is None:
            return
        for _ in range(attempts):
            if self.wait_once(operation):
                return
        raise CloudError(f"compute operation {operation} still not DONE after {attempts} waits")
