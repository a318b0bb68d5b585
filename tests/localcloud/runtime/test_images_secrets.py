"""The image map and the local secrets store."""

from __future__ import annotations

import sys

import pytest

from deployer.errors import ConfigError
from deployer.localcloud.runtime.images import ImageMap
from deployer.localcloud.runtime.secrets import SecretStore


def test_image_map_resolves_commands_relative_to_the_root(tmp_path):
    f = tmp_path / "images.yaml"
    f.write_text("images:\n  local/app:v1:\n    command: [python, app.py]\n    workdir: sub\n    env: {N: 5}\n")
    images = ImageMap.load(f, root=tmp_path)
    launch = images.resolve("local/app:v1")
    assert launch is not None
    assert launch.argv == [sys.executable, "app.py"]
    assert launch.cwd == (tmp_path / "sub").resolve()
    assert launch.env == {"N": "5"}
    assert images.resolve("local/app:v2") is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("images:\n  a: {command: []}\n", "images.a.command"),
        ("images:\n  a: {command: [x], colour: red}\n", "images.a.colour"),
        ("images: [\n", None),
    ],
)
def test_a_bad_image_map_names_file_and_key(tmp_path, text, key):
    f = tmp_path / "images.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        ImageMap.load(f)
    assert str(f) in info.value.message
    if key:
        assert info.value.key == key


def test_the_repository_image_map_loads():
    images = ImageMap.load()
    assert images.resolve("local/chat-backend:v1") is not None


def test_secret_forms_and_latest():
    store = SecretStore(
        {
            "projects/p/secrets/jwt/versions/1": "one",
            "projects/p/secrets/jwt/versions/2": "two",
            "projects/p/secrets/api": "any-version",
            "token": "bare",
        }
    )
    assert store.resolve("jwt", "latest", "p") == ("projects/p/secrets/jwt/versions/latest", "two")
    assert store.resolve("projects/p/secrets/jwt", "1", "other") == ("projects/p/secrets/jwt/versions/1", "one")
    assert store.resolve("api", "7", "p")[1] == "any-version"
    assert store.resolve("token", "", "q") == ("projects/q/secrets/token/versions/latest", "bare")
    assert store.resolve("missing", "latest", "p") == ("projects/p/secrets/missing/versions/latest", None)


def test_secrets_file_must_be_a_mapping(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("- a\n")
    with pytest.raises(ConfigError):
        SecretStore.read_file(f)
    f.write_text("a: {nested: 1}\n")
    with pytest.raises(ConfigError):
        SecretStore.read_file(f)
