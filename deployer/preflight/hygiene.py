"""Hygiene rules: what makes a deploy unrepeatable or leaks secrets.

Not platform limits: these are release-engineering rules (a rollback must be able to name the exact
image; a secret must not sit in a config file, a plan, a journal or the service's public env). Where
Google documents the mechanism, the comment cites gcp-facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from deployer.config import DeployConfig
from deployer.model import Observed
from deployer.preflight.base import Finding, Rule, Severity, mask, register, service_resource
from deployer.redact import CREDENTIAL_NAME

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

DOC_IMAGES = "https://cloud.google.com/run/docs/deploying#service"
DOC_SECRETS = "https://cloud.google.com/run/docs/configuring/services/secrets"
DOC_ENV = "https://cloud.google.com/run/docs/configuring/services/environment-variables"

# Tags that by convention move: a deploy of them is not a deploy of one known image.
FLOATING_TAGS = frozenset(
    {"latest", "stable", "main", "master", "dev", "develop", "staging", "prod", "production", "edge", "nightly", "head"}
)


def image_tag(image: str) -> tuple[str | None, bool]:
    """(tag or None, pinned by digest) of ``registry/repo[:tag][@sha256:...]``."""
    if "@" in image:
        return None, True
    last = image.rsplit("/", 1)[-1]
    return (last.rsplit(":", 1)[1] if ":" in last else None), False


# ---- HY001: mutable image tags ------------------------------------------------------------------
HY001 = Rule("HY001", WARNING, "Image by a mutable tag (:latest, no tag, a branch name)", DOC_IMAGES)


@register(HY001)
def mutable_image(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    image = config.service.image
    tag, pinned = image_tag(image)
    if pinned or (tag is not None and tag.lower() not in FLOATING_TAGS):
        return
    what = "has no tag (so :latest)" if tag is None else f"uses the moving tag :{tag}"
    base = image.rsplit(":", 1)[0] if tag is not None else image
    yield HY001.at(
        service_resource(config),
        "service.image",
        f"image {image!r} {what}: what runs depends on when the registry was read, and a rollback cannot name the "
        f"image that ran before.",
        f"image: {base}:${{SHORT_SHA}}  (a version or commit tag, or @sha256:DIGEST)",
    )


# ---- HY002: secrets inline --------------------------------------------------------------------
# gcp-facts §4.1: an EnvVar is either a literal `value` or `valueSource.secretKeyRef` (Secret Manager);
# literals are visible to anyone who can read the service. Values are never printed in full here.
HY002 = Rule("HY002", ERROR, "Secret-looking value inline in the config", DOC_SECRETS)

SECRET_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI/Stripe-style secret keys
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."  # a JWT
    r"|[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"  # credentials in a URL (postgresql://user:pass@host)
)
_NOT_SECRET = re.compile(r"^(|true|false|yes|no|on|off|none|null|\d+(\.\d+)?[a-z]*)$", re.I)


def looks_secret(name: str, value: str) -> bool:
    """A literal that is a secret by its form, or by a credential-like name with a non-trivial value."""
    if SECRET_VALUE.search(value):
        return True
    return bool(CREDENTIAL_NAME.search(name)) and not _NOT_SECRET.match(value.strip())


@register(HY002)
def inline_secrets(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for name, value in config.service.plain_env().items():
        if looks_secret(name, value):
            secret = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
            yield HY002.at(
                service_resource(config),
                f"service.env.{name}",
                f"{name} holds a secret-looking value inline ({mask(value)}): it is readable by anyone who can view "
                f"the service, and ends up in plans and journals.",
                f"store it in Secret Manager and reference it: {name}: {{secret: {secret}, version: latest}}",
            )
    for target, options in (("candidate", config.gate.candidate), ("public", config.gate.public)):
        for header, value in options.headers.items():
            if header.lower() in ("authorization", "cookie", "proxy-authorization") or looks_secret(header, value):
                yield HY002.at(
                    "gate",
                    f"gate.{target}.headers.{header}",
                    f"gate header {header} holds a credential inline ({mask(value)}).",
                    "bearer_env: GATE_TOKEN  (the token from an environment variable), or id_token: true",
                )


# ---- HY003: variable references in env values ---------------------------------------------------
# gcp-facts §4.1 EnvVar.value: "Variable references are not supported in Cloud Run." A ${VAR} left in a
# value reaches the app literally (only service.image is substituted by deployer).
HY003 = Rule("HY003", WARNING, "Variable reference in an env value (not expanded by Cloud Run)", DOC_ENV)
_REFERENCE = re.compile(r"\$\{[^}]*\}|\$\([^)]*\)")


@register(HY003)
def env_references(config: DeployConfig, live: Observed | None) -> Iterator[Finding]:
    for name, value in config.service.plain_env().items():
        ref = _REFERENCE.search(value)
        if ref:
            yield HY003.at(
                service_resource(config),
                f"service.env.{name}",
                f'{name} contains {ref.group(0)}: "Variable references are not supported in Cloud Run" — the app '
                f"receives it literally.",
                f"write the value itself in {name}",
            )
