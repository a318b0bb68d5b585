"""State and rules of the emulated API (placeholder until the API is built)."""

from __future__ import annotations

from typing import Any

from deployer.localcloud.world import World


class State:
    def __init__(self, world: World) -> None:
        self.world = world

    def reset(self) -> None:
        pass

    def seed(self, doc: dict[str, Any]) -> None:
        """Create the resources this API owns from a world document (see control.seed)."""


def install(world: World) -> State:
    state = State(world)
    world.apis["storage"] = state
    return state
