"""An estimated pixel size says how uncertain it is, and refuses nm where the evidence is too thin."""
from __future__ import annotations

import math

import numpy as np
import pytest

from emcopilot import Instances, Micrograph
from emcopilot.analysis.measure import particle_table
from emcopilot.specimen.pixel_size import (ESTIMATOR_LOG_SD, MIN_CREDIBLE_OBJECTS, apply_pixel_size, estimate_pixel_size,
                                  image_record, resolve_pixel_size)
from emcopilot.pipeline.report import run_warnings
from emcopilot.analysis.statistics import size_statistics

from test_priors import PARTICLES, disks_image


def test_an_estimate_carries_its_three_uncertainties():
    image, _ = disks_image((384, 384), radius_px=8.0, count=20, seed=5, blur_px=1.5)
    estimate = estimate_pixel_size(Micrograph(image), PARTICLES)
    assert estimate.credible and estimate.reason is None
    assert estimate.objects == 20
    assert estimate.pixel_size_nm == pytest.approx(3.0 / estimate.typical_diameter_px)
    assert estimate.log_sd["recipe"] == pytest.approx(math.log(6.0 / 1.5) / math.sqrt(12))
    assert estimate.log_sd["estimator"] == ESTIMATOR_LOG_SD["particles"]
    assert 0 < estimate.log_sd["evidence"] < 0.05  # twenty disks of one size agree
    assert estimate.total_log_sd == pytest.approx(math.sqrt(sum(v ** 2 for v in estimate.log_sd.values())))
    low, high = estimate.interval_nm()
    assert low < estimate.pixel_size_nm < high
    assert high / estimate.pixel_size_nm == pytest.approx(math.exp(1.96 * estimate.total_log_sd))
    record = estimate.as_dict()
    assert record["source"] == "estimated" and record["credible"] is True
    assert record["interval_95_nm"] == pytest.approx([low, high])


def test_too_few_objects_give_a_working_scale_but_no_nm():
    image, _ = disks_image((256, 256), radius_px=8.0, count=MIN_CREDIBLE_OBJECTS - 2, seed=7, blur_px=1.5)
    micrograph = Micrograph(image, name="sparse.png")
    estimate = estimate_pixel_size(micrograph, PARTICLES)
    assert not estimate.credible
    assert "object(s) stand out" in estimate.reason
    apply_pixel_size(micrograph, estimate.as_dict())  # as every command does: it still works at that scale
    assert micrograph.pixel_size_nm == estimate.pixel_size_nm and micrograph.metadata["pixel_size_credible"] is False
    labels = np.zeros(image.shape, np.int32)
    labels[100:110, 100:110] = 1
    table = particle_table(Instances(labels=labels), micrograph)
    assert "eq_diameter_nm" not in table and "pixel_size_nm" not in table
    assert table["eq_diameter_px"].iloc[0] == pytest.approx(math.sqrt(400 / math.pi))
    warnings = run_warnings(histories={}, statistics={}, diameter_nm=(1.5, 6.0), planned_steps={},
                            images={"sparse.png": image_record(micrograph)})
    assert any("not credible" in text and "sparse.png" in text and "stand out" in text for text in warnings)
    assert any("+/- " in text and "estimated" in text for text in warnings)


def test_the_scale_uncertainty_widens_the_interval_of_the_mean_not_the_mean():
    rng = np.random.default_rng(0)
    table = __import__("pandas").DataFrame({
        "image": "a", "eq_diameter_nm": rng.lognormal(math.log(3.0), 0.2, 200), "touches_edge": False,
        "bbox_x0": 0, "bbox_y0": 0, "bbox_x1": 10, "bbox_y1": 10})
    table["eq_diameter_px"] = table["eq_diameter_nm"] / 0.2
    known = size_statistics(table, {"a": {"shape": (1000, 1000), "pixel_size_nm": 0.2}})
    estimated = size_statistics(table, {"a": {"shape": (1000, 1000), "pixel_size_nm": 0.2,
                                              "pixel_size_log_sd": 0.3}})
    for stats in (estimated["per_image"]["a"], estimated["pooled"]):
        assert stats["mean"] == pytest.approx(known["pooled"]["mean"])
        assert stats["ci"] == known["pooled"]["ci"]  # sampling only, as before
        low, high = stats["ci_total"]["mean"]
        sampling_low, sampling_high = stats["ci"]["mean"]
        assert low < sampling_low and high > sampling_high
        assert high / stats["mean"] > math.exp(1.96 * 0.3)  # at least the scale's own spread
    assert "ci_total" not in known["pooled"]


def test_the_summary_line_gives_both_intervals_and_names_images_left_in_pixels(monkeypatch, tmp_path, capsys):
    import emcopilot.pipeline.loop
    from emcopilot.cli import main

    statistics = {"unit": "nm", "pooled": {"detected": 12, "mean": 3.0, "ci": {"mean": [2.9, 3.1]},
                                           "ci_total": {"mean": [1.0, 9.0]}, "scale_log_sd": 0.57}}
    images = {"a.png": {"pixel_size_source": "estimated", "pixel_size_credible": True},
              "b.png": {"pixel_size_source": "estimated", "pixel_size_credible": False,
                        "pixel_size_estimate": {"reason": "only 2 object(s) stand out"}}}

    class FakeLoop:
        def __init__(self, *args, **kwargs):
            pass

        def run(self):
            return emcopilot.pipeline.loop.RunResult(out=tmp_path, micrographs=[None, None], instances=[], table=None,
                                            statistics=statistics, errors=[],
                                            run_info={"images": images})

    monkeypatch.setattr(emcopilot.pipeline.loop, "Loop", FakeLoop)
    assert main(["run", "nanoparticles-haadf", "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "95% CI [2.9, 3.1] from sampling; [1, 9] with the estimated scale, +/- 77 %" in printed
    assert "1 image(s) in pixels only" in printed and "b.png" in printed and "a.png" not in printed.split("only")[-1]


def test_an_image_left_in_pixels_is_described_alone_and_kept_out_of_the_pooled_nm():
    import pandas as pd
    rng = np.random.default_rng(1)
    rows = []
    for image, pixel_size in (("a", 0.2), ("b", 0.2), ("c", None)):
        diameters_px = rng.lognormal(math.log(15.0), 0.2, 50)
        rows.append(pd.DataFrame({"image": image, "eq_diameter_px": diameters_px, "touches_edge": False,
                                  "eq_diameter_nm": diameters_px * pixel_size if pixel_size else np.nan,
                                  "bbox_x0": 0, "bbox_y0": 0, "bbox_x1": 10, "bbox_y1": 10}))
    table = pd.concat(rows, ignore_index=True)
    images = {"a": {"shape": (500, 500), "pixel_size_nm": 0.2}, "b": {"shape": (500, 500), "pixel_size_nm": 0.2},
              "c": {"shape": (500, 500), "pixel_size_nm": None}}
    statistics = size_statistics(table, images)
    assert statistics["unit"] == "nm"
    assert statistics["per_image"]["c"]["unit"] == "px" and statistics["per_image"]["c"]["mean"] > 10
    assert statistics["pooled"]["images_in_px"] == ["c"] and statistics["pooled"]["images"] == 2
    assert statistics["pooled"]["count"] == 100 and 2 < statistics["pooled"]["mean"] < 4
