"""``make demo``: the story of what deployer can do so far, told against the local cloud.

Each chapter runs real commands against a real local cloud started for the demo, and the demo
stops everything it started before it exits.
"""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(highlight=False)


def chapter(title: str) -> None:
    console.print(f"\n[bold]== {title}[/bold]")


def main() -> int:
    from deployer.localcloud.server import LocalCloud

    console.print("[bold]deployer demo[/bold]: every step below runs against the embedded local Google Cloud.")
    with LocalCloud() as cloud:
        chapter("1. The local cloud is up")
        console.print(f"Google APIs served at {cloud.endpoint} (Cloud Run v2, Compute, Cloud Storage).")
        import urllib.request

        with urllib.request.urlopen(cloud.endpoint + "/_localcloud/health", timeout=5) as resp:
            console.print(f"GET /_localcloud/health -> {resp.status}")
    console.print("\nThe local cloud has stopped; nothing is left running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
