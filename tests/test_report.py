"""The HTML report: self-contained, renders in a real headless browser without console errors."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from emcopilot import Instances, Micrograph
from emcopilot.pipeline.report import write_report
from emcopilot.analysis.statistics import size_statistics

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def make_report(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((96, 96), np.int32)
    rows = []
    for index, (r, c, radius) in enumerate([(20, 20, 6), (60, 30, 8), (40, 70, 5), (80, 80, 7)], start=1):
        yy, xx = np.ogrid[:96, :96]
        labels[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] = index
        rows.append(dict(image="a.tif", id=index, x=c, y=r, bbox_x0=c - radius, bbox_y0=r - radius,
                         bbox_x1=c + radius + 1, bbox_y1=r + radius + 1, area_px=np.pi * radius**2,
                         eq_diameter_px=2 * radius, eq_diameter_nm=0.2 * 2 * radius, touches_edge=False))
    micrograph = Micrograph(rng.normal(size=(96, 96)) + (labels > 0) * 3, pixel_size_nm=0.2, name="a.tif")
    table = pd.DataFrame(rows)
    statistics = size_statistics(table, {"a.tif": {"shape": (96, 96), "pixel_size_nm": 0.2}}, n_boot=50)
    path = write_report(tmp_path / "report.html", title="test <report>", micrographs=[micrograph],
                        instances=[Instances(labels=labels, points=np.array([[20.0, 20.0]]))], table=table,
                        statistics=statistics, run_info={"recipe": {"name": "x"}},
                        synthetic=[rng.normal(size=(64, 64))], histories={"segmenter": {"loss": [1.0, 0.5, 0.2]}},
                        metrics={"f1": 0.9})
    return path


def test_report_is_self_contained(tmp_path):
    text = make_report(tmp_path).read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "test &lt;report&gt;" in text  # escaped
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', text)
    assert len(images) == 4  # histogram, overlay, montage, curves
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "mean diameter (nm)" in text


def test_objects_of_one_size_get_a_histogram_without_a_fitted_curve():
    import warnings

    from emcopilot.pipeline.report import histogram_figure

    table = pd.DataFrame([dict(image="a.tif", id=k + 1, x=10 + 15 * k, y=40, bbox_x0=7 + 15 * k, bbox_y0=37,
                               bbox_x1=14 + 15 * k, bbox_y1=44, area_px=37.0, eq_diameter_px=6.9,
                               eq_diameter_nm=0.2, touches_edge=False) for k in range(5)])
    statistics = size_statistics(table, {"a.tif": {"shape": (96, 96), "pixel_size_nm": 0.03}}, n_boot=20)
    assert statistics["pooled"]["lognormal"]["sigma"] < 1e-9  # single atoms: one disk size
    statistics["pooled"]["lognormal"]["sigma"] = 0.0  # exactly, as the fit gives for some counts of equal values
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by a zero width
        assert histogram_figure(table, statistics)


def test_report_renders_in_headless_browser(tmp_path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no chromium installed")
    path = make_report(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    # 1) the DOM after load, and the console (the page has no scripts: any console message is a fault)
    dom = subprocess.run([browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == 4
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]  # chromium logs every level as INFO
    assert not console, console
    # 2) a screenshot: the figures really render (the page is not blank)
    shot = tmp_path / "shot.png"
    result = subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    import imageio.v3 as iio
    pixels = iio.imread(shot)
    assert pixels.std() > 20  # figures drawn, not an empty white page


def test_warnings_say_what_to_distrust_and_how_to_fix_it(tmp_path):
    from emcopilot.pipeline.report import run_warnings

    statistics = {"unit": "nm", "pooled": {"median": 1.6},
                  "per_image": {"a.tif": {"detected": 12}, "b.tif": {"detected": 0}}}
    warnings = run_warnings(
        histories={"segmenter": {"steps": 530, "stopped_early": "max_minutes 7 reached after step 530"},
                   "generator": {}},
        statistics=statistics, images={"a.tif": {"pixel_size_source": "file"}, "b.tif": {"pixel_size_source": "estimated"}},
        diameter_nm=(1.5, 10.0), planned_steps={"segmenter": 800, "generator": 0})
    text = "\n".join(warnings)
    assert len(warnings) == 4, text
    assert "segmenter trained 530 of 800 planned steps" in text and "--max-minutes" in text
    assert "No objects were found in 1 image(s): b.tif" in text
    assert "pixel size of 1 image(s) was estimated" in text and "--pixel-size-nm" in text
    assert "1.6 nm, is at the edge of the recipe's range (1.5-10 nm)" in text
    calm = dict(statistics, pooled={"median": 4.0}, per_image={"a.tif": {"detected": 12}})
    assert run_warnings(histories={"segmenter": {"steps": 800}}, statistics=calm,
                        images={"a.tif": {"pixel_size_source": "file"}}, diameter_nm=(1.5, 10.0),
                        planned_steps={"segmenter": 800}) == []
    micrograph = Micrograph(np.zeros((8, 8)), pixel_size_nm=0.2, name="a.tif")
    page = write_report(tmp_path / "r.html", title="t", micrographs=[micrograph], instances=[Instances(
        labels=np.zeros((8, 8), np.int32))], table=pd.DataFrame(columns=["image", "eq_diameter_nm", "touches_edge"]),
        statistics={"pooled": {}, "per_image": {}, "unit": "nm", "diameter": "eq_diameter_nm"}, run_info={},
        warnings=["careful <here>"]).read_text()
    assert "<div class='warning' role='alert'>careful &lt;here&gt;</div>" in page


def test_thumbnails_link_full_resolution_overlays_with_the_tables_ids_and_scale_bars(tmp_path):
    import imageio.v3 as iio

    from emcopilot.pipeline.report import nice_length

    text = make_report(tmp_path).read_text()
    links = re.findall(r'<a href="(overlays/[^"]+\.png)"><img', text)
    assert links == ["overlays/a.tif.png"]
    full = iio.imread(tmp_path / links[0])
    assert full.shape[:2] == (96, 96)  # one image pixel per overlay pixel
    assert [nice_length(v) for v in (0.9, 3.84, 19.2, 73.0, 100.0)] == [0.5, 2.0, 10.0, 50.0, 100.0]
    # run again into the same folder with another image: the first image's overlay goes
    (tmp_path / "overlays" / "old.png").write_bytes(b"")
    make_report(tmp_path)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["a.tif.png"]


def test_self_training_gets_its_own_training_curve(monkeypatch):
    import matplotlib.figure

    from emcopilot.pipeline.report import curves_figure

    drawn = []
    original = matplotlib.figure.Figure.subplots
    monkeypatch.setattr(matplotlib.figure.Figure, "subplots",
                        lambda self, *args, **kwargs: drawn.append(args[:2]) or original(self, *args, **kwargs))
    assert curves_figure({"segmenter": {"loss": [1.0, 0.5], "step": [10, 20],
                                        "adapt": {"loss": [0.4, 0.3], "step": [10, 20]}}})
    assert drawn == [(1, 2)]  # the training and the self-training side by side


def test_single_atoms_are_reported_by_count_and_fitted_profile_not_by_a_disk_size(tmp_path):
    from emcopilot.pipeline.report import run_warnings

    atoms = {"unit": "nm", "pooled": {"median": 0.2}, "per_image": {"a.tif": {"detected": 30}}}
    common = dict(statistics=atoms, images={"a.tif": {"pixel_size_source": "file"}}, diameter_nm=(0.08, 0.2),
                  planned_steps={"segmenter": 1000})
    assert run_warnings(histories={"segmenter": {"steps": 1000}}, kind="atoms", **common) == []
    assert len(run_warnings(histories={"segmenter": {"steps": 1000}}, **common)) == 1  # particles: at the edge
    cut = run_warnings(histories={"segmenter": {"steps": 1000, "adapt": {
        "steps": 90, "planned_steps": 400, "stopped_early": "max_minutes 3.5 reached after step 90"}}},
        kind="atoms", **common)
    assert cut == ["The segmenter's self-training trained 90 of 400 planned steps (max_minutes 3.5 reached after "
                   "step 90). Give more time with --max-minutes, or run on a GPU (--profile full)."]
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"image": "a.tif", "id": np.arange(1, 31), "x": rng.uniform(0, 64, 30),
                          "y": rng.uniform(0, 64, 30), "eq_diameter_nm": 0.2, "touches_edge": False,
                          "atom_fit": np.arange(30) % 3 > 0, "atom_amplitude": rng.normal(50, 5, 30),
                          "atom_sigma_nm": 0.05})
    page = write_report(tmp_path / "r.html", title="t", micrographs=[Micrograph(np.zeros((64, 64)), 0.03, name="a.tif")],
                        instances=[Instances(points=table[["y", "x"]].to_numpy())], table=table,
                        statistics={"pooled": {"images": 1}, "per_image": {}, "unit": "nm"}, run_info={}).read_text()
    assert "<h2>Atoms</h2>" in page and "Size distribution" not in page
    assert "<td>20</td>" in page  # atoms with a fitted Gaussian
    assert 'alt="histogram of the fitted atom peak heights"' in page
