"""The Python API: ``emcopilot.run/extract/segment/load_run`` on paths, arrays, Micrographs and HyperSpy signals."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

import emcopilot
from emcopilot import InputError, Micrograph
from emcopilot.io.inputs import gather

pytest.importorskip("torch")

from emcopilot.cli import main  # noqa: E402
from emcopilot.pipeline.demo import make_experiment  # noqa: E402
from emcopilot.core.recipe import load_recipe  # noqa: E402

from test_loop import tiny_recipe  # noqa: E402
from test_segment_cli import _disks, model_dir  # noqa: E402,F401  (a fixture)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    recipe = tiny_recipe(folder)
    made = make_experiment(load_recipe(recipe), folder, count=2, side_px=96)
    return recipe, [path for path, _ in made]


def test_importing_emcopilot_does_not_import_torch():
    import subprocess
    code = "import sys, emcopilot; emcopilot.load_run; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_returns_the_table_the_cli_writes(experiment, tmp_path):
    recipe, paths = experiment
    result = emcopilot.run(recipe, paths, out=tmp_path / "api", progress=False)
    assert main(["run", str(recipe), "--input", *map(str, paths), "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    written = pd.read_csv(tmp_path / "cli" / "particles.csv")
    pd.testing.assert_frame_equal(result.table.reset_index(drop=True), pd.read_parquet(tmp_path / "cli" / "particles.parquet"))
    pd.testing.assert_frame_equal(result.table.reset_index(drop=True), written, check_dtype=False)
    assert result.images == ["demo_00.tif", "demo_01.tif"]
    assert result.statistics == json.loads((tmp_path / "api" / "statistics.json").read_text())
    again = emcopilot.load_run(tmp_path / "api")
    pd.testing.assert_frame_equal(again.table, result.table)
    assert again.images == result.images and again.statistics["pooled"] == result.statistics["pooled"]
    for name in result.images:
        labels = again.labels[name]
        assert labels.shape == (96, 96) and set(np.unique(labels)) - {0} == set(result.table.loc[
            result.table["image"] == name, "id"])
    assert "micrograph(s)" in repr(again) and str(tmp_path / "api") in repr(again)


def test_run_extract_and_segment_write_one_run_json_schema_and_one_errors_csv(experiment, tmp_path):
    from pathlib import Path

    from emcopilot.pipeline.rundir import RUN_JSON_FIELDS, RUN_JSON_SCHEMA

    recipe, paths = experiment
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    inputs = [*paths, broken]
    ran = emcopilot.run(recipe, inputs, out=tmp_path / "run", progress=False)
    extracted = emcopilot.extract(recipe, inputs, out=tmp_path / "extract", progress=False)
    segmented = emcopilot.segment(tmp_path / "run" / "model", inputs, out=tmp_path / "segment", progress=False)
    documented = (Path(__file__).parents[1] / "docs" / "run-folder.md").read_text(encoding="utf-8")
    for result in (ran, extracted, segmented):
        info = json.loads((result.out / "run.json").read_text())
        assert tuple(info)[:len(RUN_JSON_FIELDS)] == RUN_JSON_FIELDS and info["schema"] == RUN_JSON_SCHEMA
        assert info["recipe"]["name"] == load_recipe(recipe).name, info["command"]
        assert sorted(info["images"]) == ["demo_00.tif", "demo_01.tif"]
        for entry in info["images"].values():
            assert {"shape", "objects", "pixel_size_nm", "pixel_size_source", "pixel_size_credible"} <= set(entry)
            assert entry["pixel_size_source"] == "file" and entry["pixel_size_credible"] is True
        counts = result.table.groupby("image").size().to_dict()
        assert {name: entry["objects"] for name, entry in info["images"].items() if entry["objects"]} == counts
        assert [e["input"] for e in info["errors"]] == [str(broken)]
        errors = pd.read_csv(result.out / "errors.csv")
        assert list(errors.columns) == ["path", "error"] and list(errors["path"]) == [str(broken)]
        assert info["timings_s"]["total"] > 0
        for field in [*RUN_JSON_FIELDS, *(k for k in info if k not in RUN_JSON_FIELDS)]:
            assert f"`{field}`" in documented, field


def test_arrays_in_a_mapping_are_named_by_their_keys_and_hashed(experiment, tmp_path):
    import tifffile
    recipe, paths = experiment
    frames = {"left": tifffile.imread(paths[0]), "right": tifffile.imread(paths[1])}
    result = emcopilot.extract(recipe, frames, out=tmp_path / "x", pixel_size_nm=0.25, progress=False)
    assert result.images == ["left", "right"] and set(result.table["image"]) <= {"left", "right"}
    assert (result.table["pixel_size_nm"] == 0.25).all() and "eq_diameter_nm" in result.table
    assert (result.table["pixel_size_source"] == "--pixel-size-nm").all()
    inputs = result.run_info["inputs"]
    assert [(i["name"], i["kind"], i["path"]) for i in inputs] == [("left", "numpy array", None),
                                                                  ("right", "numpy array", None)]
    assert inputs[0]["sha256"] != inputs[1]["sha256"] and len(inputs[0]["sha256"]) == 64
    assert result.statistics["unit"] == "nm" and result.statistics["pooled"]["detected"] == len(result.table)
    assert (tmp_path / "x" / "masks" / "left.tif").is_file() and (tmp_path / "x" / "prior.json").is_file()


def test_a_stack_is_its_frames_and_unnamed_arrays_are_numbered():
    stack = np.random.default_rng(0).random((3, 16, 20))
    inputs = gather([stack, np.ones((8, 8))])
    assert [m.name for m in inputs[0].micrographs] == ["image0#0", "image0#1", "image0#2"]
    assert inputs[1].name == "image1" and inputs[1].micrographs[0].pixel_size_nm is None
    colour = gather(np.zeros((32, 32, 3), np.uint8))[0].micrographs
    assert len(colour) == 1 and colour[0].shape == (32, 32)


def test_in_memory_images_that_cannot_be_measured_are_refused_with_their_name():
    bad = np.ones((8, 8))
    bad[2, 3] = np.nan
    with pytest.raises(InputError, match="holes: 1 of 64 pixels are NaN"):
        gather({"holes": bad})
    with pytest.raises(InputError, match="dict"):
        gather([{"not": "an image"}])
    with pytest.raises(InputError, match="both named 'a'"):
        gather([Micrograph(np.ones((4, 4)), name="a"), Micrograph(np.ones((4, 4)), name="a")])
    with pytest.raises(InputError, match=r"2-D \(one image\) or 3-D.*\(2, 2, 4, 4\)"):
        gather({"cube": np.ones((2, 2, 4, 4))})


def test_segment_takes_micrographs_without_changing_them(model_dir, tmp_path):  # noqa: F811
    image, _ = _disks(seed=1)
    given = Micrograph(np.tile(image, (2, 2)), name="disks")  # uncalibrated: segment estimates a scale for it
    result = emcopilot.segment(model_dir, [given], out=tmp_path / "s", progress=False)
    assert given.pixel_size_nm is None and "pixel_size_source" not in given.metadata
    assert result.images == ["disks"] and len(result.table) >= 1
    assert (result.table["pixel_size_source"] == "estimated").all()
    assert result.run_info["inputs"][0]["kind"] == "Micrograph"
    pd.testing.assert_frame_equal(emcopilot.load_run(tmp_path / "s").table, result.table)


def test_a_calibration_mapping_wins_over_pixel_size_nm(model_dir, tmp_path):  # noqa: F811
    image, _ = _disks(seed=2)
    result = emcopilot.segment(model_dir, {"a": image, "b": image + 1}, out=tmp_path / "s", pixel_size_nm=0.1,
                               calibration={"b": 0.2}, progress=False)
    sizes = result.table.groupby("image")["pixel_size_nm"].first().to_dict()
    assert sizes == {"a": 0.1, "b": 0.2}
    with pytest.raises(InputError, match="pixel_size_nm must be"):
        emcopilot.segment(model_dir, {"a": image}, pixel_size_nm=-1)


def test_a_hyperspy_signal_is_measured_at_its_axes_scale_and_comes_back_as_signals(model_dir, tmp_path):  # noqa: F811
    hs = pytest.importorskip("hyperspy.api")
    image, _ = _disks(seed=3)
    signal = hs.signals.Signal2D(np.stack([image, image[::-1]]))
    signal.metadata.General.title = "HAADF series"
    for axis in signal.axes_manager.signal_axes:
        axis.scale, axis.units = 1.5, "Å"  # 0.15 nm
    result = emcopilot.segment(model_dir, signal, out=tmp_path / "s", progress=False)
    assert result.images == ["HAADF series#0", "HAADF series#1"]
    assert np.allclose(result.table["pixel_size_nm"], 0.15)
    assert (result.table["pixel_size_source"] == "file").all()
    rows = result.table.iloc[0]
    assert rows["eq_diameter_nm"] == pytest.approx(rows["eq_diameter_px"] * 0.15)
    assert result.run_info["inputs"][0]["kind"] == "hyperspy signal" and result.run_info["inputs"][0]["frames"] == 2
    labels = emcopilot.load_run(tmp_path / "s").to_signal()
    first = labels["HAADF series#0"]
    assert first.data.shape == image.shape and first.axes_manager.signal_axes[0].scale == pytest.approx(0.15)
    assert first.axes_manager.signal_axes[0].units == "nm"
    assert int(first.data.max()) == int(result.table[result.table["image"] == "HAADF series#0"]["id"].max())


def test_a_lazy_signal_and_a_non_image_signal(tmp_path):
    hs = pytest.importorskip("hyperspy.api")
    lazy = hs.signals.Signal2D(np.ones((2, 8, 8))).as_lazy()
    assert len(gather(lazy)[0].micrographs) == 2
    with pytest.raises(InputError, match="Signal2D"):
        gather(hs.signals.Signal1D(np.ones((4, 16))))


def test_plot_draws_the_size_distribution(experiment, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    recipe, paths = experiment
    result = emcopilot.extract(recipe, paths, out=tmp_path / "x", progress=False)
    axis = result.plot()
    assert axis.get_xlabel().startswith("equivalent diameter") or axis.texts


def test_load_run_refuses_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(InputError, match="no run.json"):
        emcopilot.load_run(tmp_path)


def test_a_frame_too_small_for_the_working_scale_is_an_error_naming_recipes_that_fit(experiment, tmp_path):
    recipe, paths = experiment
    working = load_recipe(recipe).sample.working_pixel_size_nm
    # 200 px at a fifth of the working pixel size: 40 working pixels across, too few to learn from
    tiny = Micrograph(np.random.default_rng(0).random((200, 200)).astype(np.float32), pixel_size_nm=working / 5,
                      name="fine.tif")
    result = emcopilot.run(recipe, [*paths, tiny], out=tmp_path / "out", progress=False)
    assert set(result.table["image"]) <= {"demo_00.tif", "demo_01.tif"}
    assert result.images == ["demo_00.tif", "demo_01.tif"]
    [(name, message)] = result.errors
    assert name == "fine.tif" and "is 40 px across" in message and "needs at least 64" in message
    assert "recipes whose working scale fits it" in message
