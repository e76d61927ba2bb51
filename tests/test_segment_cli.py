"""``emcopilot segment``: rebuild a saved model, write the particle table and masks, evaluate them."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emcopilot import Instances  # noqa: E402
from emcopilot.cli import main  # noqa: E402
from emcopilot.core.interfaces import TrainBudget  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402


def _disks(size=64, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for index, (row, col) in enumerate([(16, 16), (16, 46), (46, 30)], 1):
        labels[(rows - row) ** 2 + (cols - col) ** 2 <= 36] = index
    return (100 + 60 * (labels > 0) + rng.normal(0, 5, labels.shape)).astype(np.float32), labels


@pytest.fixture
def model_dir(tmp_path):
    torch.set_num_threads(1)
    sample = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.1, "diameter_nm": [0.8, 1.5]})
    segmenter = get_registry().get("segmenter", "unet").create({"depth": 2, "width": 8}, sample)
    image, labels = _disks()
    segmenter.fit([image], [Instances(labels=labels)], None,
                  budget=TrainBudget(steps=60, batch_size=2, crop_px=64, seed=0, progress=False))
    segmenter.save(tmp_path / "model")
    return tmp_path / "model"


def test_segment_writes_outputs_that_evaluate_reads(model_dir, tmp_path, capsys):
    pytest.importorskip("emcopilot.analysis.measure")
    import imageio.v3 as iio
    import pandas as pd

    image, labels = _disks(seed=1)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    iio.imwrite(inputs / "a.png", np.clip(image, 0, 255).astype(np.uint8))
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["segment", "--model", str(model_dir), "--input", str(inputs), "--out", str(out),
                 "--pixel-size-nm", "0.1", "--no-progress"])
    assert code == 3  # one input failed, the other was segmented
    table = pd.read_csv(out / "particles.csv")
    assert {"image", "id", "x", "y", "bbox_x0", "area_px", "eq_diameter_px", "eq_diameter_nm"} <= set(table.columns)
    assert (out / "masks" / "a.png.tif").is_file() and (out / "particles.parquet").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["errors"][0]["input"].endswith("broken.png") and run["throughput"]["megapixels_per_s"] > 0
    truth = tmp_path / "truth"
    truth.mkdir()
    import tifffile
    tifffile.imwrite(truth / "a.tif", labels)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out / "particles.csv"), "--truth", str(truth), "--format", "masks"]) == 0
    assert "pooled (1 images)" in capsys.readouterr().out



def test_an_uncalibrated_image_gets_the_scale_run_would_estimate(model_dir, tmp_path):
    import imageio.v3 as iio
    import pandas as pd
    from emcopilot.io.readers import read_micrograph
    from emcopilot.specimen.morphology import estimate_pixel_size_nm

    image, _ = _disks(seed=1)
    iio.imwrite(tmp_path / "a.png", np.clip(np.tile(image, (2, 2)), 0, 255).astype(np.uint8))  # 12 disks
    iio.imwrite(tmp_path / "b.png", np.clip(image, 0, 255).astype(np.uint8))  # 3: too few to trust the scale
    sample = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.1, "diameter_nm": [0.8, 1.5]})
    expected = estimate_pixel_size_nm(read_micrograph(tmp_path / "a.png")[0], sample)  # run's rule
    out = tmp_path / "out"
    assert main(["segment", "--model", str(model_dir), "--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out / "particles.csv")
    a, b = table[table["image"] == "a.png"], table[table["image"] == "b.png"]
    assert len(a) and (a["pixel_size_source"] == "estimated").all()
    assert np.allclose(a["pixel_size_nm"], expected) and 0.06 < expected < 0.14  # 12 px disks of ~1.1 nm
    assert np.allclose(a["eq_diameter_nm"], a["eq_diameter_px"] * expected)
    assert len(b) and b["eq_diameter_nm"].isna().all() and b["eq_diameter_px"].notna().all()
    run = json.loads((out / "run.json").read_text())
    assert run["images"]["b.png"]["pixel_size_estimate"]["credible"] is False
    assert run["images"]["a.png"]["pixel_size_estimate"]["credible"] is True

def test_segment_refuses_pickled_or_foreign_models(model_dir, tmp_path, capsys):
    (model_dir / "model.safetensors").unlink()
    (model_dir / "config.json").unlink()
    torch.save({"w": torch.zeros(1)}, model_dir / "model.pt")
    code = main(["segment", "--model", str(model_dir), "--input", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 1 and "pickle files (model.pt) are refused" in capsys.readouterr().err
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["segment", "--model", str(model_dir), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "does not name a segmenter" in capsys.readouterr().err


BROKEN_CONFIGS = {
    "pixel-size-text": (lambda c: c.update(working_pixel_size_nm="abc"), "working_pixel_size_nm must be a positive"),
    "pixel-size-negative": (lambda c: c.update(working_pixel_size_nm=-1), "working_pixel_size_nm must be a positive"),
    "pixel-size-bool": (lambda c: c.update(working_pixel_size_nm=True), "working_pixel_size_nm must be a positive"),
    "architecture-number": (lambda c: c.update(architecture=5), "architecture must be a mapping"),
    "normalisation-list": (lambda c: c.update(normalisation=[1, 2]), "normalisation must be a mapping"),
    "sample-list": (lambda c: c.update(sample=[1]), "sample must be a mapping"),
    "sample-bad-value": (lambda c: c["sample"].update(working_pixel_size_nm="x"), "sample.working_pixel_size_nm"),
    "sample-unknown-key": (lambda c: c["sample"].update(metal="Pt"), "sample.metal"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_a_broken_model_config_is_one_line_naming_the_file(model_dir, tmp_path, capsys, case):
    edit, fragment = BROKEN_CONFIGS[case]
    config = json.loads((model_dir / "config.json").read_text())
    edit(config)
    (model_dir / "config.json").write_text(json.dumps(config))
    image, _ = _disks()
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "a.png", np.clip(image, 0, 255).astype(np.uint8))
    code = main(["segment", "--model", str(model_dir), "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and fragment in err and "config.json" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err



def test_a_model_saved_with_the_old_sample_key_still_loads(model_dir):
    from emcopilot.pipeline.models import load_model
    config = json.loads((model_dir / "config.json").read_text())
    config["sample"]["pixel_size_nm"] = config["sample"].pop("working_pixel_size_nm")
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.warns(DeprecationWarning, match="config.json: 'sample.pixel_size_nm' is deprecated"):
        segmenter = load_model(model_dir)
    assert segmenter.sample.working_pixel_size_nm == 0.1

def test_classical_segmenter_is_the_classical_extractor(tmp_path):
    registry = get_registry()
    if "classical" not in registry.components["prior_extractor"]:
        pytest.skip("the classical prior extractor is not installed")
    from emcopilot import Micrograph
    from emcopilot.pipeline.models import load_model

    sample = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.1, "diameter_nm": [0.8, 1.5]})
    segmenter = registry.get("segmenter", "classical").create({}, sample)
    image, labels = _disks(size=96)
    assert segmenter.fit([image], [Instances(labels=labels)], None, budget=TrainBudget(steps=1)) == {}
    micrograph = Micrograph(image, pixel_size_nm=0.1)
    expected = registry.get("prior_extractor", "classical").create({}, sample).extract(micrograph)
    found = segmenter.predict(micrograph)
    np.testing.assert_array_equal(found.labels, expected.labels)
    segmenter.save(tmp_path / "model")
    rebuilt = load_model(tmp_path / "model")
    np.testing.assert_array_equal(rebuilt.predict(micrograph).labels, expected.labels)


def test_param_overrides_reach_the_segmenter_and_are_recorded(model_dir, tmp_path, capsys):
    import imageio.v3 as iio
    from emcopilot.pipeline.batch import cached_model
    from emcopilot.cli.segment import parse_params

    assert parse_params(["test_time_flips=4", "normalise_percentiles=[1, 99]", "device=cpu"]) == {
        "test_time_flips": 4, "normalise_percentiles": [1, 99], "device": "cpu"}
    image, _ = _disks(seed=1)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    iio.imwrite(inputs / "a.png", np.clip(image, 0, 255).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["segment", "--model", str(model_dir), "--input", str(inputs), "--out", str(out),
                 "--pixel-size-nm", "0.1", "--no-progress", "--param", "test_time_flips=4"]) == 0
    assert json.loads((out / "run.json").read_text())["param_overrides"] == {"test_time_flips": 4}
    assert cached_model(str(model_dir), None, {"test_time_flips": 4}).params["test_time_flips"] == 4
    assert cached_model(str(model_dir), None).params["test_time_flips"] == 1  # the saved value, cached apart
    capsys.readouterr()
    for bad, message in (("flips=4", "flips"), ("test_time_flips", "expected NAME=VALUE"),
                         ("test_time_flips=[1", "not valid YAML")):
        assert main(["segment", "--model", str(model_dir), "--input", str(inputs), "--out", str(tmp_path / "x"),
                     "--param", bad]) == 1
        assert message in capsys.readouterr().err


def test_inputs_that_share_a_name_keep_their_own_rows_and_masks(model_dir, tmp_path, capsys):
    """``A/x.png`` + ``B/x.png`` and ``a b.png`` + ``a_b.png``: every image measured once, none overwritten."""
    import imageio.v3 as iio
    import pandas as pd
    import tifffile

    paths = [tmp_path / "A" / "x.png", tmp_path / "B" / "x.png", tmp_path / "A" / "a b.png",
             tmp_path / "A" / "a_b.png"]
    counts = {}
    for seed, path in enumerate(paths):
        path.parent.mkdir(exist_ok=True)
        image, labels = _disks(seed=seed)
        keep = seed % 3 + 1  # a different number of disks in each image
        image = np.where((labels > 0) & (labels > keep), 100.0, image)
        iio.imwrite(path, np.clip(image, 0, 255).astype(np.uint8))
        counts[path] = keep
    out = tmp_path / "out"
    assert main(["segment", "--model", str(model_dir), "--input", *map(str, paths), "--out", str(out),
                 "--pixel-size-nm", "0.1", "--no-progress"]) == 0
    table = pd.read_csv(out / "particles.csv")
    assert sorted(table["image"].unique()) == ["A/x.png", "B/x.png", "a b.png", "a_b.png"]
    run = json.loads((out / "run.json").read_text())
    assert sorted(run["images"]) == ["A/x.png", "B/x.png", "a b.png", "a_b.png"]
    assert len(list((out / "masks").iterdir())) == 4
    for name in ("A/x.png", "B/x.png", "a b.png", "a_b.png"):
        from emcopilot.analysis.measure import mask_file_name
        mask = tifffile.imread(out / "masks" / mask_file_name(name))
        assert len(np.unique(mask[mask > 0])) == (table["image"] == name).sum()


def test_segment_again_into_the_same_out_keeps_only_this_runs_outputs_and_is_locked(model_dir, tmp_path, capsys):
    import imageio.v3 as iio
    import pandas as pd

    from emcopilot.pipeline.rundir import RunDirectory

    image, _ = _disks(seed=2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        iio.imwrite(tmp_path / name / f"{name}.png", np.clip(image, 0, 255).astype(np.uint8))
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["--model", str(model_dir), "--out", str(out), "--pixel-size-nm", "0.1", "--no-progress"]
    assert main(["segment", "--input", str(tmp_path / "a"), *args]) == 3
    assert main(["segment", "--input", str(tmp_path / "b"), *args]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["b.png.tif"]
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["b.png.parquet"]
    assert set(pd.read_csv(out / "particles.csv")["image"]) == {"b.png"}
    assert len(pd.read_csv(out / "errors.csv")) == 0  # the earlier run's failure is not this one's
    capsys.readouterr()
    with RunDirectory(out):  # another command holds --out
        assert main(["segment", "--input", str(tmp_path / "a"), *args]) == 1
    assert "is in use by" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["b.png.tif"]
    (out / "stages").mkdir()
    assert main(["segment", "--input", str(tmp_path / "a"), *args]) == 1
    assert "holds an emcopilot run" in capsys.readouterr().err
