"""``emcopilot plugins / recipes / validate / --version`` and import hygiene."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emcopilot import __version__
from emcopilot.cli import main
from emcopilot.core.plugins import SLOTS
from emcopilot.core.recipe import recipe_index

BUILTIN_RECIPES = ["nanoparticles-haadf", "nanoparticles-haadf-gan", "nanoparticles-bf-stem", "subnm-clusters-haadf",
                   "single-atom-catalyst-haadf"]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"emcopilot {__version__}"


def test_plugins_json_lists_builtins_with_contract_fields(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows, "no plugins listed"
    for row in rows:
        assert {"name", "slot", "distribution", "version", "error"} <= set(row)
        if row["error"] is None:
            assert row["slot"] in SLOTS and row["distribution"] == "emcopilot" and row["version"] == __version__


def test_plugins_slot_filter(capsys, fake_registry):
    assert main(["plugins", "--slot", "segmenter", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["net"]
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "prior_extractor:" in text and "blobs" in text


def test_builtin_recipes_are_registered():
    assert set(BUILTIN_RECIPES) <= set(recipe_index())


@pytest.mark.parametrize("name", BUILTIN_RECIPES)
def test_builtin_recipes_validate(name, capsys):
    assert main(["validate", name]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"ok: {name}")


def test_validate_error_exits_nonzero_with_location(tmp_path, capsys, fake_registry):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsample: {working_pixel_size_nm: fast}\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: sample.working_pixel_size_nm:" in err and "must be a number" in err


def test_listing_and_validating_do_not_import_torch():
    code = ("import sys; from emcopilot.cli import main;"
            "main(['plugins', '--json']); main(['recipes']); main(['validate', 'nanoparticles-haadf']);"
            "heavy = [m for m in ('torch', 'segment_anything', 'torchvision', 'skimage') if m in sys.modules];"
            "print('HEAVY', heavy, file=sys.stderr)")
    result = run_python(code)
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]


def test_recipes_command_lists_descriptions(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN_RECIPES:
        assert name in out


def test_recipes_json_names_file_and_origin(capsys):
    assert main(["recipes", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert set(BUILTIN_RECIPES) <= set(listed)
    haadf = listed["nanoparticles-haadf"]
    assert haadf["file"].endswith("nanoparticles-haadf.yaml") and "emcopilot" in haadf["origin"]


def test_plugins_params_show_defaults_units_and_ranges(capsys):
    assert main(["plugins", "--slot", "segmenter", "--params"]) == 0
    out = capsys.readouterr().out
    assert "grow_nm = 0.0 nm (0.0..)" in out and "foreground_threshold = 0.5 (0.0..1.0)" in out
    assert "test_time_flips = 1 (one of 1, 2, 4, 8" in out


def test_a_reader_that_leaves_early_gets_no_traceback():
    result = subprocess.run(f"{sys.executable} -m emcopilot plugins --json | head -c 1", shell=True,
                            capture_output=True, text=True, executable="/bin/bash")
    assert result.stdout == "[" and result.stderr == "", result.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-0.2", "abc"])
@pytest.mark.parametrize("command", ["segment", "extract", "run", "evaluate"])
def test_a_pixel_size_that_is_not_finite_and_positive_is_refused_before_any_work(command, value, capsys, tmp_path):
    argv = {"segment": ["segment", str(tmp_path), "--model", str(tmp_path)],
            "extract": ["extract", "nanoparticles-haadf", "--input", str(tmp_path), "--out", str(tmp_path / "o")],
            "run": ["run", "nanoparticles-haadf", "--input", str(tmp_path), "--out", str(tmp_path / "o")],
            "evaluate": ["evaluate", "--pred", str(tmp_path), "--truth", str(tmp_path)]}[command]
    with pytest.raises(SystemExit) as caught:
        main(argv + ["--pixel-size-nm", value])
    assert caught.value.code == 2
    assert "--pixel-size-nm" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_out_that_cannot_be_written_is_one_line_and_traceback_on_request(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio
    import numpy as np

    iio.imwrite(tmp_path / "a.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "file").write_text("not a folder")
    argv = ["extract", "nanoparticles-haadf", "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "file"),
            "--pixel-size-nm", "0.2", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "file") in err and len(err.strip().splitlines()) == 1
    assert main(["--traceback", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("EMCOPILOT_DEBUG", "1")
    assert main(argv) == 1
    assert "Traceback" in capsys.readouterr().err
