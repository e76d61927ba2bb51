"""Burned-in scale bars: found, measured to a fraction of a pixel, read, used and painted over."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from emcopilot.io import scale_bar
from emcopilot.io.readers import read_micrograph
from emcopilot.io.scale_bar import find_scale_bar, parse_label


def export(tmp_path, name="export.png", *, length_px=137, thick_px=6, bright=True, text="10 nm", side=(600, 800),
           seed=0, quality=None, bottom=True):
    """A noisy micrograph with particles and a burned-in bar of ``length_px`` with its label."""
    rng = np.random.default_rng(seed)
    height, width = side
    image = rng.normal(90 if bright else 170, 18, side)
    rows, cols = np.mgrid[:height, :width]
    for _ in range(25):  # particles, brighter (or darker) than the support but not at the bar's level
        r, c = rng.uniform(0, height), rng.uniform(0, width)
        image += (40 if bright else -40) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 4.0 ** 2))
    picture = Image.fromarray(image.clip(5, 250).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    level = 255 if bright else 0
    top = height - 40 if bottom else 30
    left = width - length_px - 50
    draw.rectangle([left, top, left + length_px - 1, top + thick_px - 1], fill=level)
    if text:
        draw.text((left + length_px // 2 - 20, top - 22), text, fill=level, font=ImageFont.load_default(size=16))
    path = tmp_path / name
    picture.save(path, **({"quality": quality} if quality else {}))
    return path, (top, left, top + thick_px, left + length_px)


@pytest.mark.parametrize("length_px", [40, 137, 333])
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_the_bar_is_found_and_measured_within_one_percent(tmp_path, length_px, fmt):
    path, box = export(tmp_path, f"bar.{fmt}", length_px=length_px, quality=90 if fmt == "jpg" else None)
    bar = find_scale_bar(np.asarray(Image.open(path).convert("L"), np.float32))
    assert bar is not None
    assert abs(bar.length_px - length_px) <= 0.01 * length_px
    assert bar.bright
    r0, c0, r1, c1 = bar.label_box
    assert r1 <= box[0] and c0 >= box[1] - 5 and c1 <= box[3] + 5  # the label is the text above the bar


def test_a_dark_bar_on_a_bright_field_image_and_a_bar_at_the_top(tmp_path):
    path, _ = export(tmp_path, "bf.png", bright=False, length_px=120, bottom=False)
    bar = find_scale_bar(np.asarray(Image.open(path), np.float32))
    assert bar is not None and not bar.bright and abs(bar.length_px - 120) <= 1.2


def test_images_without_a_bar_have_none(tmp_path):
    rng = np.random.default_rng(3)
    noise = rng.normal(100, 20, (512, 512)).astype(np.float32)
    assert find_scale_bar(noise) is None
    saturated = noise.copy()
    saturated[300:340, 100:160] = 255  # a saturated particle: not thin
    assert find_scale_bar(saturated) is None
    border = noise.copy()
    border[-3:, :] = 255  # a frame border across the whole width is not a bar
    assert find_scale_bar(border) is None
    middle = noise.copy()
    middle[250:254, 100:300] = 255  # a bar-like streak in the middle of the frame is specimen, not a bar
    assert find_scale_bar(middle) is None
    assert find_scale_bar(np.full((64, 64), 7.0, np.float32)) is None
    assert find_scale_bar(np.zeros((8, 8), np.float32)) is None


@pytest.mark.parametrize("text, nm", [("10 nm", 10.0), ("2.5nm", 2.5), ("500 pm", 0.5), ("1 µm", 1000.0),
                                      ("5 um", 5000.0), ("20 Å", 2.0), ("0,5 nm", 0.5), (" 50 NM\n", 50.0)])
def test_labels_are_parsed_with_their_units(text, nm):
    assert parse_label(text) == pytest.approx(nm)


@pytest.mark.parametrize("text", ["", "nm", "scale", "0 nm", "10 nmol"])
def test_what_is_not_a_length_is_not_read(text):
    assert parse_label(text) is None


def test_the_batch_length_calibrates_and_the_bar_is_painted_over(tmp_path):
    path, (r0, c0, r1, c1) = export(tmp_path, length_px=137)
    micrograph, = read_micrograph(path, scale_bar_nm=10.0)
    assert micrograph.pixel_size_nm == pytest.approx(10.0 / 137, rel=0.01)
    assert micrograph.metadata["pixel_size_source"] == "scale bar"
    record = micrograph.metadata["scale_bar"]
    assert record["length_from"] == "--scale-bar-nm" and record["length_nm"] == 10.0
    assert micrograph.data[r0:r1, c0:c1].max() < 200  # neither priors nor segmenter see the bar...
    lr0, lc0, lr1, lc1 = record["label_box"]
    assert micrograph.data[lr0:lr1, lc0:lc1].max() < 200  # ...nor its label
    assert micrograph.data[:r0 - 40].max() > 100  # the rest of the image is untouched


def test_a_label_read_by_ocr_calibrates(tmp_path, monkeypatch):
    path, _ = export(tmp_path, length_px=200, text="50 nm")
    seen = []
    monkeypatch.setattr(scale_bar, "ocr_engine", lambda: (lambda crop: seen.append(crop.shape) or "50 nm\n", "fake"))
    micrograph, = read_micrograph(path)
    assert seen and micrograph.pixel_size_nm == pytest.approx(50.0 / 200, rel=0.01)
    assert micrograph.metadata["scale_bar"]["label_text"] == "50 nm"
    assert micrograph.metadata["scale_bar"]["length_from"] == "label"


def test_without_ocr_the_bar_is_masked_and_the_user_told_how(tmp_path, monkeypatch, caplog):
    path, (r0, c0, r1, c1) = export(tmp_path)
    monkeypatch.setattr(scale_bar, "ocr_engine", lambda: (None, "pytesseract is not installed"))
    with caplog.at_level(logging.WARNING):
        micrograph, = read_micrograph(path)
    assert micrograph.pixel_size_nm is None and "pixel_size_source" not in micrograph.metadata
    assert "pytesseract is not installed" in caplog.text and "--scale-bar-nm" in caplog.text
    assert micrograph.data[r0:r1, c0:c1].max() < 200


def test_the_missing_engine_is_named(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pytesseract(name, *args, **kwargs):
        if name == "pytesseract":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_pytesseract)
    engine, why = scale_bar.ocr_engine()
    assert engine is None and "pytesseract" in why


def test_a_calibrated_image_keeps_its_scale_but_loses_its_bar(tmp_path):
    path, (r0, c0, r1, c1) = export(tmp_path)
    micrograph, = read_micrograph(path, pixel_size_nm=0.3, scale_bar_nm=10.0)
    assert micrograph.pixel_size_nm == 0.3 and micrograph.metadata["pixel_size_source"] == "--pixel-size-nm"
    assert micrograph.data[r0:r1, c0:c1].max() < 200


def test_an_implausible_bar_length_is_refused(tmp_path, caplog):
    path, _ = export(tmp_path)
    with caplog.at_level(logging.WARNING):
        micrograph, = read_micrograph(path, scale_bar_nm=1e9)
    assert micrograph.pixel_size_nm is None and "not used" in caplog.text


def test_extract_records_the_bar_and_tables_carry_the_source(tmp_path):
    import emcopilot

    path, _ = export(tmp_path, length_px=150)
    result = emcopilot.extract("nanoparticles-haadf", [path], tmp_path / "out", scale_bar_nm=30.0, progress=False)
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    entry = info["images"]["export.png"]
    assert entry["pixel_size_source"] == "scale bar" and entry["pixel_size_nm"] == pytest.approx(0.2, rel=0.01)
    assert entry["scale_bar"]["length_px"] == pytest.approx(150, rel=0.01)
    assert set(result.table["pixel_size_source"]) <= {"scale bar"}


def test_the_command_line_takes_the_bar_length(tmp_path):
    from emcopilot.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["extract", "nanoparticles-haadf", "-i", "x.png", "-o", "out", "--scale-bar-nm", "5"])
    assert args.scale_bar_nm == 5.0
    with pytest.raises(SystemExit):
        parser.parse_args(["extract", "nanoparticles-haadf", "-i", "x.png", "-o", "out", "--scale-bar-nm", "-5"])


@pytest.mark.skipif(scale_bar.ocr_engine()[0] is None, reason="no OCR engine (pytesseract and tesseract) here")
@pytest.mark.parametrize("text, nm, length_px, bright, fmt", [
    ("20 nm", 20.0, 200, True, "png"), ("5 nm", 5.0, 120, True, "png"), ("500 pm", 0.5, 90, True, "png"),
    ("50 nm", 50.0, 250, False, "png"), ("10 nm", 10.0, 137, True, "jpg"), ("2 nm", 2.0, 60, False, "jpg"),
    ("100 nm", 100.0, 200, True, "jpg"), ("0.5 nm", 0.5, 80, True, "png"), ("200 nm", 200.0, 240, False, "jpg")])
def test_tesseract_reads_a_drawn_label(tmp_path, text, nm, length_px, bright, fmt):
    path, _ = export(tmp_path, f"bar.{fmt}", length_px=length_px, text=text, bright=bright,
                     quality=90 if fmt == "jpg" else None)
    micrograph, = read_micrograph(path)
    assert micrograph.metadata["scale_bar"]["label_nm"] == pytest.approx(nm)
    assert micrograph.pixel_size_nm == pytest.approx(nm / length_px, rel=0.01)


def test_digits_misread_as_letters_are_read_as_digits():
    assert parse_label("1Onm") == 10.0 and parse_label("5onm") == 50.0 and parse_label("l0 nm") == 10.0
    assert parse_label("05nm") == 0.5  # a lost decimal point
    assert parse_label("Scale 5 nm") == 5.0 and parse_label("nm") is None and parse_label("208") is None


def test_no_development_image_carries_a_bar(shared_data):
    """The annotated sets are cropped exports and calibrated frames: nothing there may be taken for a bar."""
    files = sorted(p for folder in ("ardagen-dev/images", "acstem-dev/images") for p in (shared_data / folder).iterdir())
    files += sorted(p for p in (shared_data / "formats").rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".png",
                                                                                              ".jpg", ".jpeg"))
    found = [path.name for path in files for m in read_micrograph(path) if "scale_bar" in m.metadata]
    assert found == []
