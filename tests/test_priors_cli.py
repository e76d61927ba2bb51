"""``emcopilot extract`` end to end, and the extractors on the development data (skipped without it)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from emcopilot.cli import main

RECIPE = """\
name: extract-test
sample: {kind: particles, modality: haadf-stem, diameter_nm: [1.5, 6.0], working_pixel_size_nm: 0.2}
prior_extractor: {plugin: classical}
generator: {plugin: physical}
physics_adapter: {plugin: haadf-stem}
segmenter: {plugin: classical}
"""


def write_disks(path, seed):
    import imageio.v3 as iio
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:128, :128]
    image = 60 + rng.normal(0, 4, (128, 128))
    for row, col in [(30, 30), (30, 95), (95, 40), (90, 100)]:
        image += 120 * (((rows - row) ** 2 + (cols - col) ** 2) <= 36)
    iio.imwrite(path, np.clip(image, 0, 255).astype(np.uint8))


def test_extract_writes_table_masks_prior_and_errors(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_disks(inputs / "a.png", 0)
    write_disks(inputs / "b.png", 1)
    (inputs / "broken.png").write_bytes(b"not an image")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    code = main(["extract", str(recipe), "--input", str(inputs), "--out", str(out), "--pixel-size-nm", "0.2",
                 "--no-progress"])
    assert code == 3  # one input failed; the others were processed
    table = pd.read_csv(out / "particles.csv")
    assert sorted(table["image"].unique()) == ["a.png", "b.png"] and len(table) == 8
    assert table["eq_diameter_nm"].between(2.0, 3.1).all()
    assert (out / "masks" / "a.png.tif").is_file() and (out / "particles.parquet").is_file()
    prior = json.loads((out / "prior.json").read_text())
    assert prior["count"] == 8 and prior["diameter_nm_median"] == pytest.approx(2.4, rel=0.3)
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["path", "error"]  # as segment and run write it
    assert errors["path"].str.endswith("broken.png").all()
    run = json.loads((out / "run.json").read_text())
    assert run["images"]["a.png"]["pixel_size_source"] == "--pixel-size-nm"
    assert run["plugins"]["prior_extractor"]["name"] == "classical"


def test_extract_outputs_are_safe_in_a_spreadsheet_and_readable_by_the_group(tmp_path):
    import os
    import stat

    inputs = tmp_path / "in"
    inputs.mkdir()
    write_disks(inputs / "=HYPERLINK(x).png", 3)
    (inputs / "@broken.png").write_bytes(b"not an image")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        assert main(["extract", str(recipe), "--input", str(inputs), "--out", str(out), "--pixel-size-nm", "0.2",
                     "--no-progress"]) == 3
    finally:
        os.umask(previous)
    # a spreadsheet shows the names as text instead of running them; the Parquet table keeps them exactly
    assert set(pd.read_csv(out / "particles.csv")["image"]) == {"'=HYPERLINK(x).png"}
    assert set(pd.read_parquet(out / "particles.parquet")["image"]) == {"=HYPERLINK(x).png"}
    for written in [out / "particles.csv", out / "run.json", out / "errors.csv", *(out / "masks").iterdir()]:
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written


def test_extract_estimates_missing_calibration(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_disks(inputs / "a.png", 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["extract", str(recipe), "--input", str(inputs), "--out", str(out), "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    image = run["images"]["a.png"]
    assert image["pixel_size_source"] == "estimated" and 0.05 < image["pixel_size_nm"] < 1.0
    # four disks are too few to trust the estimate: extract, as run and segment, keeps their sizes in pixels
    assert image["pixel_size_estimate"]["objects"] == 4 and image["pixel_size_credible"] is False
    assert "eq_diameter_px" in pd.read_csv(out / "particles.csv") and "eq_diameter_nm" not in pd.read_csv(
        out / "particles.csv")
    assert (out / "errors.csv").read_text().strip() == "path,error"  # written by every command, here empty


# --------------------------------------------------------------------------- development data

def _f1(predicted, truth, radius):
    from emcopilot.analysis.evaluate import Objects, match
    matching = match(Objects("points", points=predicted), Objects("points", points=truth), radius_px=radius)
    precision = matching.tp / max(1, len(predicted))
    recall = matching.tp / max(1, len(truth))
    return 2 * precision * recall / max(1e-9, precision + recall)


@pytest.mark.shared_data
def test_atoms_on_acstem_dev_beat_the_reference(shared_data):
    from emcopilot.analysis.evaluate import read_points_truth
    from emcopilot.io.readers import read_micrograph
    from emcopilot.core.plugins import get_registry
    from emcopilot.core.recipe import load_recipe

    recipe = load_recipe("single-atom-catalyst-haadf")
    extractor = get_registry().get("prior_extractor", "atoms").create({}, recipe.sample)
    scores = []
    for stem in ("025", "051"):
        image = next((shared_data / "acstem-dev" / "images").glob(f"{stem}_*.tif"))
        micrograph = read_micrograph(image)[0]
        points = extractor.extract(micrograph).points
        truth = read_points_truth(shared_data / "acstem-dev" / "labels" / f"{stem}_Results.csv")
        scores.append(_f1(points, truth, 0.1 / micrograph.pixel_size_nm))
    assert np.mean(scores) > 0.47


@pytest.mark.shared_data
def test_scale_estimate_on_ardagen_dev_within_1_5x(shared_data):
    from emcopilot.analysis.evaluate import read_yolo_truth
    from emcopilot.io.readers import read_micrograph
    from emcopilot.specimen.morphology import dominant_diameter_px

    for name, bright in (("Pt2", True), ("PtW6", True), ("PtC1", False)):
        micrograph = read_micrograph(shared_data / "ardagen-dev" / "images" / f"{name}.jpg")[0]
        boxes = read_yolo_truth(shared_data / "ardagen-dev" / "labels" / f"{name}.txt", micrograph.shape)
        human = np.median(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        assert 1 / 1.5 < dominant_diameter_px(micrograph.data, bright=bright) / human < 1.5, name


def test_extract_again_into_the_same_out_keeps_only_this_runs_outputs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_disks(tmp_path / name / f"{name}.png", 4)
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    args = ["--out", str(out), "--pixel-size-nm", "0.2", "--no-progress"]
    assert main(["extract", str(recipe), *args, "--input", str(tmp_path / "a")]) == 3
    assert main(["extract", str(recipe), *args, "--input", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["b.png.tif"]
    assert len(pd.read_csv(out / "errors.csv")) == 0  # the first extract's failure is not this one's
    assert set(pd.read_csv(out / "particles.csv")["image"]) == {"b.png"}
