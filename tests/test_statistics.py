"""Size statistics: lognormal MLE, bootstrap intervals, edge correction."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from emcopilot.analysis.statistics import describe, lognormal_mle, miles_lantuejoul_weights, size_statistics


@settings(max_examples=25, deadline=None)
@given(mu=st.floats(-1.0, 3.0), sigma=st.floats(0.05, 0.6), seed=st.integers(0, 1000))
def test_lognormal_mle_recovers_parameters(mu, sigma, seed):
    sample = np.random.default_rng(seed).lognormal(mu, sigma, 20_000)
    fit = lognormal_mle(sample)
    assert fit["mu"] == pytest.approx(mu, abs=0.02)
    assert fit["sigma"] == pytest.approx(sigma, rel=0.05)


def test_bootstrap_interval_has_nominal_coverage():
    rng = np.random.default_rng(1)
    true_mean = np.exp(1.0 + 0.3**2 / 2)
    covered = 0
    for trial in range(80):
        stats = describe(rng.lognormal(1.0, 0.3, 150), n_boot=200, seed=trial)
        low, high = stats["ci"]["mean"]
        covered += low < true_mean < high
        assert stats["volume_weighted_mean"] > stats["mean"]
    assert 0.85 <= covered / 80 <= 1.0


def test_edge_weights_grow_with_particle_size():
    table = pd.DataFrame({"bbox_x0": [10, 10], "bbox_x1": [20, 60], "bbox_y0": [10, 10], "bbox_y1": [20, 60]})
    small, large = miles_lantuejoul_weights(table, 100, 100)
    assert small == pytest.approx(100 * 100 / (90 * 90))
    assert large == pytest.approx(100 * 100 / (50 * 50))


def test_edge_correction_removes_size_bias():
    """Disks of two sizes placed uniformly: counting only interior ones biases towards small."""
    rng = np.random.default_rng(0)
    size, rows = 200, []
    for index in range(4000):
        d = 10 if index % 2 else 60
        x, y = rng.uniform(0, size, 2)
        x0, x1, y0, y1 = x - d / 2, x + d / 2, y - d / 2, y + d / 2
        if x1 < 0 or y1 < 0 or x0 > size or y0 > size:
            continue
        touches = x0 <= 0 or y0 <= 0 or x1 >= size or y1 >= size
        rows.append(dict(image="a", bbox_x0=max(x0, 0), bbox_x1=min(x1, size), bbox_y0=max(y0, 0),
                         bbox_y1=min(y1, size), eq_diameter_px=d, touches_edge=touches))
    stats = size_statistics(pd.DataFrame(rows), {"a": {"shape": (size, size), "pixel_size_nm": None}}, n_boot=0)
    assert stats["unit"] == "px"
    assert stats["pooled"]["mean"] == pytest.approx(35.0, rel=0.03)  # true number mean of 10 and 60
    naive = np.mean([r["eq_diameter_px"] for r in rows if not r["touches_edge"]])
    assert naive < 30


def test_empty_table_and_images_without_particles():
    table = pd.DataFrame(columns=["image", "bbox_x0", "bbox_x1", "bbox_y0", "bbox_y1", "eq_diameter_px",
                                  "eq_diameter_nm", "touches_edge"])
    stats = size_statistics(table, {"a": {"shape": (10, 10), "pixel_size_nm": 0.5}}, n_boot=10)
    assert stats["pooled"]["count"] == 0 and stats["unit"] == "nm"
    assert stats["pooled"]["density_per_unit2"] == 0.0
