"""``emcopilot recipes``: list named recipes."""
from __future__ import annotations

from ..recipe import recipe_index


def add_parser(subparsers):
    return subparsers.add_parser("recipes", help="list named recipes",
                                 description="List built-in and plugin-shipped recipes.")


def run(args) -> int:
    for name, source in sorted(recipe_index().items()):
        print(f"{name:<32} {source.description.splitlines()[0] if source.description else ''}")
    return 0
