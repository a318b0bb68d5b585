"""Who is acting: recorded in the journal's ``started`` record and in the service lock."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict


class Owner(BaseModel):
    """A user on a host (a process), or a Cloud Build job (``BUILD_ID`` is set in every build step)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str
    host: str
    pid: int
    build_id: str | None = None

    @classmethod
    def current(cls, env: Mapping[str, str] | None = None) -> Owner:
        env = os.environ if env is None else env
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (some containers)
            user = f"uid-{os.getuid()}"
        return cls(user=user, host=socket.gethostname(), pid=os.getpid(), build_id=env.get("BUILD_ID") or None)

    def describe(self) -> str:
        where = f"{self.user}@{self.host} pid {self.pid}"
        return f"{where}, Cloud Build {self.build_id}" if self.build_id else where
