"""Hook specifications: one ``register_<slot>s(register)`` hook per slot.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names
are the hooks below. Each hook receives a ``register`` callback owned by the
host; the plugin calls it once per component and never touches the registry::

    from emcopilot import hookimpl, Param

    @hookimpl
    def register_physics_adapters(register):
        register(
            "idpc-stem",
            make_idpc_adapter,
            params={"dose_e_per_A2": Param(2000.0, float, min=0.0, unit="e/Å²")},
            description="integrated differential phase contrast STEM",
        )

``make_idpc_adapter(params, sample)`` is the *factory*: it is called only when a
recipe uses the component, with ``params`` already validated against the
declared schema (defaults filled in) and ``sample`` the recipe's validated
``sample:`` block (a :class:`emcopilot.core.recipe.Sample`, or ``None`` outside a
recipe). Import heavy libraries (torch, segment_anything) inside the factory so
that listing plugins and validating recipes stays instant.

A recipe then selects the component by name, in the slot's block::

    physics_adapter:
      plugin: idpc-stem
      params: {dose_e_per_A2: 1500}

Hook implementations may accept fewer arguments than the spec (pluggy), so a
hook can grow arguments without breaking plugins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .plugins import RegisterComponent, RegisterRecipes

PROJECT = "emcopilot"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_prior_extractors(register: RegisterComponent) -> None:
    """Register prior extractors: micrograph -> instance masks and/or atom points.

    The factory returns an object with ``extract(micrograph) -> Instances``
    (:class:`emcopilot.core.interfaces.PriorExtractor`). Use in a recipe as
    ``prior_extractor: {plugin: NAME, params: {...}}``.
    """


@hookspec
def register_generators(register: RegisterComponent) -> None:
    """Register generators: label map (+ attributes) -> clean, noise-free image.

    The factory returns an object implementing
    :class:`emcopilot.core.interfaces.Generator` (``fit``, ``generate``, ``save``,
    ``load``). Use in a recipe as ``generator: {plugin: NAME, params: {...}}``.
    """


@hookspec
def register_physics_adapters(register: RegisterComponent) -> None:
    """Register physics adapters: clean image -> image as a microscope records it.

    The factory returns an object implementing
    :class:`emcopilot.core.interfaces.PhysicsAdapter` (``fit`` to real micrographs,
    ``apply`` to a clean image). Use in a recipe as
    ``physics_adapter: {plugin: NAME, params: {...}}``.
    """


@hookspec
def register_segmenters(register: RegisterComponent) -> None:
    """Register segmenters: micrograph -> instances; trainable.

    The factory returns an object implementing
    :class:`emcopilot.core.interfaces.Segmenter` (``fit``, ``predict``, ``save``,
    ``load``). Use in a recipe as ``segmenter: {plugin: NAME, params: {...}}``.
    """


@hookspec
def register_metrics(register: RegisterComponent) -> None:
    """Register metrics: (prediction, truth) -> named numbers.

    The factory returns a callable implementing
    :class:`emcopilot.core.interfaces.Metric`. Use in a recipe as a list entry of
    ``metrics: [{plugin: NAME, params: {...}}]``. ``compares`` says what the
    metric takes, so that the loop scores it where it can without labels
    (:mod:`emcopilot.pipeline.scoring`): ``"instances"`` (default: two sets of objects,
    prediction and truth), ``"image pairs"`` (an image and its reference) or
    ``"image sets"`` (two unpaired sets of images).
    """


@hookspec
def register_recipes(register: RegisterRecipes) -> None:
    """Register recipe files shipped by a plugin package.

    Call ``register(path)`` with a ``.yaml`` file or a directory (a
    ``pathlib.Path`` or an ``importlib.resources`` traversable) holding
    ``*.yaml`` recipes. Each recipe is then available by its ``name:`` to
    ``emcopilot run NAME`` and as a ``base:`` of other recipes.
    """
