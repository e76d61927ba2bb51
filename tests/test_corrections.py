"""Hand-corrected priors (``--priors-from``): a person's label images replace the extractor's, and the run says so."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

import emcopilot  # noqa: E402
from emcopilot import InputError, Micrograph  # noqa: E402
from emcopilot.cli import main  # noqa: E402
from emcopilot.pipeline.corrections import correction_files, read_correction  # noqa: E402
from emcopilot.pipeline.demo import make_experiment  # noqa: E402
from emcopilot.core.recipe import load_recipe  # noqa: E402
from emcopilot.pipeline.stages import _load_instances  # noqa: E402

from test_loop import tiny_recipe  # noqa: E402


def _corrected(truth: np.ndarray, remove: int, add: list[tuple[int, int]]) -> np.ndarray:
    """``truth`` with its first ``remove`` objects deleted and a disk of radius 3 painted at each of ``add``."""
    labels = truth.copy()
    for value in np.unique(labels[labels > 0])[:remove]:
        labels[labels == value] = 0
    rows, cols = np.mgrid[: labels.shape[0], : labels.shape[1]]
    for index, (row, col) in enumerate(add):
        labels[(rows - row) ** 2 + (cols - col) ** 2 <= 9] = labels.max() + 1 + index
    return labels


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrections")
    recipe = tiny_recipe(folder)
    made = make_experiment(load_recipe(recipe), folder, count=2, side_px=192)
    return recipe, folder, made


def test_corrected_priors_replace_the_extractors_and_the_run_says_it_is_not_label_free(experiment, tmp_path):
    recipe, folder, made = experiment
    paths = [path for path, _ in made]
    first = emcopilot.run(recipe, paths, out=tmp_path / "round1", progress=False)
    truth = made[0][1].labels
    assert len(np.unique(truth[truth > 0])) > 3
    empty = truth == 0
    spots = [tuple(p) for p in np.argwhere(empty)[:: max(1, empty.sum() // 7)][1:3]]
    corrected = _corrected(truth, remove=3, add=spots)
    corrections = tmp_path / "round1" / "corrections"
    corrections.mkdir()
    tifffile.imwrite(corrections / "demo_00.tif.tif", corrected.astype(np.uint16))  # named as masks/
    assert main(["run", str(recipe), "--input", *map(str, paths), "--out", str(tmp_path / "round2"),
                 "--priors-from", str(corrections), "--no-progress"]) == 0
    priors = _load_instances(tmp_path / "round2" / "stages" / "extract@1" / "00000.npz")
    expected = len(np.unique(truth[truth > 0])) - 3 + 2
    assert priors.count == expected and np.array_equal(priors.labels > 0, corrected > 0)
    assert np.all(priors.scores == 1)
    untouched = _load_instances(tmp_path / "round2" / "stages" / "extract@1" / "00001.npz")
    extracted = _load_instances(tmp_path / "round1" / "stages" / "extract@1" / "00001.npz")
    assert np.array_equal(untouched.labels, extracted.labels)  # the other micrograph keeps the extractor's
    info = json.loads((tmp_path / "round2" / "run.json").read_text())
    assert info["priors"]["label_free"] is False and info["priors"]["source"] == "corrections and prior extractor"
    assert list(info["priors"]["corrected"]) == ["demo_00.tif"] and info["priors"]["extracted"] == ["demo_01.tif"]
    assert first.run_info["priors"] == {"source": "prior extractor", "label_free": True}
    assert "Not label-free" in (tmp_path / "round2" / "report.html").read_text()


def test_a_correction_that_does_not_fit_its_micrograph_is_refused(tmp_path):
    micrograph = Micrograph(np.zeros((32, 40)), name="a.tif")
    tifffile.imwrite(tmp_path / "a.tif.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(InputError, match=r"a 32x32 label image for a.tif, which is 32x40 pixels"):
        read_correction(tmp_path / "a.tif.tif", micrograph)
    tifffile.imwrite(tmp_path / "wrong-name.tif", np.zeros((32, 40), np.uint16))
    (tmp_path / "a.tif.tif").unlink()
    with pytest.raises(InputError, match="named as the run's masks/, e.g. a.tif.tif"):
        correction_files(tmp_path, [micrograph])
    with pytest.raises(InputError, match="not a folder"):
        correction_files(tmp_path / "missing", [micrograph])


def test_two_blobs_painted_with_one_value_are_two_objects_and_atoms_get_centroids(tmp_path):
    labels = np.zeros((20, 20), np.uint16)
    labels[2:5, 2:5] = 7
    labels[12:15, 12:15] = 7
    tifffile.imwrite(tmp_path / "x.tif", labels)
    instances = read_correction(tmp_path / "x.tif", Micrograph(np.zeros((20, 20)), name="x"), kind="atoms")
    assert instances.labels.max() == 2 and np.allclose(instances.points, [[3, 3], [13, 13]])
