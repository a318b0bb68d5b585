"""Which local command an image reference runs as: ``configs/local-images.yaml``.

The file maps an image reference to a command, a working directory (relative to the repository
root) and default environment::

    images:
      local/chat-backend:v1:
        command: [python, examples/chat-backend/server.py]
        workdir: .
        env: {CHAT_MODE: ok}

A leading ``python``/``python3`` runs with the local cloud's own interpreter (``sys.executable``), so
the backend sees the same virtualenv. An image not listed is an image Cloud Run cannot pull: the
revision fails with ``CONTAINER_MISSING`` and Google's message (see ``failures.image_not_found``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deployer.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_IMAGES_FILE = REPO_ROOT / "configs" / "local-images.yaml"
_PYTHONS = ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1)
    workdir: str = "."
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value


class ImagesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: dict[str, ImageSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """What to execute for one image: argv, working directory and the image's default env."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


class ImageMap:
    """Image reference → how to run it locally."""

    def __init__(self, images: dict[str, ImageSpec], root: Path = REPO_ROOT) -> None:
        self.images = dict(images)
        self.root = root

    @classmethod
    def load(cls, path: str | Path | None = None, root: Path = REPO_ROOT) -> ImageMap:
        """Read the file; the default file may be absent (then no image can be pulled)."""
        p = Path(path) if path is not None else DEFAULT_IMAGES_FILE
        if path is None and not p.exists():
            return cls({}, root)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read the image map: {exc.strerror}", file=str(p)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", file=str(p)) from exc
        try:
            parsed = ImagesFile.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(x) for x in first["loc"])
            raise ConfigError(first["msg"], file=str(p), key=key) from exc
        return cls(parsed.images, root)

    def resolve(self, image: str) -> Launch | None:
        spec = self.images.get(image)
        if spec is None:
            return None
        argv = list(spec.command)
        if argv[0] in _PYTHONS:
            argv[0] = sys.executable
        cwd = (self.root / spec.workdir).resolve()
        return Launch(argv=argv, cwd=cwd, env=dict(spec.env))
