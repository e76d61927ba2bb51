"""The plugin host: registration, lookup errors, broken and misspelled plugins."""
from __future__ import annotations

import inspect

import pytest

from emcopilot import PluginError, hookimpl
from emcopilot.core import hookspecs
from emcopilot.core.plugins import SLOTS, PluginHost, build_registry, get_registry
from tests.conftest import FakePlugin


def test_every_slot_has_a_documented_hook_taking_register():
    for slot, hook_name in list(SLOTS.items()) + [("recipes", "register_recipes")]:
        hook = getattr(hookspecs, hook_name)
        assert list(inspect.signature(hook).parameters) == ["register"], hook_name
        doc = inspect.getdoc(hook)
        assert doc and "recipe" in doc.lower(), f"{hook_name} must say how to use it in a recipe"


def test_registry_records_origin_and_params(fake_registry):
    component = fake_registry.get("prior_extractor", "blobs")
    assert component.slot == "prior_extractor"
    assert component.origin.plugin == "fake"
    assert set(component.params) == {"threshold", "radius_nm"}
    made = component.create({"threshold": 0.1})
    assert made.params == {"threshold": 0.1, "radius_nm": 1.0}


def test_unknown_name_lists_what_exists_with_did_you_mean(fake_registry):
    with pytest.raises(PluginError) as error:
        fake_registry.get("prior_extractor", "blob")
    assert "Did you mean 'blobs'" in str(error.value)
    assert "Available prior_extractors: blobs" in str(error.value)


def test_unknown_slot(fake_registry):
    with pytest.raises(PluginError, match="unknown slot 'segmentor'.*segmenter"):
        fake_registry.get("segmentor", "net")


def test_a_name_two_plugins_register_is_disabled_and_both_are_listed():
    class Other:
        @hookimpl
        def register_metrics(self, register):
            register("other", lambda p, s: None)

    registry = build_registry([("first", FakePlugin()), ("second", FakePlugin()), ("other", Other())])
    with pytest.raises(PluginError) as error:
        registry.get("metric", "count")
    message = str(error.value)
    assert "registered twice" in message and "'first'" in message and "'second'" in message
    assert {b.origin.plugin for b in registry.broken} == {"first", "second"}
    assert registry.get("metric", "other")  # everything else keeps working


def test_a_plugin_that_takes_a_built_in_name_is_listed_and_the_built_in_kept():
    from emcopilot.core.plugins import Origin

    class Impostor:
        @hookimpl
        def register_segmenters(self, register):
            register("unet", lambda p, s: "impostor")

    host = PluginHost()
    host.load_entry_points()
    host.add(Impostor(), Origin("impostor", "impostor", "acme-em", "1.0"))
    registry = host.collect()
    assert registry.get("segmenter", "unet").origin.distribution == "emcopilot"
    [broken] = registry.broken
    assert broken.origin.plugin == "impostor" and "built-in one is used" in broken.error


def test_two_entry_points_of_one_name_load_the_first_and_list_the_second():
    registry = build_registry([("same", FakePlugin()), ("same", FakePlugin())])
    assert registry.get("metric", "count")
    assert "two plugins are named 'same'" in registry.broken[0].error


def test_misspelled_hook_disables_that_plugin_only():
    class Misspelled:
        @hookimpl
        def register_segmentors(self, register):  # typo
            pass

        @hookimpl
        def register_metrics(self, register):
            register("typo-metric", lambda p, s: None)

    registry = build_registry([("typo", Misspelled()), ("fake", FakePlugin())])
    assert registry.get("metric", "count")
    [broken] = registry.broken
    assert broken.origin.plugin == "typo"
    assert "unknown hook" in broken.error and "Did you mean 'register_segmenters'" in broken.error
    with pytest.raises(PluginError, match="typo-metric"):
        registry.get("metric", "typo-metric")


def test_hook_with_unknown_argument_is_rejected_and_others_still_load():
    class BadArgs:
        @hookimpl
        def register_metrics(self, register, flavour):
            pass

    registry = build_registry([("bad", BadArgs()), ("fake", FakePlugin())])
    assert registry.get("metric", "count")
    assert [b.origin.plugin for b in registry.broken] == ["bad"]
    assert "flavour" in registry.broken[0].error


def test_hook_may_take_fewer_arguments():
    calls = []

    class NoArgs:
        @hookimpl
        def register_metrics(self):
            calls.append(True)

    build_registry([("noargs", NoArgs())])
    assert calls == [True]


def test_plugin_whose_hook_raises_is_reported_not_fatal():
    class Raises:
        @hookimpl
        def register_generators(self, register):
            raise RuntimeError("boom")

    registry = build_registry([("raises", Raises()), ("fake", FakePlugin())])
    assert registry.get("generator", "flat")
    assert "RuntimeError: boom" in registry.broken[0].error


def test_import_failure_is_listed_with_distribution(monkeypatch):
    class FakeDist:
        metadata = {"Name": "emcopilot-broken"}
        version = "9.9"

    class FailingEntryPoint:
        name, value, dist = "broken", "emcopilot_broken.plugin", FakeDist()

        def load(self):
            raise ImportError("No module named 'emcopilot_broken'")

    class GoodEntryPoint:
        name, value, dist = "good", "tests.conftest", None

        def load(self):
            return FakePlugin()

    monkeypatch.setattr("emcopilot.core.plugins.entry_points", lambda group: [FailingEntryPoint(), GoodEntryPoint()])
    host = PluginHost()
    host.load_entry_points()
    registry = host.collect()
    assert registry.get("metric", "count")
    [broken] = registry.broken
    row = broken.as_dict()
    assert row["distribution"] == "emcopilot-broken" and row["version"] == "9.9"
    assert "No module named 'emcopilot_broken'" in row["error"]
    with pytest.raises(PluginError, match="broken"):
        registry.get("metric", "missing")


def test_factory_failure_names_plugin_and_slot():
    def explode(params, sample):
        raise ValueError("needs a checkpoint")

    class Exploding:
        @hookimpl
        def register_segmenters(self, register):
            register("explodes", explode)

    registry = build_registry([("exploding", Exploding())])
    with pytest.raises(PluginError, match="segmenter 'explodes' from plugin 'exploding'.*needs a checkpoint"):
        registry.get("segmenter", "explodes").create({})


@pytest.mark.parametrize("bad", [
    lambda register: register("", lambda p, s: None),
    lambda register: register("x", "not callable"),
    lambda register: register("x", lambda p, s: None, params={"a": 3}),
])
def test_a_bad_registration_disables_the_whole_plugin_and_nothing_else(bad):
    class Bad:
        @hookimpl
        def register_metrics(self, register):
            register("fine-before", lambda p, s: None)
            bad(register)

    registry = build_registry([("bad", Bad()), ("fake", FakePlugin())])
    assert registry.get("metric", "count")
    [broken] = registry.broken
    assert broken.origin.plugin == "bad" and "register_metrics" in broken.error
    with pytest.raises(PluginError, match="plugin 'bad'.*is broken"):
        registry.get("metric", "fine-before")  # half a plugin is not kept


def test_builtins_register_through_entry_points():
    registry = get_registry(reload=True)
    assert not registry.broken, registry.broken
    origins = {component.origin.distribution for component in registry.all()}
    assert origins == {"emcopilot"}
    assert any(origin.plugin == "builtin_recipes" for _, origin in registry.recipe_sources)


def test_a_malformed_shipped_recipe_is_left_out_and_every_other_recipe_works(tmp_path):
    from emcopilot.core.recipe import load_recipe, recipe_index

    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "broken.yaml").write_text("name: broken\nsample: [unclosed\n")
    (folder / "nameless.yaml").write_text("description: no name\n")
    (folder / "taken.yaml").write_text("name: nanoparticles-haadf\n")
    (folder / "fine.yaml").write_text("name: lab-fine\nbase: nanoparticles-haadf\n")

    class Ships:
        @hookimpl
        def register_recipes(self, register):
            register(folder)

    host = PluginHost()
    host.load_entry_points()
    from emcopilot.core.plugins import Origin
    host.add(Ships(), Origin("ships", "ships", "acme-recipes", "1.0"))
    registry = host.collect()
    index = recipe_index(registry)
    assert "nanoparticles-haadf" in index and index["nanoparticles-haadf"].origin.startswith("plugin 'builtin")
    assert "lab-fine" in index and "broken" not in index
    errors = " | ".join(b.error for b in registry.broken if b.origin.plugin == "ships")
    assert "broken.yaml" in errors and "needs a 'name:'" in errors and "shipped already" in errors
    recipe_index(registry)
    assert len([b for b in registry.broken if b.origin.plugin == "ships"]) == 3  # listed once
    assert load_recipe("nanoparticles-haadf", registry=registry).name == "nanoparticles-haadf"
