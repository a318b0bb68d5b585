"""Cloud Run rules: the service and its revision template (gcp-facts §1, §4.5)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from deployer import facts
from deployer.config import DeployConfig
from deployer.model import Observed
from deployer.preflight.base import Finding, Rule, Severity, register, service_resource

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

DOC_TIMEOUT = "https://cloud.google.com/run/docs/configuring/request-timeout"
DOC_WEBSOCKETS = "https://cloud.google.com/run/docs/triggering/websockets"
DOC_CONCURRENCY = "https://cloud.google.com/run/docs/about-concurrency"
DOC_CPU = "https://cloud.google.com/run/docs/configuring/cpu"
DOC_BILLING = "https://cloud.google.com/run/docs/configuring/billing-settings"
DOC_AFFINITY = "https://cloud.google.com/run/docs/configuring/session-affinity"
DOC_SCALING = "https://cloud.google.com/run/docs/about-instance-autoscaling"
DOC_ENV = "https://cloud.google.com/run/docs/configuring/services/environment-variables"
DOC_PROBES = "https://cloud.google.com/run/docs/configuring/healthchecks"
DOC_INGRESS = "https://cloud.google.com/run/docs/securing/ingress"
DOC_SERVICE_API = "https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.services"
DOC_ROLLOUTS = "https://cloud.google.com/run/docs/rollouts-rollbacks-traffic-migration"

# The gcloud / API sentence quoted in several findings (gcp-facts §1.1).
WS_TIMEOUT_QUOTE = (
    '"WebSockets streams are HTTP requests, which are still subject to the request timeout configured for '
    'your Cloud Run service"'
)


def effective_timeout(config: DeployConfig) -> int:
    """The request timeout a revision gets: the configured one, or Cloud Run's default (§1.1)."""
    t = config.service.timeout
    return facts.RUN_TIMEOUT_DEFAULT_S if t is None else t


def cpu_value(cpu: str) -> float | None:
    """``"2"`` → 2.0, ``"500m"`` → 0.5 (None when it is not a number)."""
    try:
        return int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:
        return None


def memory_bytes(memory: str) -> int | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", memory)
    if not match:
        return None
    unit = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    unit["Ti"] = 2**40
    return int(float(match.group(1)) * unit[match.group(2)])


def _env_seconds(name: str, value: str) -> int | None:
    """An env value read as seconds (``"900"``, ``"900s"``; ``*_MS`` names are milliseconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", value)
    if not match:
        return None
    number = float(match.group(1))
    if match.group(2) == "ms" or name.upper().endswith("_MS"):
        number /= 1000
    return int(number)


_LIFETIME = re.compile(r"TIMEOUT|LIFETIME|TTL|MAX_AGE|DURATION|STALE", re.I)


def websocket_lifetimes(config: DeployConfig) -> dict[str, int]:
    """``WEBSOCKET_*`` env vars that state how long a socket may live, in seconds.

    Heartbeat and interval settings are not lifetimes (CR004 and CR009 read them)."""
    out: dict[str, int] = {}
    for name, value in config.service.plain_env().items():
        upper = name.upper()
        if not upper.startswith("WEBSOCKET_") or "HEARTBEAT" in upper or "INTERVAL" in upper:
            continue
        if _LIFETIME.search(upper):
            seconds = _env_seconds(name, value)
            if seconds is not None:
                out[name] = seconds
    return out


def _env_field(name: str) -> str:
    return f"service.env.{name}"


# ---- CR001: request timeout range ---------------------------------------------------------------
# gcp-facts §1.1: "The timeout is set by default to 5 minutes (300 seconds) and can be extended up to
# 60 minutes (3600 seconds)." gcloud's lower bound is 1 s.
CR001 = Rule("CR001", ERROR, "Cloud Run request timeout outside 1–3600 s", DOC_TIMEOUT)


@register(CR001)
def timeout_range(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    t = config.service.timeout
    if t is None or facts.RUN_TIMEOUT_MIN_S <= t <= facts.RUN_TIMEOUT_MAX_S:
        return
    yield CR001.at(
        service_resource(config),
        "service.timeout",
        f'request timeout {t} s is outside what Cloud Run accepts: "The timeout is set by default to 5 minutes '
        f'(300 seconds) and can be extended up to 60 minutes (3600 seconds)." A WebSocket lives at most this long.',
        f"timeout: {min(max(t, facts.RUN_TIMEOUT_MIN_S), facts.RUN_TIMEOUT_MAX_S)}  # clients must reconnect after it",
    )


# ---- CR002 / CR003: app WebSocket lifetimes vs the request timeout ------------------------------
# gcp-facts §1.1: "if the client keeps the connection open longer than the required timeout configured
# for the Cloud Run service, the client will be disconnected when the request times out." §2.2: the
# effective lifetime is min(60 min, template.timeout).
CR002 = Rule("CR002", WARNING, "WEBSOCKET_* lifetime longer than the request timeout", DOC_WEBSOCKETS)
CR003 = Rule("CR003", ERROR, "WEBSOCKET_* lifetime longer than Cloud Run's maximum (3600 s)", DOC_WEBSOCKETS)


@register(CR002)
def lifetime_over_timeout(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    timeout = effective_timeout(config)
    for name, seconds in websocket_lifetimes(config).items():
        if timeout < seconds <= facts.RUN_TIMEOUT_MAX_S:
            set_or_default = "configured" if config.service.timeout is not None else "default"
            yield CR002.at(
                service_resource(config),
                _env_field(name),
                f"{name}={seconds} s outlives the {set_or_default} request timeout of {timeout} s: Cloud Run closes "
                f"the socket first ({WS_TIMEOUT_QUOTE}).",
                f"timeout: {seconds}  (≤ 3600), or {name}: {timeout}",
            )


@register(CR003)
def lifetime_over_platform(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for name, seconds in websocket_lifetimes(config).items():
        if seconds > facts.RUN_TIMEOUT_MAX_S:
            yield CR003.at(
                service_resource(config),
                _env_field(name),
                f"{name}={seconds} s promises a WebSocket lifetime no configuration can give: on Cloud Run a "
                f'WebSocket is a request, and the request timeout "can be extended up to 60 minutes (3600 seconds)"; '
                f'behind the load balancer the serverless-NEG timeout is "60 minutes. This timeout is not '
                f'configurable." No Google document defines a WEBSOCKET_TIMEOUT setting; env vars only reach '
                f"your code.",
                f"{name}: {facts.RUN_TIMEOUT_MAX_S} with service.timeout: {facts.RUN_TIMEOUT_MAX_S}, and make clients "
                f"reconnect",
            )


# ---- CR004: heartbeat settings ------------------------------------------------------------------
# App consistency, bounded by gcp-facts §1.1: a heartbeat interval at or above the heartbeat timeout
# declares every idle peer dead; one at or above the request timeout never fires before Cloud Run
# closes the socket.
CR004 = Rule(
    "CR004", ERROR, "Heartbeat interval not below the heartbeat timeout and the request timeout", DOC_WEBSOCKETS
)


@register(CR004)
def heartbeat(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    env = config.service.plain_env()
    interval_raw = env.get("WEBSOCKET_HEARTBEAT_INTERVAL")
    interval = _env_seconds("WEBSOCKET_HEARTBEAT_INTERVAL", interval_raw) if interval_raw is not None else None
    if interval is None:
        return
    timeout_raw = env.get("WEBSOCKET_HEARTBEAT_TIMEOUT")
    hb_timeout = _env_seconds("WEBSOCKET_HEARTBEAT_TIMEOUT", timeout_raw) if timeout_raw is not None else None
    if hb_timeout is not None and interval >= hb_timeout:
        yield CR004.at(
            service_resource(config),
            _env_field("WEBSOCKET_HEARTBEAT_INTERVAL"),
            f"WEBSOCKET_HEARTBEAT_INTERVAL={interval} s is not below WEBSOCKET_HEARTBEAT_TIMEOUT={hb_timeout} s: the "
            f"app declares a peer dead before the next heartbeat is even sent.",
            f"WEBSOCKET_HEARTBEAT_INTERVAL: {max(1, hb_timeout // 3)}  (a third of the heartbeat timeout)",
        )
    request_timeout = effective_timeout(config)
    if interval >= request_timeout:
        yield CR004.at(
            service_resource(config),
            _env_field("WEBSOCKET_HEARTBEAT_INTERVAL"),
            f"WEBSOCKET_HEARTBEAT_INTERVAL={interval} s is not below the request timeout of {request_timeout} s: "
            f"Cloud Run closes the socket before the first heartbeat ({WS_TIMEOUT_QUOTE}).",
            f"WEBSOCKET_HEARTBEAT_INTERVAL: {max(1, min(request_timeout // 4, 30))}",
        )


# ---- CR005: concurrency maximum -----------------------------------------------------------------
# gcp-facts §1.2: "You can increase this to a maximum of 1,000."
CR005 = Rule("CR005", ERROR, "Concurrency above 1000", DOC_CONCURRENCY)


@register(CR005)
def concurrency_max(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    c = config.service.concurrency
    if c is not None and c > facts.RUN_CONCURRENCY_MAX:
        yield CR005.at(
            service_resource(config),
            "service.concurrency",
            f'concurrency {c} is above Cloud Run\'s limit: "You can increase this to a maximum of 1,000." Each '
            f"open WebSocket holds one slot.",
            f"concurrency: {facts.RUN_CONCURRENCY_MAX}  (and raise max_instances for more sockets)",
        )


# ---- CR006: fractional CPU ----------------------------------------------------------------------
# gcp-facts §1.2: if CPU is below 1, "Concurrency: Maximum concurrency must be set to 1." and
# "Billing: The billing settings must be set to request-based billing." (= cpu_throttling true, §1.4)
CR006 = Rule("CR006", ERROR, "CPU below 1 with concurrency above 1 or CPU always allocated", DOC_CPU)


@register(CR006)
def fractional_cpu(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    svc = config.service
    cpu = cpu_value(svc.cpu)
    if cpu is None or cpu >= 1:
        return
    if svc.concurrency is not None and svc.concurrency > 1:
        yield CR006.at(
            service_resource(config),
            "service.concurrency",
            f'cpu {svc.cpu} is below 1, and then "Maximum concurrency must be set to 1" — {svc.concurrency} '
            f"WebSockets per instance cannot be served.",
            'cpu: "1" (to keep concurrency above 1), or concurrency: 1',
        )
    if not svc.cpu_idle:
        key = "billing" if svc.billing is not None else "cpu_throttling"
        asked = "billing: instance-based" if key == "billing" else "cpu_throttling: false"
        yield CR006.at(
            service_resource(config),
            f"service.{key}",
            f'cpu {svc.cpu} is below 1, and then "The billing settings must be set to request-based billing" '
            f"(cpu_throttling: true); {asked} asks for CPU always allocated.",
            f'cpu: "1", or {"billing: request-based" if key == "billing" else "cpu_throttling: true"}',
        )


# ---- CR007: end-to-end HTTP/2 -------------------------------------------------------------------
# gcp-facts §1.1 / §1.7: "Don't enable HTTP/2 end-to-end." (ContainerPort.name "h2c" is HTTP/2 end to
# end.) A third party saw 503s for WebSockets through the LB with h2c (§2.3, [3P]).
CR007 = Rule("CR007", ERROR, "End-to-end HTTP/2 (h2c port) on a WebSocket service", DOC_WEBSOCKETS)


@register(CR007)
def h2c_port(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.service.port_name == "h2c":
        yield CR007.at(
            service_resource(config),
            "service.port_name",
            "the container port is named h2c (HTTP/2 end to end); Google's WebSockets guide says \"Don't enable "
            'HTTP/2 end-to-end." A WebSocket upgrade is an HTTP/1.1 mechanism.',
            "port_name: http1",
        )


# ---- CR008: TCP-only startup probe --------------------------------------------------------------
# A TCP probe passes as soon as the port is open: a crash-looping app that binds first passes it.
# Without a probe Cloud Run adds a TCP one (the real Cloud Run v2 response in
# gcp-http/compute-serverless-neg-cloudrun.http.log shows "startupProbe": {"tcpSocket": ...}).
CR008 = Rule("CR008", WARNING, "TCP-only startup probe", DOC_PROBES)


@register(CR008)
def tcp_probe(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    probe = config.service.startup_probe
    if probe is not None and probe.type == "http":
        return
    what = "a TCP startup probe" if probe is not None else "no startup probe, so Cloud Run's default TCP probe"
    yield CR008.at(
        service_resource(config),
        "service.startup_probe",
        f"{what} only checks that the port accepts connections: an app that binds its port and then fails "
        f"(or crash-loops) still passes, and the revision takes traffic.",
        "startup_probe: {type: http, path: /health, period_seconds: 3, failure_threshold: 20}",
    )


# ---- CR009: CPU throttled while the app runs timers ----------------------------------------------
# gcp-facts §1.4: gcloud "Use --cpu-throttling to enable and --no-cpu-throttling to disable"; v2
# cpu_idle = cpu_throttling. "A Cloud Run instance that has any open WebSocket connection is considered
# active, so CPU is allocated" — so throttling bites the app's timers when no socket is open.
CR009 = Rule("CR009", WARNING, "CPU throttled while the app runs heartbeat/cleanup timers", DOC_BILLING)

_TIMER = re.compile(r"^WEBSOCKET_\w*INTERVAL", re.I)  # periodic work: heartbeats, cleanup sweeps


@register(CR009)
def throttled_timers(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    svc = config.service
    if not svc.cpu_idle:
        return
    timers = sorted(name for name in svc.plain_env() if _TIMER.match(name))
    if not timers:
        return
    yield CR009.at(
        service_resource(config),
        "service.cpu_throttling",
        f'cpu_throttling: true ENABLES throttling (gcloud: "Use --cpu-throttling to enable and --no-cpu-throttling '
        f'to disable"; v2 cpu_idle: true): CPU is allocated only while requests are open, yet the app runs timers '
        f"({', '.join(timers)}). An open WebSocket keeps CPU allocated, so the timers starve only when no socket is "
        f"open — cleanup then stalls.",
        "cpu_throttling: false  (CPU always allocated = gcloud --no-cpu-throttling, v2 cpu_idle: false; with "
        "min_instances >= 1)",
    )


# ---- CR010: env keys removed compared with the live revision ------------------------------------
# gcp-facts §4.1: a new template replaces containers[].env as a whole; a key the config no longer has
# disappears from the new revision. Acknowledge with `check --allow-env-removal`.
CR010 = Rule("CR010", WARNING, "Env vars the live revision has and this config drops", DOC_ENV, needs_live=True)


@register(CR010)
def env_removed(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    names = live.revision_env_names() if live is not None else None
    if names is None:
        return
    removed = sorted(names - set(config.service.env) - set(facts.RUN_RESERVED_ENV))
    if removed:
        yield CR010.at(
            service_resource(config),
            "service.env",
            f"the serving revision has env vars this config does not: {', '.join(removed)}. The new revision "
            f"would start without them.",
            "add them back under service.env, or pass --allow-env-removal if removing them is intended",
        )


# ---- CR011: min instances 0 ---------------------------------------------------------------------
# gcp-facts §1.6: "If you are using CPU outside of requests, you should set minimum instances equal to 1";
# with 0, a reconnect storm after a deploy or a timeout wave starts from cold instances.
CR011 = Rule("CR011", INFO, "No warm instance for a WebSocket service", DOC_SCALING)


@register(CR011)
def min_instances_zero(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.service.min_instances == 0:
        yield CR011.at(
            service_resource(config),
            "service.min_instances",
            "min_instances is 0: every client reconnects at the request timeout, and a reconnect storm after a "
            "scale-to-zero lands on cold starts.",
            "min_instances: 1",
        )


# ---- CR012: CPU values and memory ---------------------------------------------------------------
# gcp-facts §1.4: "The only supported values for CPU are '1', '2', '4', and '8'. Setting 4 CPU requires
# at least 2Gi of memory." (Fractional CPU below 1 exists, §1.2.)
CR012 = Rule("CR012", ERROR, "Unsupported CPU value or too little memory for it", DOC_CPU)


@register(CR012)
def cpu_values(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    svc = config.service
    cpu = cpu_value(svc.cpu)
    if cpu is None:
        return
    if cpu >= 1 and (not cpu.is_integer() or str(int(cpu)) not in facts.RUN_CPU_WHOLE_VALUES):
        yield CR012.at(
            service_resource(config),
            "service.cpu",
            f"cpu {svc.cpu} is not a value Cloud Run accepts: \"The only supported values for CPU are '1', '2', "
            f"'4', and '8'.\" (below 1, fractions such as 500m).",
            'cpu: "2"',
        )
    mem = memory_bytes(svc.memory)
    if cpu >= 4 and mem is not None and mem < facts.RUN_MEMORY_MIN_FOR_4_CPU_BYTES:
        yield CR012.at(
            service_resource(config),
            "service.memory",
            f'cpu {svc.cpu} with memory {svc.memory}: "Setting 4 CPU requires at least 2Gi of memory."',
            "memory: 2Gi",
        )


# ---- CR013: env var names and sizes -------------------------------------------------------------
# gcp-facts §4.5: reserved names ("the PORT environment variable is injected inside your container by
# Cloud Run"), at most 1000 env vars, values at most 32768 bytes.
CR013 = Rule("CR013", ERROR, "Reserved env var name, or env limits exceeded", DOC_ENV)


@register(CR013)
def env_limits(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    env = config.service.env
    for name in env:
        if name in facts.RUN_RESERVED_ENV:
            yield CR013.at(
                service_resource(config),
                _env_field(name),
                f'{name} is reserved: "The environment variables defined in the container runtime contract are '
                f"reserved and cannot be set. In particular, the PORT environment variable is injected inside your "
                f'container by Cloud Run."',
                "remove it; set the container port with service.port" if name == "PORT" else "remove it",
            )
    if len(env) > facts.RUN_ENV_MAX:
        yield CR013.at(
            service_resource(config),
            "service.env",
            f'{len(env)} env vars: "You can set a maximum of 1000 environment variables for a Cloud Run service."',
            "move configuration into a file or Secret Manager",
        )
    for name, value in env.items():
        if isinstance(value, str) and len(value.encode()) > facts.RUN_ENV_VALUE_MAX_BYTES:
            yield CR013.at(
                service_resource(config),
                _env_field(name),
                f'the value of {name} is {len(value.encode())} bytes; an env value\'s "maximum length is 32768 bytes".',
                "mount it from Secret Manager as a file instead",
            )


# ---- CR014: reserved label / annotation namespaces ----------------------------------------------
# gcp-facts §4.5: "Cloud Run API v2 does not support labels with run.googleapis.com, cloud.googleapis.com,
# serving.knative.dev, or autoscaling.knative.dev namespaces, and they will be rejected."
CR014 = Rule("CR014", ERROR, "Label or annotation in a namespace Cloud Run v2 rejects", DOC_SERVICE_API)


@register(CR014)
def reserved_metadata(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    svc = config.service
    for kind, values in (("labels", svc.labels), ("annotations", svc.annotations)):
        for key in values:
            prefix = next((p for p in facts.RUN_RESERVED_LABEL_PREFIXES if key.split("/")[0].endswith(p)), None)
            if prefix is None:
                continue
            fix = "remove it"
            if key == "run.googleapis.com/cpu-throttling":
                fix = "remove it and set service.cpu_throttling (sent as v2 resources.cpu_idle)"
            elif key.startswith("autoscaling.knative.dev/"):
                fix = "remove it and set service.min_instances / max_instances"
            yield CR014.at(
                service_resource(config),
                f"service.{kind}",
                f'{kind[:-1]} {key!r} is in the {prefix} namespace: "Cloud Run API v2 does not support labels with '
                f"run.googleapis.com, cloud.googleapis.com, serving.knative.dev, or autoscaling.knative.dev "
                f'namespaces, and they will be rejected."',
                fix,
            )


# ---- CR015: service name ------------------------------------------------------------------------
# gcp-facts §4.5: "only lowercase, digits, and hyphens; must begin with letter, and cannot end with
# hyphen; must be less than 50 characters."
CR015 = Rule("CR015", ERROR, "Invalid Cloud Run service name", DOC_SERVICE_API)
_SERVICE_ID = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")


@register(CR015)
def service_name(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    name = config.service.name
    if _SERVICE_ID.match(name) and len(name) <= facts.RUN_SERVICE_ID_MAX:
        return
    suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[: facts.RUN_SERVICE_ID_MAX].rstrip("-")
    if not suggestion or not suggestion[0].isalpha():
        suggestion = f"svc-{suggestion}"[: facts.RUN_SERVICE_ID_MAX].rstrip("-")
    yield CR015.at(
        service_resource(config),
        "service.name",
        f'service name {name!r}: "only lowercase, digits, and hyphens; must begin with letter, and cannot end with '
        f'hyphen; must be less than 50 characters."',
        f"name: {suggestion}",
    )


# ---- CR016: candidate tag -----------------------------------------------------------------------
# gcp-facts §4.5: "Combined traffic tag and service name cannot exceed 46 characters."; the tag is part
# of a DNS name (TAG---SERVICE...), so it is a DNS label (lowercase letters, digits, hyphens).
CR016 = Rule("CR016", ERROR, "Candidate tag too long with the service name, or not a DNS label", DOC_ROLLOUTS)
_TAG = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")


@register(CR016)
def candidate_tag(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    tag, service = config.rollout.tag, config.service.name
    if not _TAG.match(tag):
        yield CR016.at(
            "rollout",
            "rollout.tag",
            f"tag {tag!r} is not a DNS label: it becomes part of the revision's URL (TAG---SERVICE-….run.app).",
            "tag: candidate",
        )
    if len(tag) + len(service) > facts.RUN_TAG_PLUS_SERVICE_MAX:
        room = facts.RUN_TAG_PLUS_SERVICE_MAX - len(service)
        yield CR016.at(
            "rollout",
            "rollout.tag",
            f"tag {tag!r} ({len(tag)}) + service {service!r} ({len(service)}) = {len(tag) + len(service)} characters: "
            f'"Combined traffic tag and service name cannot exceed 46 characters."',
            f"tag: {'cand'[: max(room, 1)]}" if room > 0 else "shorten the service name",
        )


# ---- CR017 / CR018: concurrency at the maximum, or not set --------------------------------------
# gcp-facts §1.2: the maximum is 1000 and Google recommends raising it for WebSockets "if your service
# is able to handle the load with given resources"; the defaults conflict (80 vs 80 × vCPU): set it.
CR017 = Rule("CR017", INFO, "Concurrency at the maximum (1000)", DOC_CONCURRENCY)
CR018 = Rule("CR018", WARNING, "Concurrency not set", DOC_CONCURRENCY)


@register(CR017)
def concurrency_at_max(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    svc = config.service
    if svc.concurrency != facts.RUN_CONCURRENCY_MAX:
        return
    instances = svc.max_instances or facts.RUN_MAX_INSTANCES_DEFAULT
    yield CR017.at(
        service_resource(config),
        "service.concurrency",
        f'concurrency 1000 is valid — the maximum ("You can increase this to a maximum of 1,000"). Each open '
        f"WebSocket holds one slot for up to the request timeout, so this allows at most 1000 × {instances} "
        f'instances = {1000 * instances} sockets, and "Cloud Run might not send as many requests" to a busy instance.',
        "keep it if one instance can hold 1000 sockets with its cpu and memory; load-test it",
    )


@register(CR018)
def concurrency_unset(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.service.concurrency:
        return
    yield CR018.at(
        service_resource(config),
        "service.concurrency",
        "concurrency is not set: the API default is 80 (CPU ≥ 1) while gcloud-created services get 80 × vCPU — "
        "each open WebSocket holds one slot, so the real limit depends on who created the service.",
        "concurrency: 250  (an explicit value, at most 1000)",
    )


# ---- CR019: request timeout not set -------------------------------------------------------------
# gcp-facts §1.1: default 300 s; "Increase the request timeout period to the maximum duration you would
# like to keep the WebSockets stream open, for example 60 minutes."
CR019 = Rule("CR019", WARNING, "Request timeout not set (WebSockets cut at 5 minutes)", DOC_TIMEOUT)


@register(CR019)
def timeout_unset(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.service.timeout is None:
        yield CR019.at(
            service_resource(config),
            "service.timeout",
            'the request timeout is not set, so it is 300 s: "The timeout is set by default to 5 minutes" and every '
            "WebSocket is closed after 5 minutes.",
            "timeout: 3600  (the maximum; clients reconnect after it)",
        )


# ---- CR020: Cloud Run session affinity off -------------------------------------------------------
# gcp-facts §1.1 / §1.3: "Consider using session affinity for clients to reconnect as much as possible to
# the same instance." It is best effort. (Behind an ALB it is Cloud Run's affinity that works, §2.4.)
CR020 = Rule("CR020", INFO, "Cloud Run session affinity off", DOC_AFFINITY)


@register(CR020)
def affinity_off(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if not config.service.session_affinity:
        yield CR020.at(
            service_resource(config),
            "service.session_affinity",
            "Cloud Run session affinity is off; Google's WebSockets guide: \"Consider using session affinity for "
            'clients to reconnect as much as possible to the same instance." It is best effort, and it is the '
            "affinity that works behind a load balancer (backend-service affinity does not, with serverless NEGs).",
            "session_affinity: true",
        )


# ---- CR021: ingress open while Cloud Armor guards the load balancer -----------------------------
# gcp-facts §3.5 / §7.8: "The default ingress paths and ingress setting allow any resource on the
# internet to reach your Cloud Run service" — the *.run.app URL bypasses the LB and Cloud Armor.
CR021 = Rule("CR021", WARNING, "Ingress 'all' lets clients bypass the load balancer and Cloud Armor", DOC_INGRESS)


@register(CR021)
def ingress_bypass(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.load_balancer is None or config.service.ingress != "all":
        return
    guard = " and Cloud Armor" if config.armor is not None else ""
    yield CR021.at(
        service_resource(config),
        "service.ingress",
        f'ingress is "all": "The default ingress paths and ingress setting allow any resource on the internet to reach '
        f'your Cloud Run service", so the *.run.app URL bypasses the load balancer{guard}.',
        "ingress: internal-and-cloud-load-balancing  (tag URLs are then reachable only through the load balancer)",
    )


# ---- CR022: the candidate's tag URL behind restricted ingress -----------------------------------
# gcp-facts §3.5: with ingress INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER "tagged-revision URLs then cannot
# be smoke-tested from the internet" ([3P] report); "All network ingress paths are subject to the service's
# ingress setting." The serverless NEG's cloudRun.tag "offers an LB-side path to a tag".
CR022 = Rule("CR022", WARNING, "Candidate gate through a tag URL that ingress blocks", DOC_INGRESS)


@register(CR022)
def candidate_behind_ingress(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.service.ingress == "all" or config.gate.candidate.url is not None:
        return
    yield CR022.at(
        "gate",
        "gate.candidate.url",
        f"ingress is {config.service.ingress!r} and \"All network ingress paths are subject to the service's "
        f"ingress setting\": the candidate's tag URL (https://{config.rollout.tag}---….run.app) is not reachable "
        f"from outside, so a gate run from there fails on a healthy revision.",
        f"route the tag through the load balancer (a serverless NEG with cloudRun.tag: {config.rollout.tag}, behind "
        f"its own host in the URL map) and set gate.candidate.url (and host) to it; or run the gate from inside "
        f"the VPC",
    )


# ---- CR023: cpu_throttling and billing say opposite things ---------------------------------------
# gcp-facts §1.4 and §6 claim c: gcloud "Use --cpu-throttling to enable and --no-cpu-throttling to disable";
# "To set instance-based billing for a given service: gcloud run services update SERVICE
# --no-cpu-throttling"; v2 cpu_idle = true ⇔ --cpu-throttling. Both keys are the one field cpu_idle, so
# `cpu_throttling: true` with `billing: instance-based` is the seed's inverted belief, written down: the
# config cannot say what it wants.
CR023 = Rule("CR023", ERROR, "cpu_throttling and billing contradict each other", DOC_BILLING)


@register(CR023)
def throttling_contradicts_billing(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    svc = config.service
    if svc.cpu_throttling is None or svc.billing is None or svc.cpu_throttling == svc.cpu_idle:
        return
    if svc.cpu_throttling:
        said = "cpu_throttling: true (gcloud --cpu-throttling) ENABLES throttling — CPU only during requests"
        fix = "cpu_throttling: false  (= --no-cpu-throttling, v2 cpu_idle: false), or remove cpu_throttling"
    else:
        said = "cpu_throttling: false (gcloud --no-cpu-throttling) DISABLES throttling — CPU always allocated"
        fix = "cpu_throttling: true  (= --cpu-throttling, v2 cpu_idle: true), or remove cpu_throttling"
    yield CR023.at(
        service_resource(config),
        "service.cpu_throttling",
        f"{said} — the opposite of billing: {svc.billing}, and both keys set the one field cpu_idle. gcloud: "
        f'"Use --cpu-throttling to enable and --no-cpu-throttling to disable"; the billing-settings page: "To set '
        f'instance-based billing for a given service: gcloud run services update SERVICE --no-cpu-throttling".',
        fix,
    )


# ---- CR024: the public gate without the load balancer's URL -------------------------------------
# The public gate checks the path users take at each traffic step: through the load balancer's URL map,
# its backend service and Cloud Armor. Without gate.public.url it probes the service's own URI (the
# *.run.app URL, deployer/orchestrator/gates.py public_spec). gcp-facts §3.5: "Cloud Armor also protects
# serverless NEGs when traffic is routed through a load balancer" — not on the run.app URL, so a Cloud
# Armor rule or backend-service change that shuts users out passes that gate; and "All network ingress
# paths are subject to the service's ingress setting", so with ingress restricted to the load balancer
# the run.app URL cannot be reached from outside at all and every public gate fails.
# A warning, not an error, for CR022's reason: a gate run inside the VPC reaches the run.app URL (and with
# ingress "all" anyone does), and it still tests the release itself — it just misses the load-balancer path.
CR024 = Rule("CR024", WARNING, "Public gate probes the service URL, not the load balancer", DOC_INGRESS)


@register(CR024)
def public_gate_off_the_lb(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    if config.load_balancer is None or config.gate.public.url is not None:
        return
    guard = " and Cloud Armor" if config.armor is not None else ""
    message = (
        f"gate.public.url is not set, so the public gate probes the service's own URL (*.run.app), not the path "
        f"users take through the load balancer{guard}: a change there that refuses them (a deny rule, a backend "
        f"the URL map does not reach) passes the gate"
    )
    if config.service.ingress != "all":
        message += (
            f'; and with ingress {config.service.ingress!r} ("All network ingress paths are subject to the '
            f"service's ingress setting\") the run.app URL is not reachable from outside, so a public gate run "
            f"from there fails on a healthy release"
        )
    path = config.gate.public.path if config.gate.public.path.startswith("/") else "/" + config.gate.public.path
    yield CR024.at(
        "gate",
        "gate.public.url",
        message + ".",
        f"gate.public.url: wss://<the load balancer's host>{path}",
    )
