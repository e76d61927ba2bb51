"""``emcopilot recipes``: list named recipes."""
from __future__ import annotations

import json

from ..core.recipe import recipe_index


def add_parser(subparsers):
    parser = subparsers.add_parser("recipes", help="list named recipes",
                                   description="List built-in and plugin-shipped recipes.")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable: name, description, file and the plugin that ships it")
    return parser


def run(args) -> int:
    index = sorted(recipe_index().items())
    if getattr(args, "json", False):
        print(json.dumps([{"name": name, "description": source.description, "file": source.label,
                           "origin": source.origin} for name, source in index], indent=2))
        return 0
    for name, source in index:
        print(f"{name:<32} {source.description.splitlines()[0] if source.description else ''}")
    return 0
