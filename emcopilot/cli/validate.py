"""``emcopilot validate RECIPE``: load and check a recipe without running it."""
from __future__ import annotations

import json

from ..core.recipe import load_recipe


def add_parser(subparsers):
    parser = subparsers.add_parser("validate", help="check a recipe (name or path)",
                                   description="Validate a recipe and every plugin's params; imports nothing heavy.")
    parser.add_argument("recipe", help="built-in recipe name or path to a YAML file")
    parser.add_argument("--show", action="store_true", help="print the resolved recipe as JSON")
    return parser


def run(args) -> int:
    recipe = load_recipe(args.recipe)
    if args.show:
        print(json.dumps(recipe.as_dict(), indent=2, default=str))
    else:
        chain = " <- ".join(recipe.chain)
        print(f"ok: {recipe.name} ({chain})")
    return 0
