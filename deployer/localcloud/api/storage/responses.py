"""Wire layer of the emulated Cloud Storage JSON API: parse requests, render resources, ``ROUTES``.

The paths are the ones ``google-cloud-storage`` 3.x builds (read from its ``blob.py``/``bucket.py``):

- ``/storage/v1/b[?project=]`` buckets list/insert; ``/storage/v1/b/{bucket}`` get/delete
- ``/storage/v1/b/{bucket}/o`` list (``prefix``, ``delimiter``, ``maxResults``, ``pageToken``,
  ``startOffset``, ``endOffset``, ``includeTrailingDelimiter``)
- ``/storage/v1/b/{bucket}/o/{object}`` get (metadata, or the data with ``alt=media``), patch, delete
- ``/upload/storage/v1/b/{bucket}/o?uploadType=media|multipart|resumable``: the client uploads objects
  up to 8 MiB (``_MAX_MULTIPART_SIZE``) as ``multipart/related`` (JSON metadata + data, with the
  data's ``crc32c`` declared in the metadata), and larger ones (or streams of unknown size) as a
  resumable session: ``POST`` answers a ``Location`` with an ``upload_id``, then ``PUT`` chunks with
  ``Content-Range: bytes a-b/total`` (``308`` + ``Range: bytes=0-n`` until the last, then ``200`` +
  the object).
- ``/download/storage/v1/b/{bucket}/o/{object}?alt=media`` data, with ``x-goog-hash`` (crc32c and md5)
  for the client's integrity check, ``x-goog-generation``, and ``Range`` support (206).

Object names arrive percent-encoded (``a%2Fb``); ``mediaLink``/``selfLink`` are rendered against the
host the request came to, so a client that follows ``mediaLink`` stays on the local cloud.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from aiohttp import web

from deployer.localcloud.api.common import ApiError, Route, json_response, query_bool, read_json_object
from deployer.localcloud.api.storage.models import (
    Bucket,
    NotModified,
    Preconditions,
    State,
    StoredObject,
    bucket_etag,
    precondition_failed,
)
from deployer.localcloud.world import World

FLAVOR = "storage"
_CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)


def _state(world: World) -> State:
    state: State = world.apis["storage"]
    return state


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _time(ts: float) -> str:
    """GCS renders RFC 3339 in UTC with milliseconds: ``2024-01-01T00:00:00.000Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ApiError(400, f"Invalid argument: {name}={raw!r} is not an integer.", reason="invalid") from exc


def _preconditions(request: web.Request) -> Preconditions:
    return Preconditions(
        if_generation_match=_int_param(request, "ifGenerationMatch"),
        if_generation_not_match=_int_param(request, "ifGenerationNotMatch"),
        if_metageneration_match=_int_param(request, "ifMetagenerationMatch"),
        if_metageneration_not_match=_int_param(request, "ifMetagenerationNotMatch"),
    )


# ---- rendering -----------------------------------------------------------------------------------
def render_bucket(bucket: Bucket, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "storage#bucket",
        "selfLink": f"{base}/storage/v1/b/{bucket.name}",
        "id": bucket.name,
        "name": bucket.name,
        "projectNumber": bucket.project_number,
        "metageneration": str(bucket.metageneration),
        "location": bucket.location,
        "storageClass": bucket.storage_class,
        "etag": bucket_etag(bucket.metageneration),
        "timeCreated": _time(bucket.created),
        "updated": _time(bucket.updated),
        "iamConfiguration": {
            "bucketPolicyOnly": {"enabled": False},
            "uniformBucketLevelAccess": {"enabled": False},
            "publicAccessPrevention": "inherited",
        },
        "locationType": bucket.location_type,
        "rpo": "DEFAULT",
    }
    if bucket.labels:
        out["labels"] = dict(bucket.labels)
    return out


def render_object(obj: StoredObject, base: str) -> dict[str, Any]:
    quoted = quote(obj.name, safe="")
    out: dict[str, Any] = {
        "kind": "storage#object",
        "id": f"{obj.bucket}/{obj.name}/{obj.generation}",
        "selfLink": f"{base}/storage/v1/b/{obj.bucket}/o/{quoted}",
        "mediaLink": f"{base}/download/storage/v1/b/{obj.bucket}/o/{quoted}?generation={obj.generation}&alt=media",
        "name": obj.name,
        "bucket": obj.bucket,
        "generation": str(obj.generation),
        "metageneration": str(obj.metageneration),
        "contentType": obj.content_type,
        "storageClass": "STANDARD",
        "size": str(obj.size),
        "md5Hash": obj.md5,
        "crc32c": obj.crc32c,
        "etag": obj.etag,
        "timeCreated": _time(obj.created),
        "updated": _time(obj.updated),
        "timeStorageClassUpdated": _time(obj.created),
        "timeFinalized": _time(obj.created),
    }
    for key, value in obj.fields.items():
        if key != "contentType" and value not in (None, {}):
            out[key] = value
    return out


def select_fields(data: dict[str, Any], spec: str | None) -> dict[str, Any]:
    """Apply the ``fields`` partial-response parameter: ``a,b,items(c,d),nextPageToken``."""
    if not spec:
        return data
    return _select(data, _parse_fields(spec))


def _parse_fields(spec: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    i, name = 0, ""
    while i < len(spec):
        ch = spec[i]
        if ch == ",":
            if name.strip():
                tree.setdefault(name.strip(), None)
            name = ""
        elif ch == "(":
            depth, j = 1, i + 1
            while j < len(spec) and depth:
                depth += {"(": 1, ")": -1}.get(spec[j], 0)
                j += 1
            tree[name.strip()] = _parse_fields(spec[i + 1 : j - 1])
            name, i = "", j
            continue
        else:
            name += ch
        i += 1
    if name.strip():
        tree.setdefault(name.strip(), None)
    # "a/b" selects b inside a
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        parts = key.split("/")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = sub
    return out


def _select(data: Any, tree: dict[str, Any]) -> Any:
    if isinstance(data, list):
        return [_select(d, tree) for d in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, sub in tree.items():
        if key in data:
            out[key] = data[key] if sub is None else _select(data[key], sub)
    return out


def _json(request: web.Request, data: dict[str, Any], status: int = 200) -> web.Response:
    return json_response(select_fields(data, request.query.get("fields")), status=status)


# ---- buckets -------------------------------------------------------------------------------------
def _project_param(request: web.Request, world: World) -> str:
    project = request.query.get("project")
    if not project:
        raise ApiError(400, "Required parameter: project", reason="required")
    # google-cloud-storage sends project "<none>" when STORAGE_EMULATOR_HOST is set and no project is
    # configured (client.py: "Use no project if STORAGE_EMULATOR_HOST is set"): the world's project.
    return world.project if project == "<none>" else project


async def buckets_list(request: web.Request, world: World) -> web.StreamResponse:
    project = request.query.get("project")
    if not project:
        raise ApiError(400, "Required parameter: project", reason="required")
    scope = None if project == "<none>" else project
    buckets = _state(world).list_buckets(scope, prefix=request.query.get("prefix", ""))
    body: dict[str, Any] = {"kind": "storage#buckets"}
    if buckets:
        body["items"] = [render_bucket(b, _base(request)) for b in buckets]
    return _json(request, body)


async def buckets_insert(request: web.Request, world: World) -> web.StreamResponse:
    project = _project_param(request, world)
    body = await read_json_object(request)
    bucket = _state(world).insert_bucket(project, body)
    return _json(request, render_bucket(bucket, _base(request)))


async def buckets_get(request: web.Request, world: World) -> web.StreamResponse:
    state = _state(world)
    bucket = state.get_bucket(request.match_info["bucket"])
    want = _int_param(request, "ifMetagenerationMatch")
    if want is not None and want != bucket.metageneration:
        raise precondition_failed()
    return _json(request, render_bucket(bucket, _base(request)))


async def buckets_delete(request: web.Request, world: World) -> web.StreamResponse:
    _state(world).delete_bucket(request.match_info["bucket"])
    return web.Response(status=204)


# ---- objects: metadata ---------------------------------------------------------------------------
async def objects_list(request: web.Request, world: World) -> web.StreamResponse:
    max_results = _int_param(request, "maxResults")
    if max_results is not None and max_results < 0:
        raise ApiError(400, "Invalid argument: maxResults must not be negative.", reason="invalid")
    page = _state(world).list_objects(
        request.match_info["bucket"],
        prefix=request.query.get("prefix", ""),
        delimiter=request.query.get("delimiter", ""),
        max_results=max_results,
        page_token=request.query.get("pageToken") or None,
        start_offset=request.query.get("startOffset", ""),
        end_offset=request.query.get("endOffset", ""),
        include_trailing_delimiter=query_bool(request, "includeTrailingDelimiter"),
    )
    body: dict[str, Any] = {"kind": "storage#objects"}
    if page.next_page_token:
        body["nextPageToken"] = page.next_page_token
    # GCS leaves out empty "items" and "prefixes".
    if page.prefixes:
        body["prefixes"] = page.prefixes
    if page.items:
        body["items"] = [render_object(o, _base(request)) for o in page.items]
    return _json(request, body)


async def objects_get(request: web.Request, world: World) -> web.StreamResponse:
    try:
        obj = _state(world).get_object(
            request.match_info["bucket"],
            request.match_info["object"],
            _preconditions(request),
            generation=_int_param(request, "generation"),
        )
    except NotModified:
        return web.Response(status=304)
    if request.query.get("alt") == "media":
        return _media_response(request, obj)
    return _json(request, render_object(obj, _base(request)))


async def objects_download(request: web.Request, world: World) -> web.StreamResponse:
    return await objects_get(request, world)


async def objects_patch(request: web.Request, world: World) -> web.StreamResponse:
    body = await read_json_object(request)
    obj = _state(world).patch_object(
        request.match_info["bucket"], request.match_info["object"], body, _preconditions(request)
    )
    return _json(request, render_object(obj, _base(request)))


async def objects_delete(request: web.Request, world: World) -> web.StreamResponse:
    _state(world).delete_object(
        request.match_info["bucket"],
        request.match_info["object"],
        _preconditions(request),
        generation=_int_param(request, "generation"),
    )
    return web.Response(status=204)


def _media_response(request: web.Request, obj: StoredObject) -> web.StreamResponse:
    headers = {
        "Content-Type": obj.content_type,
        "x-goog-hash": f"crc32c={obj.crc32c},md5={obj.md5}",
        "x-goog-generation": str(obj.generation),
        "x-goog-metageneration": str(obj.metageneration),
        "x-goog-stored-content-length": str(obj.size),
        "x-goog-stored-content-encoding": "identity",
        "x-goog-storage-class": "STANDARD",
        "ETag": obj.etag,
        "Last-Modified": formatdate(obj.updated, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    data = obj.data
    spec = request.headers.get("Range")
    if spec:
        match = _RANGE.match(spec.strip())
        if match and (match.group(1) or match.group(2)):
            first_s, last_s = match.groups()
            size = len(data)
            if first_s:
                first = int(first_s)
                last = min(int(last_s), size - 1) if last_s else size - 1
            else:  # suffix range: the last N bytes
                first, last = max(size - int(last_s), 0), size - 1
            if first >= size or first > last:
                headers.pop("Content-Type")
                headers["Content-Range"] = f"bytes */{size}"
                err = ApiError(416, "The requested range cannot be satisfied.", reason="requestedRangeNotSatisfiable")
                return web.Response(
                    status=416, text=json.dumps(err.body(FLAVOR)), headers=headers, content_type="application/json"
                )
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            return web.Response(status=206, body=data[first : last + 1], headers=headers)
    return web.Response(status=200, body=data, headers=headers)


# ---- objects: uploads ----------------------------------------------------------------------------
def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], bytes, str | None]:
    """``multipart/related``: a JSON metadata part, then the data part (and its content type)."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ApiError(400, "Multipart upload needs a boundary in its Content-Type.", reason="invalid")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in raw.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        head, sep, body = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = chunk.partition(b"\n\n")
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        headers = {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        parts.append((headers, body))
    if len(parts) != 2:
        raise ApiError(400, f"Multipart upload must have 2 parts (metadata, media), found {len(parts)}.")
    try:
        metadata = json.loads(parts[0][1] or b"{}")
    except ValueError as exc:
        raise ApiError(400, "Invalid JSON payload received in the metadata part.", reason="parseError") from exc
    if not isinstance(metadata, dict):
        raise ApiError(400, "The metadata part must be a JSON object.", reason="invalid")
    return metadata, parts[1][1], parts[1][0].get("content-type")


async def objects_upload(request: web.Request, world: World) -> web.StreamResponse:
    bucket = request.match_info["bucket"]
    upload_type = request.query.get("uploadType", "")
    state = _state(world)
    pre = _preconditions(request)
    if upload_type == "media":
        name = request.query.get("name", "")
        data = await request.read()
        fields = {"contentType": request.headers.get("Content-Type") or None}
        obj = state.put_object(bucket, name, data, fields, pre)
        return _json(request, render_object(obj, _base(request)))
    if upload_type == "multipart":
        raw = await request.read()
        metadata, data, part_type = _parse_multipart(request.headers.get("Content-Type", ""), raw)
        name = metadata.get("name") or request.query.get("name", "")
        fields = dict(metadata)
        fields.setdefault("contentType", part_type or request.headers.get("X-Upload-Content-Type"))
        obj = state.put_object(bucket, str(name), data, fields, pre, declared=metadata)
        return _json(request, render_object(obj, _base(request)))
    if upload_type == "resumable":
        metadata = await read_json_object(request)
        name = metadata.get("name") or request.query.get("name", "")
        fields = dict(metadata)
        fields.setdefault("contentType", request.headers.get("X-Upload-Content-Type"))
        length = request.headers.get("X-Upload-Content-Length")
        total = int(length) if length and length.isdigit() else None
        upload = state.start_upload(bucket, str(name), fields, pre, declared=metadata, total=total)
        location = f"{_base(request)}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={upload.upload_id}"
        return web.Response(status=200, headers={"Location": location, "X-GUploader-UploadID": upload.upload_id})
    raise ApiError(400, f"Invalid upload type: '{upload_type}'.", reason="invalid")


def _hash_header(value: str | None) -> dict[str, str]:
    """``x-goog-hash: crc32c=...,md5=...`` → ``{"crc32c": ..., "md5Hash": ...}``."""
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        key, _, digest = item.strip().partition("=")
        if key == "crc32c":
            out["crc32c"] = digest
        elif key == "md5":
            out["md5Hash"] = digest
    return out


async def objects_upload_chunk(request: web.Request, world: World) -> web.StreamResponse:
    upload_id = request.query.get("upload_id")
    if not upload_id:
        raise ApiError(400, "Missing upload_id.", reason="invalid")
    state = _state(world)
    data = await request.read()
    header = request.headers.get("Content-Range", "")
    start: int | None
    total: int | None
    if not header:
        # A single PUT of the whole object.
        start, total = 0, len(data)
    else:
        match = _CONTENT_RANGE.match(header.strip())
        if match is None:
            raise ApiError(400, f"Invalid Content-Range header: {header!r}", reason="invalid")
        first, last, total_s = match.groups()
        start = int(first) if first is not None else None
        if start is not None and int(last) - start + 1 != len(data):
            raise ApiError(400, "Content-Range does not match the length of the chunk.", reason="invalid")
        total = int(total_s) if total_s != "*" else None
    upload = state.upload_chunk(upload_id, start, data, total, _hash_header(request.headers.get("x-goog-hash")))
    if upload.done is not None:
        return _json(request, render_object(upload.done, _base(request)))
    headers = {"X-GUploader-UploadID": upload.upload_id}
    if upload.received:
        headers["Range"] = f"bytes=0-{len(upload.received) - 1}"
    # 308 "Resume Incomplete" (aiohttp has no reason phrase for it; the client checks the code only).
    return web.Response(status=308, headers=headers)


def _routes(specs: Iterable[tuple[str, str, str, Any]]) -> list[Route]:
    return [Route(http, path, method, handler, FLAVOR) for http, path, method, handler in specs]


B = "/storage/v1/b"
OBJECTS = "/storage/v1/b/{bucket}/o"
OBJ = OBJECTS + "/{object:.+}"
ROUTES: list[Route] = _routes(
    [
        ("GET", B, "storage.buckets.list", buckets_list),
        ("POST", B, "storage.buckets.insert", buckets_insert),
        ("GET", B + "/{bucket}", "storage.buckets.get", buckets_get),
        ("DELETE", B + "/{bucket}", "storage.buckets.delete", buckets_delete),
        ("GET", OBJECTS, "storage.objects.list", objects_list),
        ("GET", OBJ, "storage.objects.get", objects_get),
        ("PATCH", OBJ, "storage.objects.patch", objects_patch),
        ("DELETE", OBJ, "storage.objects.delete", objects_delete),
        ("POST", "/upload" + OBJECTS, "storage.objects.insert", objects_upload),
        ("PUT", "/upload" + OBJECTS, "storage.objects.insert", objects_upload_chunk),
        ("GET", "/download" + OBJ, "storage.objects.get", objects_download),
    ]
)
