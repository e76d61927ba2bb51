"""Recipe loading, inheritance and validation; malformed and hostile recipes."""
from __future__ import annotations

from pathlib import Path

import pytest

from emcopilot import RecipeError
from emcopilot.core.recipe import load_recipe
from tests.conftest import GOOD_RECIPE


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_recipe_resolves_defaults(fake_registry, good_recipe):
    recipe = load_recipe(good_recipe)
    assert recipe.name == "test-recipe"
    assert recipe.sample.working_pixel_size_nm == 0.2
    assert recipe.sample.particle_contrast == "bright"
    assert recipe.prior_extractor.params == {"threshold": 0.3, "radius_nm": 1.0}
    assert recipe.physics_adapter.params == {"dose_e_per_A2": 1000.0, "mode": "poisson"}
    assert recipe.profile("fast")["segmenter_steps"] == 10
    assert recipe.train["seed"] == 1
    made = recipe.prior_extractor.create(recipe.sample)
    assert made.sample is recipe.sample


def test_base_inheritance_merges_and_tracks_lines(fake_registry, tmp_path, good_recipe):
    child = write(tmp_path, "name: child\nbase: good.yaml\nsample:\n  modality: bf-stem\n"
                            "prior_extractor:\n  params: {radius_nm: 2.5}\n", "child.yaml")
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.sample.modality == "bf-stem" and recipe.sample.material == "Pt"
    assert recipe.sample.particle_contrast == "dark"
    assert recipe.prior_extractor.params == {"threshold": 0.3, "radius_nm": 2.5}
    assert recipe.chain == (str(good_recipe.resolve()), str(child))
    bad_child = write(tmp_path, "name: c2\nbase: good.yaml\nsegmenter:\n  params: {depth: 99}\n", "c2.yaml")
    with pytest.raises(RecipeError) as error:
        load_recipe(bad_child)
    assert error.value.file == str(bad_child) and error.value.line == 4
    assert error.value.key == "segmenter.params.depth"


def test_changing_plugin_in_child_drops_base_params(fake_registry, tmp_path, good_recipe):
    child = write(tmp_path, "name: c\nbase: good.yaml\nprior_extractor: {plugin: blobs}\n", "c.yaml")
    assert load_recipe(child).prior_extractor.params["threshold"] == 0.3  # same plugin: inherited


def error_of(tmp_path, text, name="r.yaml") -> RecipeError:
    path = write(tmp_path, text, name)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    return error.value


MALFORMED = {
    "yaml-syntax": ("name: x\nsample: [unclosed\n", 3, None, "invalid YAML"),
    "tab-indent": ("name: x\nsample:\n\tmodality: a\n", 3, None, "invalid YAML"),
    "hostile-apply-tag": ("name: !!python/object/apply:os.system ['touch PWNED']\n", 1, None, "not allowed"),
    "hostile-object-tag": ("name: x\nsample: !!python/object:builtins.dict {}\n", 2, None, "not allowed"),
    "custom-tag": ("name: !include other.yaml\n", 1, None, "not allowed"),
    "empty-file": ("", 1, None, "empty"),
    "comment-only": ("# nothing here\n", 1, None, "empty"),
    "not-a-mapping": ("- a\n- b\n", 1, None, "mapping"),
    "unknown-top-key": (GOOD_RECIPE + "segmentor: {plugin: net}\n", 23, "segmentor", "Did you mean 'segmenter'"),
    "missing-name": (GOOD_RECIPE.replace("name: test-recipe\n", ""), None, "name", "needs a 'name:'"),
    "missing-slot": (GOOD_RECIPE.replace("generator:\n  plugin: flat\n", ""), None, "generator", "must name a generator"),
    "unknown-plugin": (GOOD_RECIPE.replace("plugin: net", "plugin: nett"), 16, "segmenter.plugin", "Did you mean 'net'"),
    "unknown-param": (GOOD_RECIPE.replace("{threshold: 0.3}", "{treshold: 0.3}"), 10, "prior_extractor.params.treshold", "Did you mean 'threshold'"),
    "wrong-param-type": (GOOD_RECIPE.replace("{threshold: 0.3}", "{threshold: high}"), 10, "prior_extractor.params.threshold", "must be a number"),
    "bool-is-not-number": (GOOD_RECIPE.replace("{threshold: 0.3}", "{threshold: true}"), 10, "prior_extractor.params.threshold", "must be a number"),
    "out-of-range-param": (GOOD_RECIPE.replace("{threshold: 0.3}", "{threshold: 3.0}"), 10, "prior_extractor.params.threshold", "must be <= 1.0"),
    "nan-param": (GOOD_RECIPE.replace("{threshold: 0.3}", "{threshold: .nan}"), 10, "prior_extractor.params.threshold", "finite"),
    "bad-choice": (GOOD_RECIPE.replace("plugin: noisy", "plugin: noisy\n  params: {mode: gaus}"), 15, "physics_adapter.params.mode", "Did you mean 'gauss'"),
    "wrong-list-item": (GOOD_RECIPE.replace("plugin: net", "plugin: net\n  params: {channels: [16, x]}"), 17, "segmenter.params.channels", "item 1"),
    "sample-out-of-range": (GOOD_RECIPE.replace("pixel_size_nm: 0.2", "pixel_size_nm: -1"), 7, "sample.working_pixel_size_nm", ">= 0.001"),
    "sample-unknown-key": (GOOD_RECIPE.replace("material: Pt", "metal: Pt"), 4, "sample.metal", "Did you mean 'material'"),
    "sample-bad-range": (GOOD_RECIPE.replace("[1.0, 5.0]", "[5.0, 1.0]"), 6, "sample.diameter_nm", "min <= max"),
    "sample-kind": (GOOD_RECIPE.replace("material: Pt", "material: Pt\n  kind: atom"), 5, "sample.kind", "Did you mean 'atoms'"),
    "slot-not-mapping": (GOOD_RECIPE.replace("generator:\n  plugin: flat", "generator: flat"), 11, "generator", "mapping"),
    "slot-extra-key": (GOOD_RECIPE.replace("plugin: flat", "plugin: flat\n  param: {}"), 13, "generator.param", "Did you mean 'params'"),
    "metrics-not-list": (GOOD_RECIPE.replace("metrics:\n  - plugin: count", "metrics: {plugin: count}"), 17, "metrics", "list"),
    "unknown-profile-key": (GOOD_RECIPE.replace("segmenter_steps: 10", "segmenter_step: 10"), 22, "train.profiles.fast.segmenter_step", "Did you mean 'segmenter_steps'"),
    "missing-profile": (GOOD_RECIPE.replace("seed: 1", "seed: 1\n  profile: full"), 21, "train.profile", "no profile 'full'"),
    "missing-base": ("name: x\nbase: nowhere.yaml\n", 2, "base", "does not exist"),
    "unknown-base-name": ("name: x\nbase: no-such-recipe\n", 2, "base", "no recipe named"),
    "base-escapes-folder": ("name: x\nbase: ../../etc/passwd.yaml\n", 2, "base", "leaves the recipe's folder"),
    "base-absolute": ("name: x\nbase: /etc/hosts.yaml\n", 2, "base", "leaves the recipe's folder"),
    "base-not-string": ("name: x\nbase: [a, b]\n", 2, "base", "must be a recipe name"),
    "billion-laughs": ("a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                       "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nname: *e\n", 1, None, "aliases"),
    "duplicate-key": ("name: x\nsample:\n  material: Pt\n  material: Pd\n", 4, None, "given twice, on lines 3 and 4"),
    "duplicate-top-key": (GOOD_RECIPE + "name: other\n", 23, None, "'name' is given twice"),
    "not-utf8": ("name: caf\xe9\n".encode("latin-1"), None, None, "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_recipe_gives_one_clear_error(fake_registry, tmp_path, case):
    text, line, key, fragment = MALFORMED[case]
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    error = caught.value
    assert error.file == str(path) or str(path) in str(error)
    assert fragment in str(error), str(error)
    if line is not None:
        assert error.line == line, str(error)
    if key is not None:
        assert error.key == key, str(error)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_base_cycle_is_detected(fake_registry, tmp_path):
    write(tmp_path, "name: a\nbase: b.yaml\n", "a.yaml")
    write(tmp_path, "name: b\nbase: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match="cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_recipe(tmp_path / "a.yaml")


def test_self_base_is_a_cycle(fake_registry, tmp_path):
    assert "cycle" in str(error_of(tmp_path, "name: a\nbase: r.yaml\n"))


def test_directory_instead_of_file(fake_registry, tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipe(tmp_path / "dir.yaml")


def test_missing_file_and_unknown_name(fake_registry, tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="no recipe named 'nope'"):
        load_recipe("nope")


def test_oversized_file_is_refused(fake_registry, tmp_path):
    path = write(tmp_path, "name: x\n" + "# padding\n" * 40_000)
    with pytest.raises(RecipeError, match="limited to"):
        load_recipe(path)


def test_as_dict_is_json_serialisable(fake_registry, good_recipe):
    import json
    resolved = load_recipe(good_recipe).as_dict()
    assert json.loads(json.dumps(resolved))["segmenter"] == {"plugin": "net", "params": {"depth": 3, "channels": [16, 32]}}


def test_the_old_working_scale_key_is_read_with_a_warning_naming_its_line(fake_registry, tmp_path):
    old = write(tmp_path, GOOD_RECIPE.replace("working_pixel_size_nm: 0.2", "pixel_size_nm: 0.25"))
    line = GOOD_RECIPE.splitlines().index("  working_pixel_size_nm: 0.2") + 1
    with pytest.warns(DeprecationWarning, match=rf"{old}:{line}: 'sample.pixel_size_nm' is deprecated"):
        recipe = load_recipe(old)
    assert recipe.sample.working_pixel_size_nm == 0.25
    assert "pixel_size_nm" not in recipe.sample.as_dict()
    with pytest.warns(DeprecationWarning, match="working_pixel_size_nm"):
        assert recipe.sample.pixel_size_nm == 0.25  # the old attribute still answers, deprecated
    both = write(tmp_path, GOOD_RECIPE.replace("working_pixel_size_nm: 0.2",
                                               "working_pixel_size_nm: 0.2\n  pixel_size_nm: 0.25"), "both.yaml")
    with pytest.raises(RecipeError, match="give 'working_pixel_size_nm' only"):
        load_recipe(both)
