"""What only the directory store promises: its files, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import CorruptStateError, StaleStateError, StateError
from deployer.state.local import LocalStateStore


def test_objects_are_plain_files_with_a_generation_header(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path)
    gen = store.write("deploys/api/d-1.json", b'{"records": []}\n', if_generation=0)
    text = (tmp_path / "deploys" / "api" / "d-1.json").read_text()
    assert text == f'{{"generation": {gen}}}\n{{"records": []}}\n'


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path)
    gen = store.write("k", b"1", if_generation=0)
    for i in range(5):
        gen = store.write("k", str(i).encode(), if_generation=gen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "k"]


def test_a_file_not_written_by_deployer_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "api.json").write_text('{"holder": "someone"}')
    store = LocalStateStore(tmp_path)
    with pytest.raises(CorruptStateError) as info:
        store.read("locks/api.json")
    assert info.value.message == f"state object {tmp_path}/locks/api.json has no valid generation header; " + (
        "it was not written by deployer"
    )


def test_where_is_the_absolute_file_even_for_a_relative_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalStateStore(".deployer")
    assert store.where("deploys/api/d-1.json") == f"{tmp_path}/.deployer/deploys/api/d-1.json"
    monkeypatch.chdir("/")  # where it is does not follow the current directory
    assert store.where("locks/api.json") == f"{tmp_path}/.deployer/locks/api.json"
    with pytest.raises(ValueError):
        store.where("../x")


def test_a_write_the_filesystem_refuses_is_a_state_error(tmp_path: Path) -> None:
    # Known limit of the directory store: a key cannot also be a directory of other keys
    # (Cloud Storage allows it; deployer's keys never need it).
    store = LocalStateStore(tmp_path)
    store.write("locks", b"x", if_generation=0)
    with pytest.raises(StateError, match=r"cannot write state locks/api\.json"):
        store.write("locks/api.json", b"x", if_generation=None)


def test_a_state_directory_that_cannot_be_created_is_a_state_error_at_the_first_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    store = LocalStateStore(tmp_path / "file" / "state")  # opening touches nothing
    with pytest.raises(StateError, match=r"cannot create the state directory .*/file/state: Not a directory"):
        store.write("locks/api.json", b"x", if_generation=0)


def test_opening_reading_listing_and_deleting_create_nothing(tmp_path: Path) -> None:
    root = tmp_path / "a" / ".deployer"
    store = LocalStateStore(root)
    assert store.read("locks/api.json") is None
    assert store.list("deploys/") == []
    assert store.delete("locks/api.json", if_generation=None) is False
    with pytest.raises(StaleStateError):
        store.delete("locks/api.json", if_generation=7)
    assert not (tmp_path / "a").exists()
    gen = store.write("locks/api.json", b"x", if_generation=0)  # the first write creates it
    assert store.read("locks/api.json") == (b"x", gen)
    assert sorted(p.name for p in root.iterdir()) == [".lock", "locks"]
