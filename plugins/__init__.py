"""emcopilot's built-in plugins.

Each module named by an entry point in ``pyproject.toml`` registers its
components through the public hooks, exactly as a third-party package would.
Registration modules stay light; heavy code lives in sibling modules that
factories import on first use.
"""
