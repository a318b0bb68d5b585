"""Compute request bodies through the client library's own message classes.

``normalize(kind, data)`` parses a JSON object strictly with the ``compute_v1`` class (unknown fields
and wrong types are Google's 400, never a 500) and renders it back in the REST shape: camelCase
keys, int64 as strings, proto3 defaults left out unless they were set (Compute fields have
presence, so an explicit ``"preview": false`` survives). The models keep every resource in that
normalized shape, so what GET answers is right by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from google.cloud import compute_v1
from google.protobuf import json_format

from deployer.localcloud.api.common import ApiError

# kind -> (message class, the request field Google names in its errors)
_CLASSES: dict[str, tuple[Any, str]] = {
    "BackendService": (compute_v1.BackendService, "backend_service_resource"),
    "SecurityPolicy": (compute_v1.SecurityPolicy, "security_policy_resource"),
    "SecurityPolicyRule": (compute_v1.SecurityPolicyRule, "security_policy_rule_resource"),
    "SecurityPolicyReference": (compute_v1.SecurityPolicyReference, "security_policy_reference_resource"),
    "UrlMap": (compute_v1.UrlMap, "url_map_resource"),
    "NetworkEndpointGroup": (compute_v1.NetworkEndpointGroup, "network_endpoint_group_resource"),
}
_UNKNOWN = re.compile(r'has no field named "([^"]+)" at "([^"]+)"')


def _message(kind: str, exc: Exception, field: str) -> str:
    text = str(exc)
    unknown = _UNKNOWN.search(text)
    if unknown:
        # Google's front end: Invalid JSON payload received. Unknown name "foo" at 'resource': Cannot find field.
        name, where = unknown.groups()
        path = field + where[len(where.split(".")[0].split("[")[0]) :]
        return f"Invalid JSON payload received. Unknown name \"{name}\" at '{path}': Cannot find field."
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"Invalid JSON payload received. {first}"


def normalize(kind: str, data: Mapping[str, Any], field: str | None = None) -> dict[str, Any]:
    """``data`` parsed strictly as ``kind`` and rendered back in the REST shape (or ApiError 400)."""
    cls, default_field = _CLASSES[kind]
    try:
        message = cls.from_json(json.dumps(data), ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise ApiError(400, _message(kind, exc, field or default_field), reason="invalid") from exc
    rendered = cls.to_json(
        message, use_integers_for_enums=False, always_print_fields_with_no_presence=False, indent=None
    )
    result: dict[str, Any] = json.loads(rendered)
    return result
