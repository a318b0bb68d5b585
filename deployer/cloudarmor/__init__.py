"""The Cloud Armor rules language (a CEL subset), pure: parse once, count, lint, evaluate.

Used by the local cloud's Compute API (write-time validation of ``match.expr.expression``), by the
local load balancer (evaluation per request) and by ``deployer check`` (preflight findings).
See ``expression.py`` for the language and its sources (gcp-facts §3.4).
"""

from __future__ import annotations

from deployer.cloudarmor.expression import (
    Expression,
    ExpressionError,
    RequestAttributes,
    parse,
    validate,
)

__all__ = ["Expression", "ExpressionError", "RequestAttributes", "parse", "validate"]
