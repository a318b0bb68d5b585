"""Options of the process runtime and the load balancer (``LocalCloud(runtime_options={...})``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from deployer.errors import UsageError


@dataclass
class RuntimeOptions:
    # configs/local-images.yaml by default: image reference → command (images.py)
    images_file: str | None = None
    # local Secret Manager values (secrets.py); a seed document may add ``secrets``/``secrets_file``
    secrets_file: str | None = None
    # how long Cloud Run's *default* TCP startup probe may take locally (probe.py); explicit probes
    # keep their own timing
    startup_timeout: float = 20.0
    # a revision with no traffic, no tag, no open request and min_instance_count 0 stops after this
    # many idle seconds (Cloud Run keeps idle instances around for a while, then scales to zero)
    idle_stop: float = 300.0
    # SIGTERM → SIGKILL grace for revision processes (Cloud Run gives 10 s; shorter keeps tests fast)
    stop_grace: float = 5.0
    # stdout/stderr lines kept per revision
    log_lines: int = 2000
    # how often idle revisions and min instances are checked
    sweep_interval: float = 1.0
    # the traffic split's random source (None: the world's seed)
    lb_seed: int | None = None
    # Cloud Armor rate-limit clock (seconds); tests inject a controllable one
    armor_clock: Callable[[], float] = field(default=time.monotonic)
    # which URL map the LB serves when several exist ("name" or "project/name"); default: the only one,
    # else the first whose host rules match the request, else the first by name
    url_map: str | None = None
    # LB request log size
    lb_log_limit: int = 100_000
    # seconds the LB lets open connections finish when it stops
    lb_shutdown_timeout: float = 2.0

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> RuntimeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown runtime option(s): {', '.join(unknown)}", hint=f"known: {', '.join(sorted(known))}"
            )
        return cls(**options)
