"""The deploy config: YAML → a typed, validated ``DeployConfig`` (pydantic v2).

``load_config(path)`` is the one way in. Whatever is wrong with the file — not YAML, a duplicate
key, an unknown key, a wrong type, a value outside what can be expressed — ends as one
``ConfigError`` naming the file, the LINE, the key path and what is allowed; never a traceback.

What the loader does *not* reject: values that are well-formed but break a platform rule (a request
timeout of 86400 s, concurrency 5000, ``timeout_sec`` on a serverless-NEG backend service, a
hop-by-hop custom header...). Those load, so that ``deployer check`` (``deployer/preflight/``) can
explain them with Google's documented rule and what to write instead.

Naming follows what a release engineer writes, mapped to the APIs in ``deployer/desired.py``:

- ``service.cpu_throttling`` means what gcloud's ``--[no-]cpu-throttling`` means: ``true`` = CPU
  only during requests, ``false`` = CPU always allocated. The Cloud Run v2 field is
  ``resources.cpu_idle`` and the mapping is ``cpu_idle = cpu_throttling`` (gcp-facts §1.4:
  "Use --cpu-throttling to enable and --no-cpu-throttling to disable"; "cpu_idle = true ⇔
  --cpu-throttling"). ``service.billing`` (``request-based`` / ``instance-based``) is the same
  setting in the words of Google's billing-settings page; write either. Writing both with opposite
  meanings — the seed's inverted ``--cpu-throttling`` — is preflight CR023's error.
- ``service.image`` may hold ``${VAR}`` references, filled from the environment (Cloud Build
  substitutions passed as env); a variable that is not set, or is set but empty, is a ``ConfigError``
  naming it.
  ``$$`` writes a literal ``$``.
- Durations (``timeout``, ``bake_seconds``, rate-limit intervals...) are seconds: an integer, or a
  string such as ``"3600s"``, ``"60m"`` or ``"1h"``.
- Env values are strings; YAML numbers and booleans are turned into their text (``25`` → ``"25"``,
  ``true`` → ``"true"``). A mapping ``{secret: NAME, version: V}`` is a Secret Manager reference.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deployer import facts
from deployer.errors import ConfigError

# ---- value helpers -----------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, None: 1}


def _seconds(value: Any) -> Any:
    """``3600``, ``"3600"``, ``"3600s"``, ``"60m"``, ``"1h"`` → 3600. Anything else is left for the type check."""
    if isinstance(value, bool):
        return value  # rejected by the strict int check with a clear message
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected seconds: an integer or a string such as '3600s', '60m' or '1h' (got {value!r})")
        return int(match.group(1)) * _UNIT[match.group(2)]
    return value


def _float_seconds(value: Any) -> Any:
    if isinstance(value, str):
        return _seconds(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _to_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _env_text(value: Any) -> Any:
    """YAML scalars become the text Cloud Run will see; mappings are left for ``SecretRef``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, date):  # an unquoted 2025-01-01 is a YAML date; the app gets the text
        return value.isoformat()
    return value


def _cpu_text(value: Any) -> Any:
    """``2`` → ``"2"``, ``0.5`` → ``"500m"``; strings as written (``"1"``, ``"500m"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{round(value * 1000)}m"
    return value


_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
# Kubernetes quantities as Cloud Run reads them (gcp-facts §1.4 limits, e.g. "512Mi", "4Gi").
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


def _check_cpu(value: str) -> str:
    if not _CPU.match(value):
        raise ValueError(f"expected a CPU quantity such as '1', '2', '4', '8' or '500m' (got {value!r})")
    return value


def _check_memory(value: str) -> str:
    if not _MEMORY.match(value):
        raise ValueError(f"expected a memory quantity such as '512Mi' or '4Gi' (got {value!r})")
    return value


def _one_of(allowed: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)} (got {value!r})")
        return value

    return check


_ACTION = re.compile(r"^(allow|deny\((\d{3})\)|deny|redirect|throttle|rate_based_ban|fairshare)$")


def _armor_action(value: Any) -> Any:
    """gcloud spellings become API spellings: ``deny-403`` → ``deny(403)``, ``rate-based-ban`` → ``rate_based_ban``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    gcloud = re.fullmatch(r"deny-(\d{3})", text)
    if gcloud:
        text = f"deny({gcloud.group(1)})"
    text = text.replace("rate-based-ban", "rate_based_ban")
    if not _ACTION.match(text):
        raise ValueError(
            "must be one of: allow, deny(STATUS), redirect, throttle, rate_based_ban, fairshare "
            f"(gcloud spellings such as deny-403 are accepted) (got {value!r})"
        )
    return text


def _deny_action(value: Any) -> Any:
    """Rate-limit ``exceed_action``: ``deny(STATUS)`` or ``redirect`` (``deny-429`` accepted)."""
    value = _armor_action(value)
    if isinstance(value, str) and not (value.startswith("deny(") or value == "redirect"):
        raise ValueError(f"must be deny(STATUS) or redirect (got {value!r})")
    return value


def _time_of_day(value: Any) -> Any:
    """``"18:00"``; also YAML 1.1's sexagesimal reading of an unquoted ``18:00`` (the integer 1080)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return time(value // 60, value % 60)
    if isinstance(value, str):
        try:
            return time.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"expected a time of day such as '18:00' (got {value!r})") from exc
    return value


def _instant(value: Any) -> Any:
    """A date-time; YAML reads unquoted ISO timestamps itself. Naive values are UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"expected an ISO 8601 date-time such as '2025-12-20T00:00:00Z' (got {value!r})") from exc
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


Seconds = Annotated[int, BeforeValidator(_seconds), Field(ge=0)]
FloatSeconds = Annotated[float, BeforeValidator(_float_seconds), Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


# ---- Cloud Run -----------------------------------------------------------------------------------


class SecretRef(_Model):
    """An env var filled from Secret Manager (``valueSource.secretKeyRef``)."""

    secret: Name
    version: Annotated[str, BeforeValidator(_env_text), Field(min_length=1)] = "latest"


_TAG_VALUE, _TAG_SECRET = "<env value>", "<secret ref>"  # pydantic puts these in error locations


def _env_kind(value: Any) -> str:
    return _TAG_SECRET if isinstance(value, dict) else _TAG_VALUE


EnvValue = Annotated[
    Annotated[str, Tag(_TAG_VALUE)] | Annotated[SecretRef, Tag(_TAG_SECRET)],
    Discriminator(_env_kind),
    BeforeValidator(_env_text),
]


class StartupProbe(_Model):
    """The container's startup probe: ``tcp`` (port open) or ``http`` (a GET on ``path``)."""

    type: Literal["tcp", "http"] = "http"
    path: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    initial_delay_seconds: Seconds = 0
    timeout_seconds: Annotated[Seconds, Field(ge=1)] = 1
    period_seconds: Annotated[Seconds, Field(ge=1)] = 10
    failure_threshold: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _path_for_http(self) -> StartupProbe:
        if self.type == "http" and not self.path:
            raise ValueError("an http startup probe needs a path, such as '/health'")
        if self.type == "tcp" and self.path:
            raise ValueError("a tcp startup probe has no path (use type: http to probe a path)")
        return self


# gcloud's --ingress spellings and the v2 enum names they stand for (gcp-facts §3.5).
INGRESS = {
    "all": "INGRESS_TRAFFIC_ALL",
    "internal": "INGRESS_TRAFFIC_INTERNAL_ONLY",
    "internal-and-cloud-load-balancing": "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
}


def _ingress(value: Any) -> Any:
    if isinstance(value, str):
        by_enum = {v: k for k, v in INGRESS.items()}
        return by_enum.get(value, value)
    return value


class ServiceConfig(_Model):
    """The Cloud Run service and its revision template."""

    name: Name
    image: Name
    env: dict[str, EnvValue] = {}
    # Seconds; None = not set (Cloud Run's default, 300 s, gcp-facts §1.1).
    timeout: Seconds | None = None
    # None or 0 = Cloud Run's default (gcp-facts §1.2: defaults conflict; set it).
    concurrency: Annotated[int, Field(ge=0)] | None = None
    cpu: Annotated[str, BeforeValidator(_cpu_text), AfterValidator(_check_cpu)] = "1"
    memory: Annotated[str, AfterValidator(_check_memory)] = "512Mi"
    # gcloud meaning: true = throttled (CPU only during requests), false = CPU always allocated.
    # v2: resources.cpu_idle = cpu_throttling (gcp-facts §1.4). None = not written (see `cpu_idle`).
    cpu_throttling: bool | None = None
    # The same platform field in Google's current words (gcp-facts §1.4: "Current docs name this a billing
    # setting"): request-based = CPU only during requests (cpu_idle true), instance-based = CPU always
    # allocated (cpu_idle false, gcloud --no-cpu-throttling).
    billing: Literal["request-based", "instance-based"] | None = None
    startup_cpu_boost: bool = True
    min_instances: Annotated[int, Field(ge=0)] = 0
    max_instances: Annotated[int, Field(ge=1)] | None = None
    session_affinity: bool = False
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # ContainerPort.name: "http1" or "h2c" (gcp-facts §1.7).
    port_name: Literal["http1", "h2c"] = "http1"
    startup_probe: StartupProbe | None = None
    ingress: Annotated[Literal["all", "internal", "internal-and-cloud-load-balancing"], BeforeValidator(_ingress)] = (
        "all"
    )
    service_account: str | None = None
    execution_environment: Literal["gen1", "gen2"] | None = None
    labels: dict[str, Annotated[str, BeforeValidator(_env_text)]] = {}
    annotations: dict[str, Annotated[str, BeforeValidator(_env_text)]] = {}

    @field_validator("image")
    @classmethod
    def _substitute(cls, value: str, info: ValidationInfo) -> str:
        environ = (info.context or {}).get("environ")
        # An empty value is refused here (the pipelines default `_IMAGE: ""`: a forgotten substitution
        # would deploy image ''); substitute() itself keeps an empty value legitimate for other uses.
        return substitute(value, environ if environ is not None else _os_environ(), empty_ok=False)

    @property
    def ingress_enum(self) -> str:
        return INGRESS[self.ingress]

    @property
    def cpu_idle(self) -> bool:
        """v2 ``resources.cpu_idle``: ``billing`` when written, else ``cpu_throttling``, else true (§1.4 default).

        Both written and disagreeing is preflight CR023's error (deploy refuses); ``billing`` — the intent in
        Google's words — is what this returns then.
        """
        if self.billing is not None:
            return self.billing == "request-based"
        return True if self.cpu_throttling is None else self.cpu_throttling

    def plain_env(self) -> dict[str, str]:
        """The literal env values (secret references left out)."""
        return {k: v for k, v in self.env.items() if isinstance(v, str)}


def _os_environ() -> Mapping[str, str]:
    import os

    return os.environ


_VAR = re.compile(r"\$\$|\$\{([^}]*)\}")


def substitute(text: str, environ: Mapping[str, str], *, empty_ok: bool = True) -> str:
    """Fill ``${VAR}`` from ``environ``; ``$$`` is a literal ``$``. A missing variable is a ValueError naming it,
    and so is one that is set but empty unless ``empty_ok``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"'${{{name}}}' is not a variable reference (names are letters, digits and _)")
        if name not in environ:
            raise ValueError(
                f"environment variable {name} is not set (referenced as ${{{name}}}); "
                "set it, e.g. from a Cloud Build substitution"
            )
        value = environ[name]
        if not value and not empty_ok:
            raise ValueError(
                f"environment variable {name} is set but empty (referenced as ${{{name}}}); "
                "set it, e.g. from a Cloud Build substitution (_IMAGE defaults to empty)"
            )
        return value

    return _VAR.sub(repl, text)


# ---- load balancer ------------------------------------------------------------------------------

# BackendService.protocol values (Compute v1).
BACKEND_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "H2C", "TCP", "SSL", "UDP", "GRPC", "UNSPECIFIED")


class LoadBalancerConfig(_Model):
    """The global external Application Load Balancer's backend service (a serverless NEG behind it)."""

    backend_service: Name
    url_map: str | None = None
    protocol: Annotated[str, AfterValidator(_one_of(BACKEND_PROTOCOLS))] = "HTTPS"
    # "Name: value" strings, as Compute's customRequestHeaders holds them (gcp-facts §2.5).
    custom_request_headers: list[str] = []
    log_enable: bool = True
    log_sample_rate: Annotated[float, BeforeValidator(_to_float)] = 1.0
    # Present so wrong values can be caught by `check` (gcp-facts §2.1, §2.4): leave them unset.
    timeout_sec: Annotated[int, Field(ge=0)] | None = None
    session_affinity: Annotated[str, AfterValidator(_one_of(facts.BACKEND_SESSION_AFFINITIES))] | None = None
    affinity_cookie_ttl_sec: Annotated[int, Field(ge=0)] | None = None


# ---- Cloud Armor --------------------------------------------------------------------------------


class BanThreshold(_Model):
    count: Annotated[int, Field(ge=0)]
    interval_sec: Seconds


class RateLimit(_Model):
    """``rateLimitOptions`` of a throttle / rate_based_ban rule (gcp-facts §3.2), flattened."""

    count: Annotated[int, Field(ge=0)]
    interval_sec: Seconds
    conform_action: str = "allow"
    exceed_action: Annotated[str, BeforeValidator(_deny_action)] = "deny(429)"
    enforce_on_key: Annotated[str, AfterValidator(_one_of(facts.ARMOR_ENFORCE_ON_KEYS))] | None = None
    enforce_on_key_name: str | None = None
    ban_duration_sec: Seconds | None = None
    ban_threshold: BanThreshold | None = None


class ArmorRule(_Model):
    """One Cloud Armor rule this config owns, by priority."""

    priority: Annotated[int, Field(ge=0)]
    action: Annotated[str, BeforeValidator(_armor_action)]
    description: str = ""
    expression: str | None = None
    src_ip_ranges: list[str] | None = None
    preview: bool = False
    rate_limit: RateLimit | None = None

    @model_validator(mode="after")
    def _one_match(self) -> ArmorRule:
        if (self.expression is None) == (self.src_ip_ranges is None):
            raise ValueError("a rule matches with exactly one of 'expression' or 'src_ip_ranges'")
        return self


class ArmorConfig(_Model):
    """The Cloud Armor policy attached to the backend service, and the rules this config owns."""

    policy: Name
    # The default rule (priority 2147483647); None = leave it as it is. gcp-facts §3.1: set it.
    default_action: Annotated[str, BeforeValidator(_armor_action)] | None = None
    rules: list[ArmorRule] = []


# ---- rollout, gate, state, freeze ---------------------------------------------------------------


class RolloutConfig(_Model):
    """Traffic steps (percent of users on the new revision) and the bake time between them."""

    steps: list[Annotated[int, Field(ge=1, le=100)]] = [10, 50, 100]
    bake_seconds: Seconds = 60
    # The tag that addresses the candidate revision (tag + service ≤ 46 chars, gcp-facts §4.5).
    tag: Annotated[str, Field(min_length=1)] = "candidate"

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if not steps:
            raise ValueError("needs at least one step, and the last one is 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase strictly (got {steps})")
        if steps[-1] != 100:
            raise ValueError(f"the last step must be 100 (got {steps[-1]})")
        return steps


_GATE_MIN_SAMPLES = 10  # = deployer.gate.verdict.DEFAULT_MIN_SAMPLES (not imported: that package loads websockets)


class GateOptions(_Model):
    """The options of ``deployer gate`` for one target (see ``deployer gate --help``)."""

    # None for the candidate: its tagged URL is read from the service (traffic_statuses[].uri).
    url: str | None = None
    path: str = "/ws"
    host: str | None = None
    connections: Annotated[int, Field(ge=1)] = 20
    concurrency: Annotated[int, Field(ge=1)] = 10
    hold: FloatSeconds = 5.0
    ping: Annotated[int, Field(ge=0)] = 3
    send: str | None = None
    expect: str | None = None
    headers: dict[str, Annotated[str, BeforeValidator(_env_text)]] = {}
    bearer_env: str | None = None
    id_token: bool = False
    subprotocol: str | None = None
    origin: str | None = None
    p95_ms: Annotated[float, BeforeValidator(_to_float), Field(gt=0)] | None = None
    # Default: 10 (deployer/gate/verdict.py DEFAULT_MIN_SAMPLES), or every connection when fewer are
    # asked for, as `deployer gate` does; a min_samples written above connections is refused below.
    min_samples: Annotated[int, Field(ge=1)] = _GATE_MIN_SAMPLES

    @model_validator(mode="before")
    @classmethod
    def _default_min_samples(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "min_samples" not in data:
            connections = data.get("connections")
            if type(connections) is int and 1 <= connections < _GATE_MIN_SAMPLES:
                return {**data, "min_samples": connections}
        return data

    @field_validator("expect")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GateOptions:
        if self.expect is not None and self.send is None:
            raise ValueError("'expect' needs 'send' (the message whose answer it matches)")
        if self.min_samples > self.connections:
            raise ValueError(
                f"min_samples ({self.min_samples}) is more than connections ({self.connections}): "
                "the gate could never pass"
            )
        if self.url is not None and not re.match(r"^wss?://", self.url):
            raise ValueError(f"url must start with ws:// or wss:// (got {self.url!r})")
        return self


class GateConfig(_Model):
    """The gate on the candidate revision (through its tag) and on the public path (at each step)."""

    candidate: GateOptions = GateOptions()
    public: GateOptions = GateOptions()


class StateConfig(_Model):
    """Where the journal and the lock live: a local directory, or a Cloud Storage bucket + prefix.

    A relative ``path`` is relative to the directory of the config file, not to the current directory:
    the config names the environment, so every command run with it, from anywhere, takes the same lock
    and reads the same journal. ``load_config`` makes it absolute (``-c /dev/stdin``: against the current
    directory), and refuses a path that names an existing file (``state.path: README.md``) as a
    ``ConfigError``. A config built from text or data (``parse_config``) keeps it as written.
    """

    backend: Literal["local", "gcs"] = "local"
    path: str = ".deployer/"
    bucket: str | None = None
    prefix: str = "deployer"

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        # Google's bucket naming requirements, the rule the local cloud's storage API enforces too (facts.py)
        problem = None if value is None else facts.gcs_bucket_name_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("prefix")
    @classmethod
    def _object_prefix(cls, value: str, info: ValidationInfo) -> str:
        # Written only where it means something: the objects' name prefix in the bucket, not a path.
        if info.data.get("backend") == "local":
            raise ValueError("prefix is for backend: gcs (this state is local: use path)")
        if value.startswith("/"):
            raise ValueError(f"{value!r} starts with '/': object names are relative to the bucket (write it without)")
        if "\r" in value or "\n" in value:  # object naming: no carriage return or line feed
            raise ValueError(f"{value!r} may not contain a line break")
        if "//" in value or any(part in (".", "..") for part in value.split("/")):
            raise ValueError(f"{value!r} has an empty, '.' or '..' part; write names separated by one '/'")
        return value

    @field_validator("path")
    @classmethod
    def _path_for_local(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "gcs":
            raise ValueError("path is for backend: local (this state is in a bucket: use bucket and prefix)")
        return value

    @model_validator(mode="after")
    def _bucket_for_gcs(self) -> StateConfig:
        if self.backend == "gcs" and not self.bucket:
            raise ValueError("backend: gcs needs a bucket")
        if self.backend == "local" and self.bucket:
            raise ValueError("bucket is for backend: gcs (this state is local)")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class FreezeWindow(_Model):
    """A time when deploys are refused (issue 7 honours them): either one span (``start``..``end``)
    or a weekly one (``days`` with ``from``..``to`` times of day in ``timezone``)."""

    reason: str = ""
    start: Annotated[datetime, BeforeValidator(_instant)] | None = None
    end: Annotated[datetime, BeforeValidator(_instant)] | None = None
    days: list[Weekday] | None = None
    from_time: Annotated[time, BeforeValidator(_time_of_day)] | None = Field(default=None, alias="from")
    to_time: Annotated[time, BeforeValidator(_time_of_day)] | None = Field(default=None, alias="to")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _one_form(self) -> FreezeWindow:
        span = self.start is not None or self.end is not None
        weekly = self.days is not None or self.from_time is not None or self.to_time is not None
        if span == weekly:
            raise ValueError("a freeze window is either start/end, or days with from/to")
        if span and (self.start is None or self.end is None or self.end <= self.start):
            raise ValueError("a freeze window needs start and end, with end after start")
        if weekly and (not self.days or self.from_time is None or self.to_time is None):
            raise ValueError("a weekly freeze window needs days, from and to")
        if weekly and self.from_time == self.to_time:  # active() holds for from <= t < to: never
            raise ValueError(
                f"a weekly freeze window from {self.from_time:%H:%M} to the same time is empty (it freezes nothing); "
                "make to differ from from (to earlier than from runs over midnight), or use a start/end span"
            )
        return self

    def active(self, at: datetime) -> bool:
        """Whether ``at`` (timezone-aware) falls in this window. A weekly window whose ``to`` is
        earlier than ``from`` runs over midnight into the next day."""
        if self.start is not None and self.end is not None:
            return self.start <= at < self.end
        assert self.days is not None and self.from_time is not None and self.to_time is not None
        local = at.astimezone(_zone(self.timezone))
        day, now = _WEEKDAYS[local.weekday()], local.time().replace(tzinfo=None)
        if self.from_time <= self.to_time:
            return day in self.days and self.from_time <= now < self.to_time
        yesterday = _WEEKDAYS[(local - timedelta(days=1)).weekday()]
        return (day in self.days and now >= self.from_time) or (yesterday in self.days and now < self.to_time)


def _zone(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')") from exc


# ---- the whole config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigSource:
    """Where a config came from: the file and the line of every key path (for messages)."""

    file: str = "<config>"
    lines: Mapping[tuple[str | int, ...], int] = field(default_factory=dict)

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The line of ``path``, or of its nearest ancestor the file has."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


class DeployConfig(_Model):
    """One environment: where, what runs, how it is exposed and protected, and how it rolls out."""

    project: Name
    region: Name
    service: ServiceConfig
    load_balancer: LoadBalancerConfig | None = None
    armor: ArmorConfig | None = None
    rollout: RolloutConfig = RolloutConfig()
    gate: GateConfig = GateConfig()
    state: StateConfig = StateConfig()
    # A local cloud's API endpoint (http://127.0.0.1:8480) instead of Google.
    endpoint: str | None = None
    freeze: list[FreezeWindow] = []

    _source: ConfigSource = PrivateAttr(default_factory=ConfigSource)

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint must be an http:// or https:// URL (got {value!r})")
        if value is not None:
            from urllib.parse import urlsplit

            try:
                urlsplit(value).port  # noqa: B018 - raises ValueError for a port that is not 0..65535
            except ValueError:
                raise ValueError(f"endpoint {value!r} has an invalid port (0..65535)") from None
        return value

    @property
    def source(self) -> ConfigSource:
        return self._source

    def line_of(self, key: str) -> int | None:
        """The line in the file of a dotted key path such as ``armor.rules[0].expression``."""
        return self._source.line_of(parse_key(key))

    @property
    def service_path(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/services/{self.service.name}"


# ---- key paths ----------------------------------------------------------------------------------

_SEGMENT = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def format_key(path: tuple[str | int, ...]) -> str:
    """``("armor", "rules", 0, "priority")`` → ``armor.rules[0].priority``."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


def parse_key(key: str) -> tuple[str | int, ...]:
    """The inverse of ``format_key`` (env names with dots are not supported; they are not valid anyway)."""
    return tuple(int(m.group(1)) if m.group(1) is not None else m.group(2) for m in _SEGMENT.finditer(key))


# ---- loading ------------------------------------------------------------------------------------


# Far above any real config (configs/staging.yaml is ~5 KiB); it only stops `-c /dev/zero`-like inputs.
CONFIG_MAX_BYTES = 1024 * 1024


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> DeployConfig:
    """Read, parse and validate a config file. Every problem is a ``ConfigError`` (file:line: key: what)."""
    p = Path(path)
    name = str(path)
    if not name.strip():  # `-c "$CONFIG"` with CONFIG unset: Path("") is the current directory
        raise ConfigError(
            "no config file named (-c is empty)", hint="pass the config with -c, e.g. -c configs/staging.yaml"
        )
    try:
        if stat.S_ISCHR(p.stat().st_mode) or stat.S_ISBLK(p.stat().st_mode):
            raise ConfigError("is a device, not a config file", file=name)
        with p.open("rb") as fh:  # a pipe is fine (`-c /dev/stdin`); an endless stream is cut off
            raw = fh.read(CONFIG_MAX_BYTES + 1)
        if len(raw) > CONFIG_MAX_BYTES:
            raise ConfigError(f"is larger than {CONFIG_MAX_BYTES // 1024} KiB; a deploy config is a few KiB", file=name)
        text = raw.decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            "no such file", file=name, hint="pass the config with -c, e.g. -c configs/staging.yaml"
        ) from exc
    except IsADirectoryError as exc:
        raise ConfigError("is a directory, not a config file", file=name) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=name) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=name) from exc
    return anchor_state(parse_config(text, file=name, environ=environ), config_dir(p))


def config_dir(path: Path) -> Path:
    """The directory a config's relative ``state.path`` is taken from: the config file's own (symlinks
    followed); the current directory for a stream (``-c /dev/stdin``, ``/dev/fd/N``, a pipe)."""
    parts = Path(os.path.abspath(path)).parts
    if parts[1:2] in (("dev",), ("proc",)) or not path.is_file():
        return Path.cwd()
    return path.resolve().parent


def anchor_state(config: DeployConfig, base: Path) -> DeployConfig:
    """``config`` with a local ``state.path`` made absolute against ``base``; a path that can never be a
    directory (it, or a parent, is an existing file) is a ``ConfigError`` at ``state.path``'s line."""
    state = config.state
    if state.backend != "local":
        return config
    path = Path(os.path.normpath(base / Path(state.path).expanduser()))  # an absolute path stays itself
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            what = "is a file" if existing == path else f"cannot be a directory: {existing} is a file"
            raise ConfigError(
                f"{state.path!r} ({path}) {what}; it names the directory for the journal and the lock",
                file=config.source.file,
                line=config.source.line_of(("state", "path")),
                key="state.path",
                hint="name a directory (the default .deployer/ sits beside the config), or use backend: gcs",
            )
        break
    return config.model_copy(update={"state": state.model_copy(update={"path": str(path)})})


def parse_config(text: str, *, file: str = "<config>", environ: Mapping[str, str] | None = None) -> DeployConfig:
    """``load_config`` for text already in memory."""
    data, lines = _read_yaml(text, file)
    return config_from_data(data, source=ConfigSource(file=file, lines=lines), environ=environ)


def config_from_data(
    data: Any, *, source: ConfigSource | None = None, environ: Mapping[str, str] | None = None
) -> DeployConfig:
    """Validate already-parsed data (a mapping); every problem is a ``ConfigError``."""
    source = source or ConfigSource()
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"{_kind(data)}"
        raise ConfigError(
            f"a config is a mapping of keys (project, region, service, ...) at the top level, got {got}",
            file=source.file,
            line=1,
            hint=f"allowed keys: {', '.join(_aliases(DeployConfig))}",
        )
    try:
        config = DeployConfig.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise _config_error(exc, data, source) from None
    except RecursionError:
        raise ConfigError("the document nests too deeply (or refers to itself)", file=source.file, line=1) from None
    config._source = source
    return config


def _read_yaml(text: str, file: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    try:
        loader = yaml.SafeLoader(text)  # the reader already refuses unprintable characters
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}".replace("\n", " "), file=file, line=1) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[tuple[str | int, ...], int] = {}
        _index_lines(node, (), lines, file, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise ConfigError(
            f"not valid YAML: {problem or exc}", file=file, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(" ".join(f"not valid YAML: {exc}".split()), file=file) from None
    except RecursionError:
        raise ConfigError("the document nests too deeply", file=file, line=1) from None
    finally:
        loader.dispose()
    return data, lines


def _index_lines(
    node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int], file: str, seen: set[int]
) -> None:
    """Record the line of every key path; refuse duplicate keys (PyYAML would keep the last silently)."""
    if id(node) in seen:  # an alias to a node already walked
        return
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys: pydantic will refuse them with the parent's line
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key == "<<":  # a merge key: its mapping's keys belong to this level
                _index_lines(value_node, path, lines, file, seen)
                continue
            if key in first:
                raise ConfigError(
                    f"duplicate key (first at line {first[key]})", file=file, line=line, key=format_key((*path, key))
                )
            first[key] = line
            lines[(*path, key)] = line
            _index_lines(value_node, (*path, key), lines, file, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index_lines(item, (*path, i), lines, file, seen)


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return _kind(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "datetime_type": "a date-time",
    "time_type": "a time of day",
}


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[tuple[str | int, ...], Any, bool]:
    """Follow pydantic's ``loc`` through the data, dropping its union tags; returns (path, value, found)."""
    path: list[str | int] = []
    current = data
    found = True
    for seg in loc:
        if isinstance(current, dict) and seg in current:
            path.append(str(seg))
            current = current[seg]
        elif isinstance(current, dict) and str(seg) in {str(k) for k in current}:
            key = next(k for k in current if str(k) == str(seg))
            path.append(str(seg))
            current = current[key]
        elif isinstance(current, list) and isinstance(seg, int) and 0 <= seg < len(current):
            path.append(seg)
            current = current[seg]
        elif isinstance(seg, str) and (seg in ("[key]", _TAG_VALUE, _TAG_SECRET) or not isinstance(current, dict)):
            continue  # a union tag or key marker, not a place in the document
        else:
            path.append(str(seg))
            found = False
            break
    return tuple(path), current, found


def _config_error(exc: ValidationError, data: Any, source: ConfigSource) -> ConfigError:
    errors = exc.errors(include_url=False)
    rendered = []
    for err in errors:
        path, value, found = _data_path(tuple(err["loc"]), data)
        message, hint = _describe(err, path, value, found)
        if err["type"] == "missing":
            path = path[:-1]  # the key is not in the file: point at its parent
        line = source.line_of(path)
        # On one line, an unknown key explains a missing one (a typo): report it first.
        rendered.append((line or 0, 0 if err["type"] == "extra_forbidden" else 1, path, message, hint))
    rendered.sort(key=lambda r: (r[0], r[1]))
    line, _, path, message, hint = rendered[0]
    if len(rendered) > 1:
        message += f" (and {len(rendered) - 1} more problem{'s' if len(rendered) > 2 else ''})"
    key = _one_line(format_key(path)) or None
    return ConfigError(_one_line(message), file=source.file, line=line or None, key=key, hint=hint)


def _one_line(text: str) -> str:
    """Control characters (a key named "\\n"...) shown escaped: an error is one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _describe(err: Any, path: tuple[str | int, ...], value: Any, found: bool) -> tuple[str, str | None]:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1])
        key = str(path[-1]) if path else "?"
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"allowed keys here: {', '.join(allowed)}" if allowed else None
        return f"unknown key{f'; did you mean {close[0]!r}?' if close else ''}", hint
    if kind == "missing":
        return f"required key {str(path[-1])!r} is missing", _allowed_hint(path[:-1])
    if "[key]" in err["loc"]:
        return f"keys must be strings, got {_kind(err['loc'][err['loc'].index('[key]') - 1])}", None
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of: {expected} (got {_shown(value)})", None
    if kind in ("value_error", "assertion_error"):
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        return msg, None
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_kind(value)}", None
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"expected a string or a {{secret: NAME, version: V}} mapping, got {_kind(value)}", None
    msg = str(err["msg"])
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(err.get("ctx", {}).values()), "?")
        return f"must be {bounds[kind]} {limit} (got {_shown(value)})", None
    if kind in ("too_short", "string_too_short") and isinstance(value, str | list | dict):
        return "must not be empty", None
    return f"{msg[0].lower()}{msg[1:]}" if msg else kind, None


def _allowed_hint(path: tuple[str | int, ...]) -> str | None:
    allowed = _allowed_keys(path)
    return f"keys here: {', '.join(allowed)}" if allowed else None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_candidates(tp: Any) -> list[Any]:
    """Unwrap Annotated / Optional / unions into the concrete types they allow."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _model_candidates(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [c for arg in typing.get_args(tp) for c in _model_candidates(arg)]
    return [tp]


def _allowed_keys(path: tuple[str | int, ...]) -> list[str]:
    """The keys the model at ``path`` allows (for 'unknown key' messages)."""
    current: list[Any] = [DeployConfig]
    for seg in path:
        following: list[Any] = []
        for tp in current:
            for cand in _model_candidates(tp):
                origin = typing.get_origin(cand)
                if isinstance(cand, type) and issubclass(cand, BaseModel) and isinstance(seg, str):
                    for name, f in cand.model_fields.items():
                        if seg in (name, f.alias):
                            following.append(f.annotation)
                elif origin is list and isinstance(seg, int):
                    following.append(typing.get_args(cand)[0])
                elif origin is dict and isinstance(seg, str):
                    following.append(typing.get_args(cand)[1])
        current = following
    keys: list[str] = []
    for tp in current:
        for cand in _model_candidates(tp):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                keys.extend(k for k in _aliases(cand) if k not in keys)
    return keys
