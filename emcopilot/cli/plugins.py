"""``emcopilot plugins``: list registered components and broken plugins."""
from __future__ import annotations

import json

from ..plugins import SLOTS, get_registry


def add_parser(subparsers):
    parser = subparsers.add_parser("plugins", help="list plugins by slot",
                                   description="List every registered component with its origin.")
    parser.add_argument("--slot", choices=sorted(SLOTS), help="only this slot")
    parser.add_argument("--json", action="store_true", help="machine-readable list")
    return parser


def run(args) -> int:
    from ..recipe import recipe_index

    registry = get_registry()
    recipe_index(registry)  # a shipped recipe that cannot be read is listed under its plugin too
    rows = [component.as_dict() for component in registry.all(args.slot)]
    broken = [plugin.as_dict() for plugin in registry.broken]
    if args.json:
        print(json.dumps(rows + broken, indent=2, default=str))
        return 0
    for slot in ([args.slot] if args.slot else SLOTS):
        print(f"{slot}:")
        components = registry.all(slot)
        if not components:
            print("  (none)")
        for component in components:
            origin = component.origin
            print(f"  {component.name:<20} {origin.distribution or '-'} {origin.version or ''}"
                  f"  {component.description.splitlines()[0] if component.description else ''}")
    if broken:
        print("broken plugins:")
        for plugin in registry.broken:
            print(f"  {plugin.origin}: {plugin.error}")
    return 0
