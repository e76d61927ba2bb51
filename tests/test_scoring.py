"""Label-free scores: mosaics that pool images, each metric where it applies, failures recorded."""
from __future__ import annotations

import numpy as np
import pytest

from emcopilot import Instances
from emcopilot.core.errors import InputError
from emcopilot.core.plugins import get_registry
from emcopilot.pipeline.scoring import MOSAIC_GAP_PX, headline, mosaic, score


def disks(centres, shape=(40, 40), radius=4):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, 1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2] = index
    return Instances(labels=labels)


def test_a_mosaic_keeps_every_object_apart_and_shifts_points():
    joined = mosaic([disks([(10, 10), (30, 30)]), disks([(20, 20)], shape=(30, 50))])
    assert joined.labels.shape == (40, 40 + MOSAIC_GAP_PX + 50)
    assert sorted(np.unique(joined.labels))[1:] == [1, 2, 3]
    points = mosaic([Instances(points=[[1.0, 2.0]], metadata={"pixel_size_nm": 0.03}),
                     Instances(points=[[3.0, 4.0]], labels=np.zeros((8, 8), np.int32),
                               metadata={"pixel_size_nm": 0.03})])
    assert points.metadata == {"pixel_size_nm": 0.03}
    assert points.points.tolist() == [[1.0, 2.0], [3.0, 4.0 + 3 + MOSAIC_GAP_PX]]  # 3 = the first's extent


def test_each_metric_scores_what_it_compares_and_a_failure_is_recorded():
    registry = get_registry()
    make = lambda name, **params: (name, registry.get("metric", name).compares,  # noqa: E731
                                   registry.get("metric", name).create(params))
    assert [make(n)[1] for n in ("detection", "size-distribution", "ssim", "realism-gap")] == [
        "instances", "instances", "image pairs", "image sets"]
    truth = [disks([(10, 10), (30, 30)]), disks([(12, 25)])]
    prediction = [disks([(10, 10)]), disks([(12, 25)])]

    def broken(prediction, truth):
        raise InputError("cannot")

    rng = np.random.default_rng(0)
    images = [rng.normal(size=(64, 64)) for _ in range(3)]
    scores = score([make("detection"), make("size-distribution"), make("ssim"), make("realism-gap"),
                    ("broken", "instances", broken)],
                   held_out=list(zip(prediction, truth)), real=list(zip(truth, truth)),
                   synthetic_images=images, real_images=images)
    held = scores["held_out_synthetic"]
    assert held["images"] == 2 and held["detection"]["recall"] == pytest.approx(2 / 3)
    assert held["detection"]["precision"] == 1.0 and held["broken"] == {"error": "cannot"}
    assert scores["real_vs_priors"]["detection"]["f1"] == 1.0
    assert scores["realism"]["realism-gap"]["realism_gap"] == pytest.approx(0.0, abs=1e-9)
    assert "ssim" in scores["skipped"]
    atoms = score([make("detection", radius_px=2.0)],
                  held_out=[(Instances(points=[[5.0, 5.0], [20.0, 30.0]]), Instances(points=[[5.5, 5.0]])),
                            (Instances(points=[[3.0, 3.0]]), Instances(points=[[3.0, 3.5], [30.0, 9.0]]))])
    assert atoms["held_out_synthetic"]["detection"]["tp"] == 2  # points stay points, each pair in its own cell
    assert atoms["held_out_synthetic"]["detection"]["fp"] == 1 and atoms["held_out_synthetic"]["detection"]["fn"] == 1
    assert headline(scores) == ("label-free: F1 0.80 on held-out synthetic images, F1 1.00 against the priors on "
                                "the real images")


def test_a_metric_must_say_what_it_compares(tmp_path):
    from emcopilot.core.errors import PluginError
    from emcopilot.core.plugins import Origin, Registry, _make_register

    register = _make_register(Registry(), "metric", Origin("x", "x", None, None))
    with pytest.raises(PluginError, match="must compare one of instances, image pairs, image sets"):
        register("odd", lambda params, sample: None, compares="tables")
    with pytest.raises(PluginError, match="compares= is for metrics"):
        _make_register(Registry(), "segmenter", Origin("x", "x", None, None))("s", lambda p, s: None,
                                                                              compares="instances")
