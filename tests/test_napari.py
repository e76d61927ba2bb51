"""The napari plugin, headless: open a run folder, segment with the widget, correct labels, go round again."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
napari = pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")


def _qt_problem() -> str | None:
    """Why Qt cannot start here (missing system libraries), tried in a child process so that a crash stays there."""
    probe = subprocess.run([sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
                           capture_output=True, text=True, timeout=120, env={**os.environ})
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]


_PROBLEM = _qt_problem()
if _PROBLEM:
    pytest.skip(f"Qt cannot start on this machine ({os.environ.get('QT_QPA_PLATFORM')}): {_PROBLEM}",
                allow_module_level=True)

import emcopilot  # noqa: E402
from emcopilot.pipeline.demo import make_experiment  # noqa: E402
from emcopilot.napari._reader import get_reader  # noqa: E402
from emcopilot.napari._widget import CorrectionsWidget, MeasureWidget  # noqa: E402
from emcopilot.core.recipe import load_recipe  # noqa: E402
from emcopilot.pipeline.stages import _load_instances  # noqa: E402

from test_loop import tiny_recipe  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("napari")
    recipe = tiny_recipe(folder)
    made = make_experiment(load_recipe(recipe), folder, count=2, side_px=160)
    out = folder / "run"
    emcopilot.run(recipe, [path for path, _ in made], out=out, progress=False)
    return out, made


def _wait(qtbot, widget, seconds=180):
    qtbot.waitUntil(lambda: not widget.busy, timeout=seconds * 1000)
    assert widget.last_error is None, widget.last_error


def test_a_run_folder_opens_at_its_scale_with_the_table_as_features(make_napari_viewer, finished_run):
    out, made = finished_run
    assert get_reader(str(out)) is not None and get_reader(str(out / "masks")) is None
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="emcopilot")
    names = [layer.name for layer in viewer.layers]
    assert names == ["demo_00.tif", "demo_00.tif labels", "demo_01.tif", "demo_01.tif labels"]
    size = json.loads((out / "run.json").read_text())["images"]["demo_00.tif"]["pixel_size_nm"]
    image, labels = viewer.layers["demo_00.tif"], viewer.layers["demo_00.tif labels"]
    assert np.allclose(image.scale, size) and np.allclose(labels.scale, size) and str(image.units[0]) == "nanometer"
    table = emcopilot.load_run(out).table
    rows = table[table["image"] == "demo_00.tif"]
    assert len(labels.features) == len(rows) and set(labels.features["index"]) == set(np.unique(labels.data)) - {0}
    assert labels.metadata["emcopilot"] == {"out": str(out), "image": "demo_00.tif", "role": "labels"}


def test_the_measure_widget_segments_an_image_in_a_worker(make_napari_viewer, qtbot, finished_run, tmp_path):
    out, made = finished_run
    viewer = make_napari_viewer()
    import tifffile
    viewer.add_image(tifffile.imread(made[1][0]), name="fresh", scale=(0.2, 0.2), units=("nm", "nm"))
    widget = MeasureWidget(viewer)
    widget.model.value = out / "model"
    widget.out.value = tmp_path / "seg"
    widget.image.value = viewer.layers["fresh"]
    widget.segment_button.clicked.emit()
    _wait(qtbot, widget)
    assert "fresh labels" in [layer.name for layer in viewer.layers]
    info = json.loads((tmp_path / "seg" / "run.json").read_text())
    assert info["images"]["fresh"]["pixel_size_nm"] == pytest.approx(0.2)
    assert info["images"]["fresh"]["pixel_size_source"] == "file"


def test_corrections_saved_from_napari_are_the_priors_of_the_next_round(make_napari_viewer, qtbot, finished_run):
    out, made = finished_run
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="emcopilot")
    layer = viewer.layers["demo_00.tif labels"]
    truth = made[0][1].labels.astype(np.int32)
    ids = np.unique(truth[truth > 0])
    assert len(ids) > 3
    edited = truth.copy()  # the person's labels: three false particles deleted, two missed ones painted
    for value in ids[:3]:
        edited[edited == value] = 0
    rows, cols = np.mgrid[: truth.shape[0], : truth.shape[1]]
    free = np.argwhere(np.pad(truth == 0, 0))
    free = free[(free[:, 0] > 8) & (free[:, 0] < truth.shape[0] - 8) & (free[:, 1] > 8) & (free[:, 1] < truth.shape[1] - 8)]
    painted = 0
    for row, col in free[:: max(1, len(free) // 50)]:
        disk = (rows - row) ** 2 + (cols - col) ** 2 <= 9
        if painted < 2 and not (truth[disk] > 0).any() and not (edited[disk] > ids.max()).any():
            edited[disk] = ids.max() + 1 + painted
            painted += 1
    assert painted == 2
    layer.data = edited
    widget = CorrectionsWidget(viewer)
    assert widget.run_folder.value == str(out)
    widget.round_button.clicked.emit()
    _wait(qtbot, widget)
    assert (out / "corrections" / "demo_00.tif.tif").is_file()
    corrected = out.parent / "run-corrected"
    priors = _load_instances(corrected / "stages" / "extract@1" / "00000.npz")
    assert priors.count == len(ids) - 3 + 2
    info = json.loads((corrected / "run.json").read_text())
    assert info["priors"]["label_free"] is False and list(info["priors"]["corrected"]) == ["demo_00.tif"]
    assert info["priors"]["extracted"] == ["demo_01.tif"]  # its layer was not edited
    assert [entry["kind"] for entry in info["inputs"]] == ["Micrograph", "Micrograph"]  # the open layers
