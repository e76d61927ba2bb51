"""Batch segmentation: corrupt files fail alone; serial and Dask runs give the same table."""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from emcopilot.cli import main  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    import imageio.v3 as iio
    root = tmp_path_factory.mktemp("batch")
    torch.set_num_threads(1)
    sample = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.1, "diameter_nm": [0.8, 1.5]})
    segmenter = get_registry().get("segmenter", "classical").create({}, sample)
    segmenter.save(root / "model")
    rng = np.random.default_rng(0)
    inputs = root / "inputs"
    inputs.mkdir()
    rows, cols = np.mgrid[:64, :64]
    for index in range(10):
        image = 40 + rng.normal(0, 4, (64, 64))
        for row, col in rng.uniform(10, 54, (3, 2)):
            image[(rows - row) ** 2 + (cols - col) ** 2 <= 25] += 120
        iio.imwrite(inputs / f"img{index:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
    (inputs / "zero.png").write_bytes(b"")
    (inputs / "trunc.png").write_bytes((inputs / "img00.png").read_bytes()[:60])
    return root


def run_segment(batch, out, *extra):
    return main(["segment", "--model", str(batch / "model"), "--input", str(batch / "inputs"), "--out", str(out),
                 "--pixel-size-nm", "0.1", "--no-progress", *extra])


def test_corrupt_files_are_listed_and_the_rest_measured(batch, tmp_path):
    code = run_segment(batch, tmp_path / "serial")
    assert code == 3  # some inputs failed
    with open(tmp_path / "serial" / "errors.csv") as handle:
        failed = sorted(row["path"].split("/")[-1] for row in csv.DictReader(handle))
    assert failed == ["trunc.png", "zero.png"]
    table = pd.read_csv(tmp_path / "serial" / "particles.csv")
    assert sorted(table["image"].unique()) == [f"img{i:02d}.png" for i in range(10)]
    assert len(list((tmp_path / "serial" / "masks").iterdir())) == 10


def test_local_dask_cluster_matches_serial(batch, tmp_path):
    assert run_segment(batch, tmp_path / "serial") == 3
    assert run_segment(batch, tmp_path / "dask", "--workers", "2") == 3
    serial = pd.read_csv(tmp_path / "serial" / "particles.csv")
    parallel = pd.read_csv(tmp_path / "dask" / "particles.csv")
    pd.testing.assert_frame_equal(serial, parallel)


def test_existing_cluster_reads_lazy_files_on_the_workers(batch, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    from emcopilot.pipeline.demo import write_calibrated_tiff

    inputs = tmp_path / "tiffs"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for index in range(3):  # rosettasciio reads TIFFs lazily: the pixels are computed on the worker
        write_calibrated_tiff(inputs / f"t{index}.tif", (40 + rng.normal(0, 4, (64, 64))).astype(np.float32), 0.1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        code = main(["segment", "--model", str(batch / "model"), "--input", str(inputs), "--out",
                     str(tmp_path / "out"), "--no-progress", "--scheduler", cluster.scheduler_address])
        logs = "\n".join(message for worker in client.get_worker_logs().values() for _, message in worker)
    assert code == 0
    assert "Failed to serialize" not in logs  # a lazy read must not try to ship its open file to the cluster
