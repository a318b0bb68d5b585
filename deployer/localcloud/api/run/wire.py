"""Reading Google REST JSON into protobuf messages, with Google's own 400 wording.

Google's front end checks a JSON body against the request message before the service sees it,
and answers, for example (real texts):

- ``Invalid JSON payload received. Unknown name "foo" at 'service': Cannot find field.``
- ``Invalid value at 'service.traffic' (type.googleapis.com/google.cloud.run.v2.TrafficTarget), 0``
  (goblet/goblet#418), each with a ``google.rpc.BadRequest`` detail naming the field.

Paths use proto field names (``service.template.max_instance_request_concurrency``) and
``[i]`` for list items. Query parameters that bind to no request field get
``Cannot bind query parameter``. ``check_json`` finds all of these; ``parse_message`` then parses
with ``json_format`` (strict) as a backstop, so no malformed body can reach the models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, message_factory

from deployer.localcloud.api.common import ApiError

FD = pb_descriptor.FieldDescriptor
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"

_SCALAR_NAMES = {
    FD.TYPE_DOUBLE: "TYPE_DOUBLE",
    FD.TYPE_FLOAT: "TYPE_FLOAT",
    FD.TYPE_INT64: "TYPE_INT64",
    FD.TYPE_UINT64: "TYPE_UINT64",
    FD.TYPE_INT32: "TYPE_INT32",
    FD.TYPE_FIXED64: "TYPE_FIXED64",
    FD.TYPE_FIXED32: "TYPE_FIXED32",
    FD.TYPE_BOOL: "TYPE_BOOL",
    FD.TYPE_STRING: "TYPE_STRING",
    FD.TYPE_BYTES: "TYPE_BYTES",
    FD.TYPE_UINT32: "TYPE_UINT32",
    FD.TYPE_SFIXED32: "TYPE_SFIXED32",
    FD.TYPE_SFIXED64: "TYPE_SFIXED64",
    FD.TYPE_SINT32: "TYPE_SINT32",
    FD.TYPE_SINT64: "TYPE_SINT64",
}
_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
# Well-known types whose JSON form is a string (or anything, for Struct/Value); checked by parsing.
_WKT_STRING = {
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.FieldMask",
}
_WKT_ANY_JSON = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any"}

# System parameters every Google REST API accepts on top of the request's own fields.
SYSTEM_QUERY_PARAMS = frozenset(
    {
        "alt",
        "prettyPrint",
        "fields",
        "key",
        "quotaUser",
        "userIp",
        "access_token",
        "oauth_token",
        "callback",
        "upload_protocol",
        "uploadType",
        "$alt",
        "$.xgafv",
        "$fields",
        "$prettyPrint",
        "$callback",
        "$outputDefaults",
    }
)

Problem = tuple[str, str]  # (field path, message)


def _type_name(fd: Any) -> str:
    if fd.type == FD.TYPE_MESSAGE:
        return f"type.googleapis.com/{fd.message_type.full_name}"
    if fd.type == FD.TYPE_ENUM:
        return f"type.googleapis.com/{fd.enum_type.full_name}"
    return _SCALAR_NAMES.get(fd.type, "TYPE_UNKNOWN")


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def invalid_value(path: str, type_name: str, value: Any) -> Problem:
    return path, f"Invalid value at '{path}' ({type_name}), {_show(value)}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_json(value: Any, desc: Any, path: str) -> list[Problem]:
    """Every unknown name and wrongly typed value in ``value`` (a JSON object for ``desc``)."""
    if desc.full_name in _WKT_ANY_JSON:
        return []
    if not isinstance(value, dict):
        return [invalid_value(path, f"type.googleapis.com/{desc.full_name}", value)]
    out: list[Problem] = []
    fields = {}
    for fd in desc.fields:
        fields[fd.json_name] = fd
        fields[fd.name] = fd
    for key, item in value.items():
        fd = fields.get(key)
        if fd is None:
            where = f" at '{path}'" if path else ""
            out.append((path, f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'))
            continue
        if item is None:
            continue
        out.extend(_check_field(item, fd, _join(path, fd.name)))
    return out


def _check_field(item: Any, fd: Any, path: str) -> list[Problem]:
    if fd.is_repeated and fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        if not isinstance(item, dict):
            return [invalid_value(path, _type_name(fd), item)]
        value_fd = fd.message_type.fields_by_name["value"]
        out: list[Problem] = []
        for k, v in item.items():
            out.extend(_check_single(v, value_fd, f"{path}[{_show(k)}]"))
        return out
    if fd.is_repeated:
        if not isinstance(item, list):
            return [invalid_value(path, _type_name(fd), item)]
        out = []
        for i, element in enumerate(item):
            if element is None:
                out.append(invalid_value(f"{path}[{i}]", _type_name(fd), element))
            else:
                out.extend(_check_single(element, fd, f"{path}[{i}]"))
        return out
    return _check_single(item, fd, path)


def _check_single(item: Any, fd: Any, path: str) -> list[Problem]:
    if fd.type == FD.TYPE_MESSAGE:
        full = fd.message_type.full_name
        if full in _WKT_STRING or (full.startswith("google.protobuf.") and full.endswith("Value")):
            return _check_wkt(item, fd, path)
        return check_json(item, fd.message_type, path)
    if fd.type == FD.TYPE_ENUM:
        if isinstance(item, bool):
            return [invalid_value(path, _type_name(fd), item)]
        if isinstance(item, int):
            return [] if -(2**31) <= item < 2**31 else [invalid_value(path, _type_name(fd), item)]
        if isinstance(item, str) and fd.enum_type.values_by_name.get(item) is not None:
            return []
        return [invalid_value(path, _type_name(fd), item)]
    if fd.type == FD.TYPE_BOOL:
        return [] if isinstance(item, bool) else [invalid_value(path, _type_name(fd), item)]
    if fd.type in (FD.TYPE_STRING, FD.TYPE_BYTES):
        return [] if isinstance(item, str) else [invalid_value(path, _type_name(fd), item)]
    if fd.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(item, bool):
            return [invalid_value(path, _type_name(fd), item)]
        if isinstance(item, int | float):
            return []
        if isinstance(item, str):
            try:
                float(item)
                return []
            except ValueError:
                pass
        return [invalid_value(path, _type_name(fd), item)]
    # integers: a JSON number with no fraction, or a decimal string (int64s travel as strings)
    number: int | None = None
    if isinstance(item, bool):
        number = None
    elif isinstance(item, int):
        number = item
    elif isinstance(item, float) and item.is_integer():
        number = int(item)
    elif isinstance(item, str):
        try:
            number = int(item.strip())
        except ValueError:
            number = None
    low, high = _INT_RANGES.get(fd.type, (-(2**63), 2**64))
    if number is None or not low <= number <= high:
        return [invalid_value(path, _type_name(fd), item)]
    return []


def _check_wkt(item: Any, fd: Any, path: str) -> list[Problem]:
    cls = message_factory.GetMessageClass(fd.message_type)
    try:
        json_format.ParseDict(item, cls())
    except (json_format.ParseError, ValueError, TypeError, AttributeError):
        return [invalid_value(path, _type_name(fd), item)]
    return []


def bad_request(problems: list[Problem]) -> ApiError:
    """Google's 400 for body problems: the messages joined by newlines, one field violation each."""
    return ApiError(
        400,
        "\n".join(m for _, m in problems),
        details=[
            {
                "@type": BAD_REQUEST,
                "fieldViolations": [{"field": f, "description": m} for f, m in problems],
            }
        ],
    )


def parse_message(cls: Any, data: Mapping[str, Any], root: str) -> Any:
    """A ``cls`` instance (proto-plus or plain protobuf) from JSON ``data``, or Google's 400 (never a 500)."""
    plus = hasattr(cls, "pb") and hasattr(cls, "wrap")
    pb_cls = cls.pb() if plus else cls
    problems = check_json(dict(data), pb_cls.DESCRIPTOR, root)
    if problems:
        raise bad_request(problems)
    pb = pb_cls()
    try:
        json_format.ParseDict(dict(data), pb, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise ApiError(400, f"Invalid JSON payload received. {exc}") from exc
    return cls.wrap(pb) if plus else pb


def parse_query(query: Mapping[str, str], spec: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Bind query parameters to request fields: ``spec`` maps a field's JSON name to
    ``(proto name, kind)`` with kind ``str`` | ``bool`` | ``int32``. Unknown names get Google's 400."""
    by_name: dict[str, tuple[str, str]] = {}
    for json_name, (proto_name, kind) in spec.items():
        by_name[json_name] = (proto_name, kind)
        by_name[proto_name] = (proto_name, kind)
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, raw in query.items():
        if key in SYSTEM_QUERY_PARAMS:
            continue
        bound = by_name.get(key)
        if bound is None:
            problems.append(
                (
                    key,
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot bind query parameter. '
                    f"Field '{key}' could not be found in request message.",
                )
            )
            continue
        name, kind = bound
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                problems.append(invalid_value(name, "TYPE_BOOL", raw))
                continue
            out[name] = raw.lower() in ("true", "1")
        elif kind == "int32":
            try:
                number = int(raw)
            except ValueError:
                problems.append(invalid_value(name, "TYPE_INT32", raw))
                continue
            if not -(2**31) <= number < 2**31:
                problems.append(invalid_value(name, "TYPE_INT32", raw))
                continue
            out[name] = number
        else:
            out[name] = raw
    if problems:
        raise bad_request(problems)
    return out
