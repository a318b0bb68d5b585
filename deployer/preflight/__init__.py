"""Preflight: pure rules over a config and (optionally) the live state, each finding citing Google.

    run_rules(config)                      offline: every rule that needs only the config
    run_rules(config, live)                also the rules that compare with what is live
    run_rules(config, live, acknowledge={"CR010"})   acknowledged warnings become info

One module per concern: ``cloudrun`` (CR…), ``loadbalancer`` (LB…), ``armor`` (AR…),
``hygiene`` (HY…). ``rules()`` lists them all (code, severity, title, doc URL).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from deployer.config import DeployConfig
from deployer.model import Observed
from deployer.preflight.base import REGISTRY, Finding, Rule, Severity

__all__ = ["Finding", "Rule", "Severity", "rules", "run_rules", "summary"]


def _load() -> dict[str, Rule]:
    from deployer.preflight import armor, cloudrun, hygiene, loadbalancer  # noqa: F401  (registers the rules)

    return REGISTRY


def rules() -> list[Rule]:
    """Every registered rule, by code."""
    return [r for _, r in sorted(_load().items())]


def run_rules(config: DeployConfig, live: Observed | None = None, *, acknowledge: Iterable[str] = ()) -> list[Finding]:
    """All findings for ``config`` (and ``live``), errors first, each with its config line.

    Warnings whose code is in ``acknowledge`` (e.g. CR010 with ``--allow-env-removal``) are
    reported as info, marked "(acknowledged)".
    """
    acked = frozenset(acknowledge)
    findings: list[Finding] = []
    for rule in rules():
        if rule.func is None or (rule.needs_live and live is None):
            continue
        for finding in rule.func(config, live):
            if finding.code in acked and finding.severity is Severity.WARNING:
                finding = replace(finding, severity=Severity.INFO, message=f"(acknowledged) {finding.message}")
            findings.append(finding.with_line(finding.line or config.line_of(finding.field)))
    findings.sort(key=lambda f: (f.severity.rank, f.resource, f.code, f.line or 0))
    return findings


def summary(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in Severity}
    for f in findings:
        counts[f.severity.value] += 1
    return counts
