"""Findings and the rule registry.

A rule is a pure function ``(config, live) -> Iterable[Finding]`` registered under one stable code
with ``@register(RULE)``; ``live`` is an ``Observed`` or None (offline). Rules that need the live
state (``Rule.needs_live``) are skipped offline. ``run_rules`` (in ``deployer.preflight``) runs
them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from deployer.config import DeployConfig
from deployer.model import Observed


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    """One thing ``check`` has to say: which Google rule, where, and what to write instead.

    ``field`` is the config key path (``load_balancer.timeout_sec``) the finding is about — or,
    for live-only findings, the closest config key; ``line`` is that key's line in the config
    file when known.
    """

    code: str
    severity: Severity
    resource: str
    field: str
    message: str
    fix: str
    doc_url: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "resource": self.resource,
            "field": self.field,
            "line": self.line,
            "message": self.message,
            "fix": self.fix,
            "doc_url": self.doc_url,
        }

    def with_line(self, line: int | None) -> Finding:
        return replace(self, line=line)


RuleFunc = Callable[[DeployConfig, Observed | None], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    """A rule's identity: stable code, severity, one-line title, where Google documents it."""

    code: str
    severity: Severity
    title: str
    doc_url: str
    needs_live: bool = False
    func: RuleFunc | None = field(default=None, compare=False, repr=False)

    def at(self, resource: str, field: str, message: str, fix: str, *, doc_url: str | None = None) -> Finding:
        """A finding of this rule."""
        return Finding(
            code=self.code,
            severity=self.severity,
            resource=resource,
            field=field,
            message=message,
            fix=fix,
            doc_url=doc_url or self.doc_url,
        )


REGISTRY: dict[str, Rule] = {}


def register(rule: Rule) -> Callable[[RuleFunc], RuleFunc]:
    """Register ``func`` as the implementation of ``rule`` (one function per code)."""

    def decorate(func: RuleFunc) -> RuleFunc:
        if rule.code in REGISTRY:
            raise ValueError(f"rule {rule.code} registered twice")
        REGISTRY[rule.code] = replace(rule, func=func)
        return func

    return decorate


# ---- small shared helpers for rules -------------------------------------------------------------


def service_resource(config: DeployConfig) -> str:
    return f"service/{config.service.name}"


def backend_resource(config: DeployConfig) -> str:
    lb = config.load_balancer
    return f"backendService/{lb.backend_service}" if lb else "backendService"


def policy_resource(config: DeployConfig) -> str:
    return f"securityPolicy/{config.armor.policy}" if config.armor else "securityPolicy"


def mask(value: str) -> str:
    """A secret value as it may be shown: never in full (at most its first few characters, and its length)."""
    n = len(value)
    shown = value[: min(4, n // 4)] if n >= 8 else ""
    return f"{shown}…({n} chars)" if shown else f"***({n} chars)"
