"""A corpus of bad inputs, each run through the command line as a user would.

For every case the suite checks the exit status, that the failure is named in
one line (``error: ...`` naming the file or argument and the problem, or a row
of ``errors.csv`` where the other inputs were measured), that no traceback
reaches the user, and that what an earlier command left in ``--out`` is intact.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emcopilot.cli import main  # noqa: E402
from emcopilot.core.interfaces import Instances, TrainBudget  # noqa: E402
from emcopilot.pipeline.models import save_model  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402

from tests.test_recipe import MALFORMED  # noqa: E402

EXTRACT_RECIPE = """\
name: bad-inputs
sample: {kind: particles, modality: haadf-stem, diameter_nm: [1.5, 6.0], working_pixel_size_nm: 0.2}
prior_extractor: {plugin: classical}
generator: {plugin: physical}
physics_adapter: {plugin: haadf-stem}
segmenter: {plugin: classical}
"""
EARLIER = "rows of an earlier command\n"


def _png(path: Path, image: np.ndarray) -> Path:
    import imageio.v3 as iio
    iio.imwrite(path, image)
    return path


def _disks() -> np.ndarray:
    rows, cols = np.mgrid[:96, :96]
    image = np.full((96, 96), 60.0)
    for row, col in [(25, 25), (25, 70), (70, 48)]:
        image += 120 * (((rows - row) ** 2 + (cols - col) ** 2) <= 30)
    return image.astype(np.uint8)


def _tif(path: Path, array: np.ndarray) -> Path:
    import tifffile
    tifffile.imwrite(path, array)
    return path


def _header_only_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ bad images (each next to a good one: exit 3)

def _truncated_png(folder: Path) -> None:
    whole = _png(folder / "whole.png", _disks()).read_bytes()
    (folder / "whole.png").unlink()
    (folder / "cut.png").write_bytes(whole[:200])


def _locked(folder: Path) -> None:
    _png(folder / "locked.png", _disks()).chmod(0)


#: case -> (make the bad file in the input folder, its name)
IMAGE_CASES = {
    "corrupt-png": (lambda d: (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "bad.png"),
    "empty-file": (lambda d: (d / "empty.tif").write_bytes(b""), "empty.tif"),
    "text-as-tiff": (lambda d: (d / "notes.tif").write_text("hello"), "notes.tif"),
    "truncated-png": (_truncated_png, "cut.png"),
    "nan-pixels": (lambda d: _tif(d / "nan.tif", np.where(np.eye(64) > 0, np.nan, 1.0).astype(np.float32)),
                   "nan.tif"),
    "inf-pixels": (lambda d: _tif(d / "inf.tif", np.full((64, 64), np.inf, np.float32)), "inf.tif"),
    "complex-dtype": (lambda d: _tif(d / "complex.tif", np.ones((64, 64), np.complex64)), "complex.tif"),
    "one-pixel": (lambda d: _tif(d / "dot.tif", np.ones((1, 1), np.float32)), "dot.tif"),
    "one-row": (lambda d: _tif(d / "row.tif", np.ones((1, 64), np.float32)), "row.tif"),
    "over-the-pixel-limit": (lambda d: _header_only_png(d / "huge.png", 17000, 17000), "huge.png"),
    "header-only": (lambda d: _header_only_png(d / "hollow.png", 200, 200), "hollow.png"),
    "broken-link": (lambda d: (d / "gone.png").symlink_to(d / "nowhere.png"), "gone.png"),
    "link-loop": (lambda d: (d / "loop.png").symlink_to(d / "loop.png"), "loop.png"),
    "unreadable-file": (_locked, "locked.png"),
    "zero-length-stack": (lambda d: _tif(d / "stack.tif", np.zeros((0, 16, 16), np.float32)), "stack.tif"),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("model")
    sample = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.2, "diameter_nm": [1.5, 6.0]})
    segmenter = get_registry().get("segmenter", "unet").create({"depth": 2, "width": 4}, sample)
    image = _disks().astype(np.float32)
    segmenter.fit([image], [Instances(labels=(image > 100).astype(np.int32))], None,
                  budget=TrainBudget(steps=4, batch_size=2, crop_px=32, seed=0, progress=False))
    save_model(segmenter, folder / "model", plugin="unet", params={"depth": 2, "width": 4}, sample=sample)
    return folder / "model"


def _earlier_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.csv").write_text(EARLIER)
    return out


def _main(argv: list[str]) -> int:
    """The exit status of the command line, as the shell sees it (argparse exits itself)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code)


def _check(code: int, expected: int, err: str, fragment: str, out: Path) -> None:
    assert code == expected, err
    assert "Traceback" not in err, err
    if expected in (1, 2):
        errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
        assert len(errors) == 1 and fragment in errors[0], err
    assert (out / "earlier.csv").read_text() == EARLIER  # nothing an earlier command wrote is lost


@pytest.mark.parametrize("command", ["extract", "segment"])
@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_a_bad_image_is_a_row_of_errors_csv_and_the_good_one_is_measured(case, command, tmp_path, tiny_model,
                                                                         capsys):
    if case == "unreadable-file" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _png(inputs / "good.png", _disks())
    make, name = IMAGE_CASES[case]
    make(inputs)
    out = _earlier_out(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(EXTRACT_RECIPE)
    head = ["extract", str(recipe)] if command == "extract" else ["segment", "--model", str(tiny_model)]
    code = _main([*head, "--input", str(inputs), "--out", str(out), "--pixel-size-nm", "0.2", "--no-progress"])
    _check(code, 3, capsys.readouterr().err, name, out)
    import pandas as pd
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 1 and errors["path"][0].endswith(name) and errors["error"][0], errors
    assert set(pd.read_csv(out / "particles.csv")["image"]) <= {"good.png"}
    assert (out / "masks" / "good.png.tif").is_file()


# ------------------------------------------------------------------ bad recipes (validate, extract, run)

@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_bad_recipe_is_one_line_naming_the_file(case, tmp_path, capsys):
    text = MALFORMED[case][0]
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = _earlier_out(tmp_path)
    _png(tmp_path / "a.png", _disks())
    code = _main(["run", str(recipe), "--input", str(tmp_path / "a.png"), "--out", str(out), "--no-progress"])
    _check(code, 1, capsys.readouterr().err, "r.yaml", out)
    assert not (out / "stages").exists()


# ------------------------------------------------------------------ bad models (segment --model)

def _edit_config(edit, name="config.json"):
    def apply(model: Path) -> None:
        config = json.loads((model / name).read_text())
        edit(config)
        (model / name).write_text(json.dumps(config))
    return apply


def _edit_manifest(edit):
    return _edit_config(edit, "model.json")


def _without_manifest(edit):
    """A folder a plugin's save() wrote alone: read from its config.json."""
    def apply(model: Path) -> None:
        (model / "model.json").unlink()
        edit(model)
    return apply


MODEL_CASES = {
    "no-config": (lambda m: (m / "config.json").unlink(), "config.json"),
    "no-manifest-no-config": (_without_manifest(lambda m: (m / "config.json").unlink()),
                              "no model.json or config.json"),
    "config-not-json": (lambda m: (m / "config.json").write_text("{nope"), "config.json: not a readable JSON"),
    "manifest-not-json": (lambda m: (m / "model.json").write_text("{nope"), "not readable JSON"),
    "manifest-foreign": (lambda m: (m / "model.json").write_text('{"model_type": "bert"}'),
                         "not an emcopilot segmenter manifest"),
    "manifest-newer": (_edit_manifest(lambda c: c.update(format_version=99)), "upgrade emcopilot"),
    "config-a-list": (_without_manifest(lambda m: (m / "config.json").write_text("[1, 2]")),
                      "must hold a JSON object"),
    "foreign-config": (_without_manifest(lambda m: (m / "config.json").write_text('{"model_type": "bert"}')),
                       "does not name a segmenter"),
    "unknown-plugin": (_edit_manifest(lambda c: c.update(plugin="unet2")), "no segmenter named 'unet2'"),
    "params-a-list": (_edit_manifest(lambda c: c.update(params=[1])), "segmenter params must be a mapping"),
    "bad-param": (_edit_manifest(lambda c: c["params"].update(depth="deep")), "depth"),
    "unknown-plugin-without-manifest": (_without_manifest(_edit_config(lambda c: c["segmenter"].update(plugin="unet2"))),
                                        "no segmenter named 'unet2'"),
    "pixel-size-text": (_edit_config(lambda c: c.update(working_pixel_size_nm="abc")), "working_pixel_size_nm"),
    "pixel-size-negative": (_edit_config(lambda c: c.update(working_pixel_size_nm=-1)), "working_pixel_size_nm"),
    "architecture-number": (_edit_config(lambda c: c.update(architecture=5)), "architecture must be a mapping"),
    "architecture-changed": (_edit_config(lambda c: c["architecture"].update(width=64)), "architecture does not match"),
    "sample-bad": (_edit_manifest(lambda c: c["sample"].update(kind="atom")), "sample.kind"),
    "weights-missing": (lambda m: (m / "model.safetensors").unlink(), "missing"),
    "weights-tampered": (lambda m: (m / "model.safetensors").write_bytes(
        (m / "model.safetensors").read_bytes()[:-8] + b"\0" * 8), "SHA-256 differs"),
    "weights-outside": (_edit_config(lambda c: c["weights"]["model"].update(file="../model.safetensors")),
                        "must name a file in the folder"),
    "pickle-only": (lambda m: ((m / "config.json").unlink(), (m / "model.json").unlink(), (m / "model.safetensors").unlink(),
                               torch.save({"w": torch.zeros(1)}, m / "model.pt")), "refused"),
    "model-is-a-file": (lambda m: None, "no model.json or config.json"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_a_bad_model_is_one_line_before_any_image_is_read(case, tmp_path, tiny_model, capsys):
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    edit, fragment = MODEL_CASES[case]
    if case == "model-is-a-file":
        model = model / "config.json"
    else:
        edit(model)
    _png(tmp_path / "a.png", _disks())
    out = _earlier_out(tmp_path)
    code = _main(["segment", "--model", str(model), "--input", str(tmp_path / "a.png"), "--out", str(out),
                 "--no-progress"])
    _check(code, 1, capsys.readouterr().err, fragment, out)
    assert not (out / "particles.csv").exists()


# ------------------------------------------------------------------ bad arguments

ARGUMENT_CASES = {
    "pixel-size-inf": (["--pixel-size-nm", "inf"], 2, "--pixel-size-nm"),
    "pixel-size-zero": (["--pixel-size-nm", "0"], 2, "--pixel-size-nm"),
    "pixel-size-text": (["--pixel-size-nm", "small"], 2, "--pixel-size-nm"),
    "workers-zero": (["--workers", "0"], 1, "--workers"),
    "param-unknown": (["--param", "dept=3"], 1, "dept"),
    "param-no-equals": (["--param", "depth"], 1, "depth"),
    "param-bad-value": (["--param", "test_time_flips=3"], 1, "test_time_flips"),
    "calibration-missing": (["--calibration", "nowhere.csv"], 1, "nowhere.csv"),
    "calibration-bad-header": (["--calibration", "{tmp}/header.csv"], 1, "header.csv"),
    "calibration-bad-value": (["--calibration", "{tmp}/value.csv"], 1, "value.csv"),
    "input-missing": (["--input", "{tmp}/nowhere.png"], 3, "nowhere.png"),  # listed in errors.csv
    "input-empty-folder": (["--input", "{tmp}/empty"], 1, "empty"),
    "out-is-a-file": (["--out", "{tmp}/out/earlier.csv"], 1, "earlier.csv"),
}


@pytest.mark.parametrize("case", sorted(ARGUMENT_CASES))
def test_a_bad_argument_is_one_line_naming_it(case, tmp_path, tiny_model, capsys):
    extra, expected, fragment = ARGUMENT_CASES[case]
    (tmp_path / "header.csv").write_text("file,size\na.png,0.2\n")
    (tmp_path / "value.csv").write_text("image,pixel_size_nm\na.png,big\n")
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "a.png", _disks())
    out = _earlier_out(tmp_path)
    argv = {"--model": str(tiny_model), "--input": str(tmp_path / "a.png"), "--out": str(out)}
    extra = [value.format(tmp=tmp_path) for value in extra]
    for flag in list(argv):
        if flag in extra:
            argv.pop(flag)
    code = _main(["segment", *[item for pair in argv.items() for item in pair], *extra, "--no-progress"])
    _check(code, expected, capsys.readouterr().err, fragment, out)
    if expected == 3:
        assert fragment in (out / "errors.csv").read_text()


def test_the_corpus_is_large():
    cases = 2 * len(IMAGE_CASES) + len(MALFORMED) + len(MODEL_CASES) + len(ARGUMENT_CASES)
    assert cases >= 60, cases
