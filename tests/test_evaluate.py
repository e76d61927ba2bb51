"""``emcopilot evaluate``: truth readers, file pairing, per-image and pooled scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emcopilot.cli import main
from emcopilot.core.errors import InputError
from emcopilot.analysis.evaluate import (EvaluationSettings, evaluate_run, pair_truth_files, read_points_truth,
                                read_yolo_truth)


def _points_table(image: str, points_row_col: np.ndarray) -> pd.DataFrame:
    rows, cols = points_row_col[:, 0], points_row_col[:, 1]
    return pd.DataFrame({"image": image, "id": np.arange(1, len(rows) + 1), "x": cols, "y": rows,
                         "bbox_x0": cols - 2, "bbox_y0": rows - 2, "bbox_x1": cols + 2, "bbox_y1": rows + 2,
                         "area_px": 16.0, "eq_diameter_px": np.sqrt(4 * 16 / np.pi)})


def _write_points_truth(folder: Path, stem: str, points_row_col: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_Results.csv"
    pd.DataFrame({"X": points_row_col[:, 1], "Y": points_row_col[:, 0]}).to_csv(path)  # ImageJ style: ,X,Y
    return path


@pytest.fixture
def atom_run(tmp_path):
    rng = np.random.default_rng(1)
    truth = {"021": rng.uniform(10, 500, (30, 2)), "025": rng.uniform(10, 500, (20, 2))}
    tables = [_points_table(f"{stem}_HAADF_15nm_Sample.tif", points) for stem, points in truth.items()]
    run = tmp_path / "run"
    run.mkdir()
    pd.concat(tables).to_csv(run / "particles.csv", index=False)
    for stem, points in truth.items():
        _write_points_truth(tmp_path / "labels", stem, points)
    return run, tmp_path / "labels", truth


def test_points_truth_against_itself_and_shifted(atom_run, tmp_path):
    run, labels, truth = atom_run
    report = evaluate_run(run / "particles.csv", [labels], EvaluationSettings("points", radius_px=3.0))
    assert report["pooled"]["f1"] == 1.0 and report["pooled"]["images"] == 2
    assert [row["n_true"] for row in report["images"]] == [30, 20]
    shifted = tmp_path / "shifted"
    for stem, points in truth.items():
        _write_points_truth(shifted, stem, points + [0.0, 8.0])
    report = evaluate_run(run, [shifted], EvaluationSettings("points", radius_px=3.0))
    assert report["pooled"]["f1"] < 0.05


def test_unmatched_truth_files_are_warned_and_counted(atom_run, caplog):
    run, labels, _ = atom_run
    _write_points_truth(labels, "999", np.array([[1.0, 1.0]]))
    report = evaluate_run(run, [labels], EvaluationSettings("points", radius_px=3.0))
    assert [Path(p).name for p in report["unmatched_truth_files"]] == ["999_Results.csv"]
    assert "999_Results.csv matches no predicted image" in caplog.text
    assert report["pooled"]["f1"] == 1.0


def test_pairing_prefers_exact_stems_and_needs_a_unique_token():
    paired, unmatched = pair_truth_files(
        ["PtCo.jpg", "PtCo1.jpg", "Cu_silica1.jpg", "Cu_silica2.jpg", "021_HAADF_a.tif"],
        [Path("PtCo.txt"), Path("Cu_silica1.txt"), Path("Cu.txt"), Path("021_Results.csv"), Path("PtCo3.txt")])
    assert paired == {"PtCo.jpg": Path("PtCo.txt"), "Cu_silica1.jpg": Path("Cu_silica1.txt"),
                      "021_HAADF_a.tif": Path("021_Results.csv")}
    assert unmatched == [Path("Cu.txt"), Path("PtCo3.txt")]  # 'Cu' is ambiguous, PtCo3 absent


def test_yolo_truth_needs_the_image_size(tmp_path):
    import imageio.v3 as iio

    images, labels, run = tmp_path / "images", tmp_path / "labels", tmp_path / "run"
    for folder in (images, labels, run):
        folder.mkdir()
    iio.imwrite(images / "Pt2.png", np.zeros((100, 200), np.uint8))
    (labels / "Pt2.txt").write_text("0 0.25 0.5 0.05 0.1\n0 0.75 0.2 0.1 0.2\n")
    boxes = read_yolo_truth(labels / "Pt2.txt", (100, 200))
    np.testing.assert_allclose(boxes, [[45, 45, 55, 55], [140, 10, 160, 30]])
    table = pd.DataFrame({"image": "Pt2.png", "id": [1, 2], "x": [50.0, 150.0], "y": [50.0, 20.0],
                          "bbox_x0": [45, 141], "bbox_y0": [45, 10], "bbox_x1": [55, 161], "bbox_y1": [55, 30],
                          "area_px": [78.5, 314.0], "eq_diameter_px": [10.0, 20.0]})
    table.to_csv(run / "particles.csv", index=False)
    with pytest.raises(InputError, match="size of image 'Pt2.png' is needed"):
        evaluate_run(run, [labels], EvaluationSettings("yolo"))
    report = evaluate_run(run, [labels], EvaluationSettings("yolo", images_dir=images))
    assert report["pooled"]["f1"] == 1.0
    assert report["images"][0]["mean_diameter_rel_error"] == pytest.approx(0.0)


def test_masks_format_uses_the_runs_label_images(tmp_path):
    import tifffile

    truth = np.zeros((32, 32), np.int32)
    truth[2:8, 2:8], truth[20:28, 20:30] = 1, 2
    (tmp_path / "run" / "masks").mkdir(parents=True)
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "run" / "masks" / "a.tif.tif", truth)
    tifffile.imwrite(tmp_path / "truth" / "a.tif", (truth > 0).astype(np.uint8))  # binary truth
    pd.DataFrame({"image": ["a.tif"] * 2, "id": [1, 2], "x": [5.0, 25.0], "y": [5.0, 24.0],
                  "eq_diameter_px": [6.8, 10.1]}).to_csv(tmp_path / "run" / "particles.csv", index=False)
    report = evaluate_run(tmp_path / "run", [tmp_path / "truth"], EvaluationSettings("masks"))
    assert report["pooled"]["f1"] == 1.0 and report["images"][0]["n_true"] == 2


def test_near_misses_say_which_errors_are_outlines_and_which_are_missing_objects():
    from emcopilot.analysis.matching import Objects, match, near_misses

    truth = Objects("boxes", boxes=np.array([
        [0, 0, 10, 10],      # found exactly
        [20, 0, 30, 10],     # found shifted: IoU 0.33
        [40, 0, 50, 10], [50, 0, 60, 10],  # two touching, found as one box (a merge)
        [70, 0, 94, 20],     # one large, found as three thirds (a split)
        [100, 0, 110, 10],   # missed: nothing near
    ], float))
    prediction = Objects("boxes", boxes=np.array([
        [0, 0, 10, 10], [25, 0, 35, 10], [40, 0, 61, 10], [70, 0, 78, 20], [78, 0, 86, 20], [86, 0, 94, 20],
        [200, 0, 210, 10],   # a false positive with nothing near
    ], float))
    matching = match(prediction, truth)
    assert (matching.tp, matching.fp, matching.fn) == (1, 6, 5)
    nearly = near_misses(prediction, truth, matching)
    assert {k: nearly[k] for k in ("predictions", "truths", "merges", "splits")} == \
        {"predictions": 5, "truths": 4, "merges": 1, "splits": 3}
    assert nearly["f1_if_placed"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 1))
    points = Objects("points", points=np.zeros((1, 2)))
    assert near_misses(points, points, match(points, points, radius_px=1)) is None


def test_points_reader_names_missing_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"needs columns X \(column\) and Y \(row\)"):
        read_points_truth(bad)


def test_cli_prints_table_and_writes_json(atom_run, capsys, tmp_path):
    run, labels, _ = atom_run
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--pred", str(run / "particles.csv"), "--truth", str(labels), "--format", "points",
                 "--radius-px", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pooled (2 images)" in printed and "021_HAADF_15nm_Sample.tif" in printed
    report = json.loads(out.read_text())
    assert report["pooled"]["f1"] == 1.0 and report["settings"]["radius_px"] == 2.0
    assert main(["evaluate", "--pred", str(run), "--truth", str(labels), "--format", "points",
                 "--radius-nm", "0.1"]) == 1  # no pixel size anywhere
    assert "needs the pixel size" in capsys.readouterr().err


@pytest.mark.shared_data
def test_acstem_truth_against_itself_and_shifted(shared_data, tmp_path):
    labels = shared_data / "acstem-dev" / "labels"
    images = sorted((shared_data / "acstem-dev" / "images").glob("*.tif"))
    tables, shifted = [], tmp_path / "shifted"
    for image in images:
        truth_file = labels / f"{image.name.split('_')[0]}_Results.csv"
        points = read_points_truth(truth_file)
        tables.append(_points_table(image.name, points))
        _write_points_truth(shifted, image.name.split("_")[0], points + [0.0, 10.0])
    run = tmp_path / "run"
    run.mkdir()
    table = pd.concat(tables)
    table["x_nm"], table["y_nm"] = table["x"] * 0.029297, table["y"] * 0.029297
    table.to_csv(run / "particles.csv", index=False)
    settings = EvaluationSettings("points", radius_nm=0.15)
    report = evaluate_run(run, [labels], settings)
    assert report["pooled"]["images"] == len(images) == 11 and report["pooled"]["f1"] == 1.0
    assert not report["unmatched_truth_files"]
    assert evaluate_run(run, [shifted], settings)["pooled"]["f1"] < 0.1
