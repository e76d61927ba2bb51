"""``emcopilot plugins``: list registered components and broken plugins."""
from __future__ import annotations

import json

from ..core.plugins import SLOTS, get_registry


def add_parser(subparsers):
    parser = subparsers.add_parser("plugins", help="list plugins by slot",
                                   description="List every registered component with its origin.")
    parser.add_argument("--slot", choices=sorted(SLOTS), help="only this slot")
    parser.add_argument("--json", action="store_true", help="machine-readable list")
    parser.add_argument("--params", action="store_true",
                        help="also list each component's parameters: default, unit, range and help")
    return parser


def _param_line(key: str, description: dict) -> str:
    """``  name = default [unit] (range or choices): help`` of one parameter."""
    unit = f" {description['unit']}" if description.get("unit") else ""
    bounds = []
    if "choices" in description:
        bounds.append("one of " + ", ".join(map(str, description["choices"])))
    if "min" in description or "max" in description:
        bounds.append(f"{description.get('min', '')}..{description.get('max', '')}")
    if description.get("inference_only"):
        bounds.append("inference only: changing it keeps the trained model")
    bounds_text = f" ({'; '.join(bounds)})" if bounds else ""
    help_text = f": {description['help']}" if description.get("help") else ""
    return f"      {key} = {description['default']!r}{unit}{bounds_text}{help_text}"


def run(args) -> int:
    from ..core.recipe import recipe_index

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
            if args.params:
                for key, param in component.params.items():
                    print(_param_line(key, param.describe()))
    if broken:
        print("broken plugins:")
        for plugin in registry.broken:
            print(f"  {plugin.origin}: {plugin.error}")
    return 0
