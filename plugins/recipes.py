"""Ships the built-in recipes (the ``emcopilot_recipes`` package data)."""
from importlib.resources import files

from emcopilot import hookimpl


@hookimpl
def register_recipes(register):
    register(files("emcopilot_recipes"))
