"""Config → ``DesiredState``: the request bodies the config asks for, as REST JSON. Pure.

The rules it follows come from gcp-facts §7 (the orchestrator checklist):

- ``template.timeout`` as a Duration string (``"3600s"``), §1.1 / §4.1;
- ``maxInstanceRequestConcurrency`` sent whenever the config sets it, §1.2;
- ``resources.cpuIdle`` is ALWAYS sent with ``resources``: once ``resources`` is present, a missing
  ``cpu_idle`` is proto3 ``false`` = CPU always allocated (§1.4 "if ResourceRequirements is set,
  the caller must explicitly set this field to true to preserve the default behavior").
  ``cpuIdle = cpu_throttling`` (§1.4: ``cpu_idle = true`` ⇔ ``--cpu-throttling``);
- ``startupCpuBoost`` explicit, §1.5 / §7.1;
- no ``run.googleapis.com/*`` annotations are invented here (§4.5: v2 rejects them); what the
  config says is sent as written and ``check`` refuses the reserved ones (CR014);
- the backend service body carries only what the config owns; ``timeoutSec`` and
  ``sessionAffinity`` only when the config sets them (``check`` refuses those for serverless NEGs,
  LB001/LB006; §2.1, §2.4, §7.5).
"""

from __future__ import annotations

from deployer import facts
from deployer.config import ArmorRule, DeployConfig, RateLimit, SecretRef, ServiceConfig
from deployer.model import JSON, DesiredState


def desired_state(config: DeployConfig) -> DesiredState:
    """What ``config`` asks for, as REST bodies (no I/O, no Google imports)."""
    lb, armor = config.load_balancer, config.armor
    rules: dict[int, JSON] = {}
    if armor is not None:
        rules = {rule.priority: armor_rule_body(rule) for rule in armor.rules}
        if armor.default_action is not None:
            rules[facts.ARMOR_DEFAULT_RULE_PRIORITY] = default_rule_body(armor.default_action)
    return DesiredState(
        project=config.project,
        region=config.region,
        service_name=config.service_path,
        service=service_body(config),
        backend_service_name=lb.backend_service if lb else None,
        backend_service=backend_service_body(config) if lb else None,
        url_map_name=lb.url_map if lb else None,
        security_policy_name=armor.policy if armor else None,
        armor_rules=rules,
    )


# ---- Cloud Run v2 -------------------------------------------------------------------------------


def service_body(config: DeployConfig) -> JSON:
    """A Cloud Run v2 ``Service`` (REST JSON) without ``traffic``."""
    svc = config.service
    body: JSON = {
        "name": config.service_path,
        "ingress": svc.ingress_enum,
        "template": template_body(svc),
    }
    if svc.labels:
        body["labels"] = dict(svc.labels)
    if svc.annotations:
        body["annotations"] = dict(svc.annotations)
    return body


def template_body(svc: ServiceConfig) -> JSON:
    """The ``RevisionTemplate`` (gcp-facts §4.1, §7.1)."""
    container: JSON = {
        "image": svc.image,
        "env": [env_var(name, value) for name, value in svc.env.items()],
        "resources": {
            "limits": {"cpu": svc.cpu, "memory": svc.memory},
            # §1.4: always explicit once `resources` is sent; cpu_idle = cpu_throttling (or billing).
            "cpuIdle": svc.cpu_idle,
            "startupCpuBoost": svc.startup_cpu_boost,
        },
        "ports": [{"name": svc.port_name, "containerPort": svc.port}],
    }
    if svc.startup_probe is not None:
        probe = svc.startup_probe
        target: JSON = {"port": probe.port} if probe.port is not None else {}
        action = {"httpGet": {"path": probe.path, **target}} if probe.type == "http" else {"tcpSocket": target}
        container["startupProbe"] = {
            **action,
            "initialDelaySeconds": probe.initial_delay_seconds,
            "timeoutSeconds": probe.timeout_seconds,
            "periodSeconds": probe.period_seconds,
            "failureThreshold": probe.failure_threshold,
        }
    template: JSON = {
        "containers": [container],
        "sessionAffinity": svc.session_affinity,
        "scaling": {"minInstanceCount": svc.min_instances},
    }
    if svc.max_instances is not None:
        template["scaling"]["maxInstanceCount"] = svc.max_instances
    if svc.timeout is not None:
        template["timeout"] = f"{svc.timeout}s"
    if svc.concurrency is not None:
        template["maxInstanceRequestConcurrency"] = svc.concurrency
    if svc.service_account:
        template["serviceAccount"] = svc.service_account
    if svc.execution_environment:
        template["executionEnvironment"] = f"EXECUTION_ENVIRONMENT_{svc.execution_environment.upper()}"
    return template


def env_var(name: str, value: str | SecretRef) -> JSON:
    """An ``EnvVar``: a literal ``value``, or ``valueSource.secretKeyRef`` for Secret Manager."""
    if isinstance(value, SecretRef):
        return {"name": name, "valueSource": {"secretKeyRef": {"secret": value.secret, "version": value.version}}}
    return {"name": name, "value": value}


# ---- Compute: backend service -------------------------------------------------------------------


def backend_service_body(config: DeployConfig) -> JSON:
    """The ``BackendService`` fields the config owns (a patch body)."""
    lb = config.load_balancer
    assert lb is not None
    body: JSON = {
        "name": lb.backend_service,
        "protocol": lb.protocol,
        "customRequestHeaders": list(lb.custom_request_headers),
        "logConfig": {"enable": lb.log_enable, "sampleRate": lb.log_sample_rate},
    }
    if lb.timeout_sec is not None:
        body["timeoutSec"] = lb.timeout_sec
    if lb.session_affinity is not None:
        body["sessionAffinity"] = lb.session_affinity
    if lb.affinity_cookie_ttl_sec is not None:
        body["affinityCookieTtlSec"] = lb.affinity_cookie_ttl_sec
    return body


# ---- Compute: Cloud Armor rules -----------------------------------------------------------------


def armor_rule_body(rule: ArmorRule) -> JSON:
    """A ``SecurityPolicyRule`` (gcp-facts §3.2, §3.4)."""
    body: JSON = {
        "priority": rule.priority,
        "description": rule.description,
        "action": rule.action,
        "preview": rule.preview,
    }
    if rule.expression is not None:
        body["match"] = {"expr": {"expression": rule.expression}}
    else:
        body["match"] = {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": list(rule.src_ip_ranges or [])}}
    if rule.rate_limit is not None:
        body["rateLimitOptions"] = rate_limit_body(rule.rate_limit)
    return body


def rate_limit_body(rl: RateLimit) -> JSON:
    body: JSON = {
        "rateLimitThreshold": {"count": rl.count, "intervalSec": rl.interval_sec},
        "conformAction": rl.conform_action,
        "exceedAction": rl.exceed_action,
    }
    if rl.enforce_on_key is not None:
        body["enforceOnKey"] = rl.enforce_on_key
    if rl.enforce_on_key_name is not None:
        body["enforceOnKeyName"] = rl.enforce_on_key_name
    if rl.ban_duration_sec is not None:
        body["banDurationSec"] = rl.ban_duration_sec
    if rl.ban_threshold is not None:
        body["banThreshold"] = {"count": rl.ban_threshold.count, "intervalSec": rl.ban_threshold.interval_sec}
    return body


def default_rule_body(action: str) -> JSON:
    """The default rule (priority 2147483647) set explicitly (gcp-facts §3.1: the sources disagree on
    its default action)."""
    return {
        "priority": facts.ARMOR_DEFAULT_RULE_PRIORITY,
        "description": "default rule",
        "action": action,
        "preview": False,
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}},
    }
