"""Built-in recipes (YAML package data; see ``emcopilot recipes``)."""
