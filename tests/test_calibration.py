"""Per-file pixel sizes (``--calibration table.csv``): the reader's checks and the commands that use it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from emcopilot.io.calibration import read_calibration_table
from emcopilot.cli import main
from emcopilot.core.errors import InputError
from emcopilot.io.readers import read_micrograph

from test_priors_cli import RECIPE, write_disks


def test_table_by_name_and_path_wins_over_override(tmp_path):
    write_disks(tmp_path / "a.png", 0)
    write_disks(tmp_path / "b.png", 1)
    table_path = tmp_path / "cal.csv"
    table_path.write_text(f"image,pixel_size_nm\na.png,0.25\n{tmp_path / 'b.png'},0.5\n")
    table = read_calibration_table(table_path)
    a = read_micrograph(tmp_path / "a.png", pixel_size_nm=0.1, calibration=table)[0]
    b = read_micrograph(tmp_path / "b.png", calibration=table)[0]
    assert (a.pixel_size_nm, a.metadata["pixel_size_source"]) == (0.25, "calibration table")
    assert (b.pixel_size_nm, b.metadata["pixel_size_source"]) == (0.5, "calibration table")
    write_disks(tmp_path / "c.png", 2)
    c = read_micrograph(tmp_path / "c.png", pixel_size_nm=0.1, calibration=table)[0]
    assert (c.pixel_size_nm, c.metadata["pixel_size_source"]) == (0.1, "--pixel-size-nm")
    assert "pixel_size_source" not in read_micrograph(tmp_path / "c.png")[0].metadata
    assert table.unused([tmp_path / "a.png"]) == [str(tmp_path / "b.png")]


@pytest.mark.parametrize("text, message", [
    ("name,size\na.png,0.2\n", "header 'image,pixel_size_nm'"),
    ("image,pixel_size_nm\na.png,abc\n", ":2: pixel_size_nm 'abc'"),
    ("image,pixel_size_nm\na.png,-1\n", ":2: pixel_size_nm of 'a.png' must be a positive"),
    ("image,pixel_size_nm\na.png,nan\n", "must be a positive"),
    ("image,pixel_size_nm\na.png\n", ":2: expected 'image,pixel_size_nm'"),
    ("image,pixel_size_nm\na.png,0.2\na.png,0.3\n", ":3: 'a.png' is listed twice"),
    ("image,pixel_size_nm\n", "lists no image"),
    ("", "header"),
])
def test_bad_tables_are_named_errors(tmp_path, text, message):
    path = tmp_path / "cal.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("'", "'")) as caught:
        read_calibration_table(path)
    assert str(path) in str(caught.value)


def test_missing_and_binary_tables(tmp_path):
    with pytest.raises(InputError, match="no such calibration table"):
        read_calibration_table(tmp_path / "none.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(InputError, match="not UTF-8"):
        read_calibration_table(tmp_path / "bin.csv")


def test_extract_records_the_table_as_source(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_disks(inputs / "a.png", 0)
    write_disks(inputs / "b.png", 1)
    (tmp_path / "cal.csv").write_text("image,pixel_size_nm\na.png,0.2\nmissing.png,0.3\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["extract", str(recipe), "--input", str(inputs), "--out", str(out), "--pixel-size-nm", "0.4",
                 "--calibration", str(tmp_path / "cal.csv"), "--no-progress"]) == 0
    images = json.loads((out / "run.json").read_text())["images"]
    assert (images["a.png"]["pixel_size_nm"], images["a.png"]["pixel_size_source"]) == (0.2, "calibration table")
    assert (images["b.png"]["pixel_size_nm"], images["b.png"]["pixel_size_source"]) == (0.4, "--pixel-size-nm")
    table = pd.read_csv(out / "particles.csv")
    a, b = (table[table.image == name] for name in ("a.png", "b.png"))
    assert np.allclose(b["eq_diameter_nm"], b["eq_diameter_px"] * 0.4)
    assert np.allclose(a["eq_diameter_nm"], a["eq_diameter_px"] * 0.2)
    assert len(a) and (a["pixel_size_source"] == "calibration table").all() and (a["pixel_size_nm"] == 0.2).all()
    assert len(b) and (b["pixel_size_source"] == "--pixel-size-nm").all()
    assert main(["extract", str(recipe), "--input", str(inputs), "--out", str(out),
                 "--calibration", str(tmp_path / "nothere.csv")]) == 1
    assert "no such calibration table" in capsys.readouterr().err
