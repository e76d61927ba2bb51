"""The plugin core: the slots' hook specifications and registry, the data types every component
exchanges (:class:`~emcopilot.core.interfaces.Micrograph`, ``Instances``, ``Layout``), parameters,
recipes, errors, and the atomic file writers and safe checkpoints everything else writes through.
It imports nothing above it."""
