"""Cloud Run Admin API v2 rules, pure: what a service may look like, and the defaults it gets.

Every function here takes values and returns values (``Problem`` lists, normalized copies); none
touches the world, the clock or HTTP, so each rule is testable on its own. ``models.State`` turns
a ``Problem`` into Google's 400 answer (``Violation in CreateServiceRequest.<field>: <what>``, the
shape real Cloud Run v2 uses for request validation, e.g. pulumi/pulumi-gcp#3167 and
magic-modules#10173 quote ``Violation in CreateServiceRequest.service.template.containers[0].ports:
ports should contain 0 or 1 port.``).

Sources for each rule: ../shared/reference/gcp-facts.md (section named in a comment) and the
limits in ``deployer.facts``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from google.cloud import run_v2

from deployer import facts

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
UNSPECIFIED_TRAFFIC = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_UNSPECIFIED

# §4.5 Service ID: "only lowercase, digits, and hyphens; must begin with letter, and cannot end with
# hyphen; must be less than 50 characters." (the real v2 error text, pulumi/pulumi-gcp#3167).
SERVICE_ID_DESCRIPTION = (
    "only lowercase, digits, and hyphens; must begin with letter, and cannot end with hyphen; "
    "must be less than 50 characters."
)
# A DNS label (RFC 1035): lowercase letters, digits and hyphens, starting with a letter, not ending
# with a hyphen. Service ids, revision names and traffic tags all become DNS labels in URLs (§4.5).
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Real error for a bad image (3P quote of a real v2 400): "Violation in
# CreateServiceRequest.service.template.containers[0].image: must be a container image path in the
# form [hostname/]repo-path[:tag and/or @digest]". The pattern is the Docker reference grammar.
IMAGE_DESCRIPTION = "must be a container image path in the form [hostname/]repo-path[:tag and/or @digest]"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_TAG = r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
_DIGEST = r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
IMAGE = re.compile(f"^{_HOST}{_PATH}{_TAG}{_DIGEST}$")

# §4.5 "Combined traffic tag and service name cannot exceed 46 characters." (real v1 API text,
# firebase/firebase-tools#6137; no v2 wording was found, so the same words are used).
TAG_TOO_LONG = (
    "spec.traffic.tag: traffic tag '{tag}' and service name '{service}' together are too long. "
    "Combined traffic tag and service name cannot exceed 46 characters."
)
# Real v2 text for a reserved env var (hashicorp/terraform-provider-google#26877).
RESERVED_ENV = (
    "{field}: The following reserved env names were provided: {names}. "
    "These values are automatically set by the system."
)

# Defaults real Cloud Run fills in, as the real recording compute-serverless-neg-cloudrun.http.log shows:
# ports [{containerPort 8080, name http1}], resources limits cpu 1000m / memory 512Mi with cpuIdle,
# a TCP startup probe on the port (failureThreshold 1, periodSeconds 240, timeoutSeconds 240),
# maxInstanceRequestConcurrency 80, timeout 300s, the compute default service account. The
# recording shows no executionEnvironment, so none is defaulted.
DEFAULT_PORT = 8080
DEFAULT_PORT_NAME = "http1"
DEFAULT_CPU = "1000m"
DEFAULT_MEMORY = "512Mi"
STARTUP_PROBE_SECONDS = 240
LIMIT_KEYS = ("cpu", "memory", "nvidia.com/gpu")  # §1.4 "Only memory, cpu and nvidia.com/gpu keys"
TWO_GI = 2 * 1024**3


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request. ``field`` is the proto path (``service.template.timeout``).

    ``message`` set means Google words this error in its own shape (used as is); otherwise the
    answer reads ``Violation in <Request>.<field>: <description>``.
    """

    field: str
    description: str
    message: str = ""


# ---- names -------------------------------------------------------------------------------------


def service_id_problem(service_id: str) -> Problem | None:
    """§4.5 service id rule (the id a create names in ``serviceId``)."""
    if DNS_LABEL.match(service_id) and len(service_id) <= facts.RUN_SERVICE_ID_MAX:
        return None
    return Problem("service_id", SERVICE_ID_DESCRIPTION)


def revision_name_problem(name: str, service_id: str) -> Problem | None:
    """§4.5: a given ``template.revision`` must be prefixed by ``{service}-`` and be at most 63 chars."""
    field = "service.template.revision"
    if not name.startswith(service_id + "-") or len(name) == len(service_id) + 1:
        # v1 API's real words (terraform-provider-google PR #6491); no v2 wording was found.
        return Problem(
            field,
            "The revision name must be prefixed by the name of the enclosing Service or Configuration "
            "with a trailing -",
        )
    if len(name) > facts.RUN_REVISION_NAME_MAX:
        return Problem(field, f"revision name must be at most {facts.RUN_REVISION_NAME_MAX} characters.")
    if not DNS_LABEL.match(name):
        return Problem(
            field,
            "revision name must use only lowercase letters, digits and hyphens, begin with a letter and not end "
            "with a hyphen.",
        )
    return None


def is_reserved_key(key: str) -> bool:
    """§4.5: v2 rejects labels/annotations in the run.googleapis.com, cloud.googleapis.com,
    serving.knative.dev and autoscaling.knative.dev namespaces (and their subdomains)."""
    if "/" not in key:
        return False
    domain = key.split("/", 1)[0]
    return any(domain == p or domain.endswith("." + p) for p in facts.RUN_RESERVED_LABEL_PREFIXES)


def metadata_problems(labels: Iterable[str], annotations: Iterable[str], prefix: str) -> list[Problem]:
    out: list[Problem] = []
    for kind, keys in (("labels", labels), ("annotations", annotations)):
        for key in keys:
            if is_reserved_key(key):
                out.append(
                    Problem(
                        f"{prefix}.{kind}",
                        f"Cloud Run API v2 does not support {kind} with `run.googleapis.com`, "
                        "`cloud.googleapis.com`, `serving.knative.dev`, or `autoscaling.knative.dev` namespaces; "
                        f"'{key}' is rejected.",
                    )
                )
    return out


# ---- quantities --------------------------------------------------------------------------------

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEM_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_cpu(value: str) -> float | None:
    """CPUs as a number: ``"1"`` and ``"1000m"`` are 1.0, ``"500m"`` and ``"0.5"`` are 0.5."""
    m = _CPU.match(value.strip())
    if not m:
        return None
    number = float(m.group(1))
    return number / 1000 if m.group(2) else number


def parse_memory(value: str) -> int | None:
    """Bytes of a Kubernetes memory quantity (``512Mi``, ``2Gi``, ``1G``)."""
    m = _MEM.match(value.strip())
    if not m:
        return None
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2)])


def cpu_problem(value: str) -> str | None:
    """§1.4 "The only supported values for CPU are '1', '2', '4', and '8'"; below 1 (§1.2, fractional
    CPU, written e.g. "500m") is allowed with the rules checked in ``template_problems``."""
    cpu = parse_cpu(value)
    if cpu is None or cpu <= 0:
        return f"'{value}' is not a valid CPU value."
    if cpu < 1:
        return None
    if cpu in {float(v) for v in facts.RUN_CPU_WHOLE_VALUES}:
        return None
    return f"'{value}' is not supported: the only supported values for CPU are '1', '2', '4', and '8' (or below 1)."


def ingress_index(t: run_v2.RevisionTemplate) -> int:
    """The container that receives requests: the one with a port, else the first (-1: none)."""
    for i, c in enumerate(t.containers):
        if c.ports:
            return i
    return 0 if t.containers else -1


def effective_cpu(container: run_v2.Container) -> float:
    cpu = parse_cpu(container.resources.limits.get("cpu", DEFAULT_CPU))
    return cpu if cpu is not None else 1.0


# ---- template ----------------------------------------------------------------------------------


def normalize_template(template: run_v2.RevisionTemplate, *, service_account: str) -> run_v2.RevisionTemplate:
    """A copy of ``template`` with the defaults real Cloud Run fills in (see DEFAULT_* above)."""
    t = run_v2.RevisionTemplate(template)
    ingress = ingress_index(t)
    for i, c in enumerate(t.containers):
        if "resources" not in c:
            # §1.4 cpu_idle "true by default. However, if ResourceRequirements is set, the caller must
            # explicitly set this field to true to preserve the default behavior."
            c.resources = run_v2.ResourceRequirements(
                limits={"cpu": DEFAULT_CPU, "memory": DEFAULT_MEMORY}, cpu_idle=True
            )
        else:
            limits = dict(c.resources.limits)
            limits.setdefault("cpu", DEFAULT_CPU)
            limits.setdefault("memory", DEFAULT_MEMORY)
            c.resources.limits = limits
        if i == ingress:
            if not c.ports:
                c.ports = [run_v2.ContainerPort(container_port=DEFAULT_PORT, name=DEFAULT_PORT_NAME)]
            for p in c.ports:
                if not p.container_port:
                    p.container_port = DEFAULT_PORT
                if not p.name:
                    p.name = DEFAULT_PORT_NAME
            if "startup_probe" not in c:
                c.startup_probe = run_v2.Probe(
                    tcp_socket=run_v2.TCPSocketAction(port=c.ports[0].container_port),
                    failure_threshold=1,
                    period_seconds=STARTUP_PROBE_SECONDS,
                    timeout_seconds=STARTUP_PROBE_SECONDS,
                )
    if not t.max_instance_request_concurrency:
        # §1.2 "If not specified or 0, concurrency defaults to 80 when requested CPU >= 1 and defaults
        # to 1 when requested CPU < 1."
        low = ingress >= 0 and effective_cpu(t.containers[ingress]) < 1
        t.max_instance_request_concurrency = 1 if low else facts.RUN_CONCURRENCY_DEFAULT
    if "timeout" not in t or t.timeout == timedelta(0):
        t.timeout = timedelta(seconds=facts.RUN_TIMEOUT_DEFAULT_S)
    if not t.service_account:
        t.service_account = service_account
    if not t.scaling.max_instance_count:
        # §1.6 "When unspecified, the field is set to the server default value of 100."
        t.scaling.max_instance_count = facts.RUN_MAX_INSTANCES_DEFAULT
    return t


def template_problems(t: run_v2.RevisionTemplate, prefix: str = "service.template") -> list[Problem]:
    """Field limits of a (normalized) revision template, in the order Google's docs list them."""
    out: list[Problem] = []
    if not t.containers:
        out.append(Problem(f"{prefix}.containers", "should contain at least one container."))
    out.extend(metadata_problems(t.labels.keys(), t.annotations.keys(), prefix))
    # §1.1 timeout: 1 s (gcloud's lower bound) to 3600 s. Real v2 text above the maximum (3P quote):
    # "Violation in UpdateServiceRequest.service.template.timeout: maximum allowed time is one hour."
    timeout = t.timeout.total_seconds()
    if timeout > facts.RUN_TIMEOUT_MAX_S:
        out.append(Problem(f"{prefix}.timeout", "maximum allowed time is one hour."))
    elif timeout < facts.RUN_TIMEOUT_MIN_S:
        out.append(Problem(f"{prefix}.timeout", "minimum allowed time is one second."))
    # §1.2 "You can increase this to a maximum of 1,000."
    concurrency = t.max_instance_request_concurrency
    if concurrency < 0 or concurrency > facts.RUN_CONCURRENCY_MAX:
        out.append(
            Problem(
                f"{prefix}.max_instance_request_concurrency",
                f"must be between 0 and {facts.RUN_CONCURRENCY_MAX}; got {concurrency}.",
            )
        )
    ported = [i for i, c in enumerate(t.containers) if c.ports]
    if len(ported) > 1:
        out.append(Problem(f"{prefix}.containers", "exactly one container may specify a port (the ingress container)."))
    env_total = 0
    for i, c in enumerate(t.containers):
        here = f"{prefix}.containers[{i}]"
        out.extend(_container_problems(c, here, concurrency))
        env_total += len(c.env)
    if env_total > facts.RUN_ENV_MAX:
        # §4.5 "You can set a maximum of 1000 environment variables for a Cloud Run service."
        out.append(Problem(f"{prefix}.containers", f"at most {facts.RUN_ENV_MAX} environment variables are allowed."))
    return out


def _container_problems(c: run_v2.Container, here: str, concurrency: int) -> list[Problem]:
    out: list[Problem] = []
    if not IMAGE.match(c.image or ""):
        out.append(Problem(f"{here}.image", IMAGE_DESCRIPTION))
    if len(c.ports) > 1:
        out.append(Problem(f"{here}.ports", "ports should contain 0 or 1 port."))  # real v2 text
    for j, p in enumerate(c.ports):
        if p.name not in facts.RUN_PORT_NAMES:
            # §1.7 ContainerPort.name: "If specified, used to specify which protocol to use. Allowed
            # values are "http1" and "h2c"."
            out.append(
                Problem(f"{here}.ports[{j}].name", f"'{p.name}' is not supported; allowed values are http1, h2c.")
            )
        if not 0 < p.container_port < 65536:
            out.append(Problem(f"{here}.ports[{j}].container_port", "must be between 1 and 65535."))
    names = [e.name for e in c.env]
    reserved = sorted({n for n in names if n in facts.RUN_RESERVED_ENV})
    if reserved:
        # §4.5 reserved env vars; the real v2 message names the field without "Violation in".
        field = here.removeprefix("service.") + ".env"
        out.append(Problem(field, "", RESERVED_ENV.format(field=field, names=", ".join(reserved))))
    seen: set[str] = set()
    for k, e in enumerate(c.env):
        if not e.name:
            out.append(Problem(f"{here}.env[{k}].name", "is required."))
        elif e.name in seen:
            out.append(Problem(f"{here}.env[{k}].name", f"environment variable '{e.name}' is defined more than once."))
        seen.add(e.name)
        if len(e.name) > facts.RUN_ENV_NAME_MAX:
            out.append(Problem(f"{here}.env[{k}].name", f"must not exceed {facts.RUN_ENV_NAME_MAX} characters."))
        if len(e.value.encode()) > facts.RUN_ENV_VALUE_MAX_BYTES:
            out.append(Problem(f"{here}.env[{k}].value", f"must not exceed {facts.RUN_ENV_VALUE_MAX_BYTES} bytes."))
    limits = c.resources.limits
    for key in limits:
        if key not in LIMIT_KEYS:
            out.append(
                Problem(f"{here}.resources.limits", f"'{key}' is not supported; only memory, cpu and nvidia.com/gpu.")
            )
    cpu_text = limits.get("cpu", DEFAULT_CPU)
    bad_cpu = cpu_problem(cpu_text)
    if bad_cpu:
        out.append(Problem(f"{here}.resources.limits.cpu", bad_cpu))
    memory = parse_memory(limits.get("memory", DEFAULT_MEMORY))
    if memory is None:
        out.append(Problem(f"{here}.resources.limits.memory", f"'{limits.get('memory')}' is not a valid quantity."))
    cpu = parse_cpu(cpu_text)
    if cpu is not None and not bad_cpu:
        if cpu < 1:
            # §1.2 CPU below 1: "Concurrency: Maximum concurrency must be set to 1." and "Billing: The
            # billing settings must be set to request-based billing." (cpu_idle true).
            if concurrency > 1:
                out.append(
                    Problem(
                        here.rsplit(".containers", 1)[0] + ".max_instance_request_concurrency",
                        f"Maximum concurrency must be set to 1 when CPU is less than 1 (cpu '{cpu_text}').",
                    )
                )
            if not c.resources.cpu_idle:
                out.append(
                    Problem(
                        f"{here}.resources.cpu_idle",
                        "CPU below 1 requires request-based billing: cpu_idle must be true.",
                    )
                )
        if cpu >= 4 and memory is not None and memory < TWO_GI:
            # §1.4 "Setting 4 CPU requires at least 2Gi of memory."
            out.append(
                Problem(f"{here}.resources.limits.memory", f"Setting {cpu_text} CPU requires at least 2Gi of memory.")
            )
    return out


# ---- traffic -----------------------------------------------------------------------------------


def normalize_traffic(traffic: Sequence[run_v2.TrafficTarget]) -> list[run_v2.TrafficTarget]:
    """§4.1 "If traffic is empty or not provided, defaults to 100% traffic to the latest Ready
    Revision." A target without a type is read as REVISION when it names one, else LATEST (the
    proto leaves this open; doubt noted)."""
    if not traffic:
        return [run_v2.TrafficTarget(type_=LATEST, percent=100)]
    out = []
    for t in traffic:
        t = run_v2.TrafficTarget(t)
        if t.type_ == UNSPECIFIED_TRAFFIC:
            t.type_ = REVISION if t.revision else LATEST
        out.append(t)
    return out


def traffic_problems(traffic: Sequence[run_v2.TrafficTarget], service_id: str) -> list[Problem]:
    """What Google rejects at once in ``service.traffic`` (gcp-facts §4.1, §4.4, §4.5).

    - each percent 0..100 and, when traffic is not empty, the percents sum to 100 (Knative spec:
      "all values MUST sum to 100", §4.1);
    - a REVISION target names a revision;
    - tags are unique DNS labels, and tag + service name fit in 46 characters (§4.5).

    Whether a named revision *exists* is not checked here: real Cloud Run accepts the spec and fails
    the operation ("Revision '…' does not exist or is deleted. …", see ``missing_revisions``).
    """
    out: list[Problem] = []
    total = 0
    tags: dict[str, int] = {}
    for i, t in enumerate(traffic):
        here = f"service.traffic[{i}]"
        if not 0 <= t.percent <= 100:
            out.append(Problem(f"{here}.percent", f"must be between 0 and 100; got {t.percent}."))
        total += t.percent
        if t.type_ == REVISION and not t.revision:
            out.append(
                Problem(
                    f"{here}.revision", "a target of type TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION must name a revision."
                )
            )
        if t.tag:
            if not DNS_LABEL.match(t.tag):
                out.append(
                    Problem(
                        f"{here}.tag",
                        f"traffic tag '{t.tag}' must be a valid DNS label: lowercase letters, digits and hyphens, "
                        "beginning with a letter and not ending with a hyphen.",
                    )
                )
            elif len(t.tag) + len(service_id) > facts.RUN_TAG_PLUS_SERVICE_MAX:
                out.append(Problem(f"{here}.tag", "", TAG_TOO_LONG.format(tag=t.tag, service=service_id)))
            if t.tag in tags:
                out.append(
                    Problem(
                        f"{here}.tag",
                        f"traffic tag '{t.tag}' is used by more than one target (also service.traffic[{tags[t.tag]}]).",
                    )
                )
            tags.setdefault(t.tag, i)
    if traffic and total != 100:
        out.append(Problem("service.traffic", f"traffic percentages must add up to 100; they add up to {total}."))
    return out


def missing_revisions(traffic: Sequence[run_v2.TrafficTarget], existing: Iterable[str]) -> list[str]:
    """REVISION targets (short names) that name no existing revision."""
    have = set(existing)
    return [t.revision for t in traffic if t.type_ == REVISION and t.revision not in have]


def resolve_traffic(
    traffic: Sequence[run_v2.TrafficTarget], latest_ready: str, tag_uri: dict[str, str]
) -> list[run_v2.TrafficTargetStatus]:
    """``traffic_statuses``: the spec with LATEST resolved to the latest ready revision (short name),
    and a ``uri`` for every tagged target."""
    out = []
    for t in traffic:
        status = run_v2.TrafficTargetStatus(type_=t.type_, revision=t.revision, percent=t.percent, tag=t.tag)
        if t.type_ == LATEST:
            status.revision = latest_ready
        if t.tag:
            status.uri = tag_uri[t.tag]
        out.append(status)
    return out


# ---- preconditions -----------------------------------------------------------------------------


def etag_conflicts(given: str, current: str) -> bool:
    """§4.2: an etag sent with a change must be the current one; no etag means no precondition."""
    return bool(given) and given != current
