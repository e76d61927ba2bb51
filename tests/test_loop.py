"""The closed loop end to end with tiny budgets: outputs, resume, --force, rounds, kill and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")

from emcopilot.cli import main  # noqa: E402
from emcopilot.pipeline.demo import make_experiment  # noqa: E402
from emcopilot.core.recipe import load_recipe  # noqa: E402

TINY = """\
name: tiny-haadf
base: nanoparticles-haadf-gan
generator:
  plugin: pix2pix
  params: {{width: 4, depth: 2, validate_every: 2, validation_crops: 2}}
segmenter:
  plugin: unet
  params: {{width: 4, depth: 2}}
train:
  rounds: {rounds}
  profiles:
    fast: {{synthetic_images: 4, image_px: 64, generator_steps: {gen_steps}, segmenter_steps: 6, batch_size: 2, crop_px: 32}}
"""


def tiny_recipe(folder: Path, rounds: int = 1, gen_steps: int = 4) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(TINY.format(rounds=rounds, gen_steps=gen_steps))
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("experiment")
    recipe = tiny_recipe(folder)
    make_experiment(load_recipe(recipe), folder, count=2, side_px=96)
    return recipe, folder / "inputs"


def run(recipe: Path, inputs: Path, out: Path, *extra: str) -> int:
    return main(["run", str(recipe), "--input", str(inputs), "--out", str(out), "--no-progress", *extra])


def fresh_run(recipe: Path, inputs: Path, out: Path, *extra: str, wait: bool = True):
    """``emcopilot run`` in a new process with one thread, as every run of a comparison must be: the
    thread count and whatever earlier tests left in this process change the float sums of training."""
    command = [sys.executable, "-m", "emcopilot", "run", str(recipe), "--input", str(inputs), "--out", str(out),
               "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return process.wait() if wait else process


def run_info(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_run_writes_every_output_and_resumes(experiment, tmp_path):
    recipe, inputs = experiment
    out = tmp_path / "run"
    assert run(recipe, inputs, out) == 0
    for name in ("particles.csv", "particles.parquet", "report.html", "run.json", "statistics.json", "errors.csv",
                 "model/config.json", "model/model.safetensors", "masks/demo_00.tif.tif"):
        assert (out / name).exists(), name
    info = run_info(out)
    assert info["stages_reused"] == []
    assert {entry["sha256"] for entry in info["inputs"]} and info["seeds"] == {"train": 0}
    assert info["plugins"]["generator"] == {"name": "pix2pix", "distribution": "emcopilot", "version": "0.1.0"}
    assert info["schema"] == "emcopilot.run/1" and info["command"] == "run"
    assert info["images"]["demo_00.tif"]["pixel_size_source"] == "file"
    assert info["images"]["demo_00.tif"]["objects"] == int((pd.read_csv(out / "particles.csv")["image"]
                                                            == "demo_00.tif").sum())
    # label-free scores: the recipe's detection and size-distribution where instances are compared
    metrics = info["metrics"]
    assert metrics["held_out_synthetic"]["images"] == 4 and "f1" in metrics["held_out_synthetic"]["detection"]
    assert metrics["real_vs_priors"]["images"] == 2 and "f1" in metrics["real_vs_priors"]["detection"]
    assert "Label-free scores" in (out / "report.html").read_text()
    first = (out / "particles.csv").read_text()

    assert run(recipe, inputs, out) == 0  # everything is reused
    assert len(run_info(out)["stages_reused"]) == 8
    assert (out / "particles.csv").read_text() == first

    assert run(recipe, inputs, out, "--force", "segmenter") == 0
    assert run_info(out)["stages_reused"] == ["extract@1", "prior@1", "adapter@1", "generator@1", "synthesize@1"]
    assert (out / "particles.csv").read_text() == first  # same seed, same result


def test_a_stage_recomputed_after_an_interrupted_force_recomputes_every_later_stage(experiment, tmp_path):
    import shutil

    recipe, inputs = experiment
    out = tmp_path / "run"
    assert run(recipe, inputs, out) == 0
    # what `run --force segmenter` leaves when it is killed during training: the stage cleared, no key,
    # the predictions of the old model still on disk
    shutil.rmtree(out / "stages" / "segmenter@1")
    (out / "stages" / "segmenter@1").mkdir()
    assert run(recipe, inputs, out) == 0
    assert run_info(out)["stages_reused"] == ["extract@1", "prior@1", "adapter@1", "generator@1", "synthesize@1"]
    segmenter_key = json.loads((out / "stages" / "segmenter@1" / "key.json").read_text())
    assert run_info(out)["stage_keys"]["segmenter@1"] != segmenter_key["key"]  # later stages see the generation


def test_changed_budget_recomputes_only_what_depends_on_it(experiment, tmp_path):
    recipe, inputs = experiment
    out = tmp_path / "run"
    assert run(recipe, inputs, out) == 0
    changed = tmp_path / "changed.yaml"
    changed.write_text(recipe.read_text().replace("segmenter_steps: 6", "segmenter_steps: 8"))
    assert run(changed, inputs, out) == 0
    assert run_info(out)["stages_reused"] == ["extract@1", "prior@1", "adapter@1", "generator@1", "synthesize@1"]


def test_a_changed_inference_only_setting_re_segments_with_the_trained_model(experiment, tmp_path):
    recipe, inputs = experiment
    out = tmp_path / "run"
    assert run(recipe, inputs, out) == 0
    model = (out / "stages" / "segmenter@1" / "model" / "model.safetensors").read_bytes()
    changed = tmp_path / "changed.yaml"
    changed.write_text(recipe.read_text().replace("{width: 4, depth: 2}", "{width: 4, depth: 2, rescan_scales: [0.5]}"))
    assert run(changed, inputs, out) == 0
    assert run_info(out)["stages_reused"] == ["extract@1", "prior@1", "adapter@1", "generator@1", "synthesize@1",
                                              "segmenter@1"]
    assert (out / "stages" / "segmenter@1" / "model" / "model.safetensors").read_bytes() == model
    # the run's model folder carries the settings it segmented with
    assert json.loads((out / "model" / "model.json").read_text())["params"]["rescan_scales"] == [0.5]


def test_max_minutes_from_the_command_line_is_the_training_budget(experiment, tmp_path, capsys):
    recipe, inputs = experiment
    out = tmp_path / "run"
    assert run(recipe, inputs, out, "--max-minutes", "30") == 0
    assert run_info(out)["profile"]["max_minutes"] == 30.0
    assert run(recipe, inputs, tmp_path / "bad", "--max-minutes", "0") != 0
    assert "max_minutes (the training budget in minutes) must be >= 0.1, got 0.0" in capsys.readouterr().err
    assert run(recipe, inputs, tmp_path / "bad", "--max-minutes", "0.05") != 0  # a recipe would refuse it too


def test_self_training_on_the_real_images_follows_training_and_only_its_stage_reruns(experiment, tmp_path):
    recipe, inputs = experiment
    out = tmp_path / "run"
    assert run(recipe, inputs, out) == 0
    history = json.loads((out / "stages" / "segmenter@1" / "history.json").read_text())
    assert "adapt" not in history  # off unless the recipe asks
    adapted = tmp_path / "adapted.yaml"
    adapted.write_text(recipe.read_text().replace("{width: 4, depth: 2}", "{width: 4, depth: 2, self_training: 0.5}"))
    assert run(adapted, inputs, out) == 0
    assert run_info(out)["stages_reused"] == ["extract@1", "prior@1", "adapter@1", "generator@1", "synthesize@1"]
    history = json.loads((out / "stages" / "segmenter@1" / "history.json").read_text())
    assert history["adapt"]["images"] == 2 and history["adapt"]["steps"] == 3  # half of the 6 training steps


def test_two_rounds_use_confident_predictions(experiment, tmp_path):
    recipe, inputs = experiment
    two = tiny_recipe(tmp_path, rounds=2)
    out = tmp_path / "run"
    assert run(two, inputs, out) == 0
    stages = sorted(p.name for p in (out / "stages").iterdir())
    assert "extract@2" in stages and "segment@2" in stages
    assert pd.read_csv(out / "particles.csv").shape[1] >= 10


def test_unreadable_inputs_are_listed_and_the_run_continues(experiment, tmp_path):
    recipe, inputs = experiment
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in inputs.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "broken.dm4").write_bytes(b"nonsense" * 10)
    out = tmp_path / "run"
    assert run(recipe, mixed, out) == 3
    errors = (out / "errors.csv").read_text()
    assert "broken.dm4" in errors and (out / "particles.csv").exists()


def test_extract_is_the_run_stopped_after_its_prior_and_a_run_goes_on_from_it(experiment, tmp_path):
    recipe, inputs = experiment
    out = tmp_path / "out"
    assert main(["extract", str(recipe), "--input", str(inputs), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["extract@1", "prior@1"]
    extracted = run_info(out)
    assert extracted["command"] == "extract" and set(extracted["timings_s"]) >= {"extract@1", "prior@1", "total"}
    assert all(entry["seconds"] >= 0 for entry in extracted["images"].values())
    assert (out / "prior.json").is_file() and len(pd.read_csv(out / "particles.csv"))
    assert run(recipe, inputs, out) == 0  # the same recipe and inputs: the run reuses both stages
    ran = run_info(out)
    assert ran["command"] == "run" and set(ran["stages_reused"]) == {"extract@1", "prior@1"}
    assert not (out / "prior.json").exists()  # extract's output, not among a run's
    # extract does not write into a run's folder; segment into neither
    assert main(["extract", str(recipe), "--input", str(inputs), "--out", str(out), "--no-progress"]) == 1


@pytest.mark.parametrize("command", ["run", "extract"])
def test_a_micrograph_the_extractor_fails_on_is_an_error_row_and_the_others_go_on(experiment, tmp_path,
                                                                                   monkeypatch, command):
    from emcopilot.core.errors import InputError
    from emcopilot_plugins.priors.classical import ClassicalExtractor

    recipe, inputs = experiment
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first = sorted(inputs.iterdir())[0]
    for path in inputs.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / ("refused_" + first.name)).write_bytes(first.read_bytes())
    extract = ClassicalExtractor.extract

    def refusing(self, micrograph):
        if micrograph.name.startswith("refused_"):
            raise InputError(f"{micrograph.name}: nothing to threshold")
        return extract(self, micrograph)

    monkeypatch.setattr(ClassicalExtractor, "extract", refusing)
    out = tmp_path / "out"
    two = tiny_recipe(tmp_path, rounds=2)  # round 2 finds the files of the micrographs that stayed
    arguments = ["--input", str(mixed), "--out", str(out), "--no-progress"]
    assert main([command, str(two), *arguments]) == 3
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["path"]) == ["refused_" + first.name]
    assert "the prior extractor failed" in errors["error"][0] and "nothing to threshold" in errors["error"][0]
    assert set(run_info(out)["images"]) == {p.name for p in inputs.iterdir()}
    assert len(list((out / "masks").iterdir())) == 2


KILL_POINTS = {  # completed stage that is waited for -> stages that must be reused after the restart
    "generator-training": ("adapter@1", {"extract@1", "prior@1", "adapter@1"}),
    "segmenter-training": ("synthesize@1", {"extract@1", "prior@1", "adapter@1", "generator@1", "synthesize@1"}),
}


@pytest.fixture(scope="module")
def slow_reference(experiment, tmp_path_factory):
    recipe, inputs = experiment
    folder = tmp_path_factory.mktemp("slow")
    slow = folder / "slow.yaml"
    slow.write_text(recipe.read_text().replace("generator_steps: 4", "generator_steps: 60")
                    .replace("segmenter_steps: 6", "segmenter_steps: 80"))
    assert fresh_run(slow, inputs, folder / "reference") == 0
    return slow, folder / "reference"


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_kill_during_training_then_resume_gives_identical_results(experiment, slow_reference, tmp_path, kill_point):
    _, inputs = experiment
    slow, reference = slow_reference
    completed, expect_reused = KILL_POINTS[kill_point]
    out = tmp_path / "killed"
    process = fresh_run(slow, inputs, out, wait=False)
    deadline = time.time() + 300
    while not (out / "stages" / completed / "key.json").exists():  # the next stage is training now
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "particles.csv").exists()
    for path in out.rglob("*.json"):  # no half-written outputs (temporary *.part files may remain)
        json.loads(path.read_text())
    assert fresh_run(slow, inputs, out) == 0
    assert set(run_info(out)["stages_reused"]) == expect_reused  # killed stage was redone, not trusted
    assert (out / "particles.csv").read_text() == (reference / "particles.csv").read_text()


def test_kill_during_a_forced_retraining_then_resume_pairs_the_table_with_the_model(slow_reference, experiment,
                                                                                    tmp_path):
    import shutil

    _, inputs = experiment
    slow, reference = slow_reference
    out = tmp_path / "forced"
    shutil.copytree(reference, out)
    process = fresh_run(slow, inputs, out, "--force", "segmenter", wait=False)
    deadline = time.time() + 300
    while (out / "stages" / "segmenter@1" / "key.json").exists():  # the forced stage has started over
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.5)  # well into training
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert fresh_run(slow, inputs, out) == 0  # a plain re-run, as a user would type it
    assert set(run_info(out)["stages_reused"]) == {"extract@1", "prior@1", "adapter@1", "generator@1",
                                                  "synthesize@1"}  # segment@1 is not the old model's
    assert (out / "particles.csv").read_text() == (reference / "particles.csv").read_text()
    assert (out / "model" / "model.safetensors").read_bytes() == (reference / "model" / "model.safetensors").read_bytes()


def test_a_failing_plugin_names_stage_and_plugin_and_keeps_finished_stages(experiment, tmp_path, capsys):
    recipe, inputs = experiment
    failing = tmp_path / "failing.yaml"
    # a training crop larger than any image: the generator refuses it
    failing.write_text(recipe.read_text().replace("crop_px: 32", "crop_px: 4096"))
    out = tmp_path / "run"
    assert run(failing, inputs, out) == 1
    err = capsys.readouterr().err
    assert "stage generator@1 failed (generator 'pix2pix' from emcopilot 0.1.0)" in err
    assert "re-run the same command to resume" in err
    assert (out / "stages" / "adapter@1" / "key.json").exists()  # finished stages kept


def test_any_file_name_the_file_system_allows_goes_through_run_and_extract(experiment, tmp_path):
    import shutil

    recipe, inputs = experiment
    odd = tmp_path / "odd"
    odd.mkdir()
    first, second = sorted(inputs.iterdir())[:2]
    shutil.copy(first, os.fsencode(odd) + b"/caf\xe9 " + first.name.encode())  # not UTF-8: legal on Linux
    shutil.copy(second, odd / ("a$\\frac$ " + second.name))  # mathtext in a plot title
    out = tmp_path / "run"
    assert run(recipe, odd, out) == 0
    names = {"caf\\xe9 " + first.name, "a$\\frac$ " + second.name}
    assert set(run_info(out)["images"]) == names
    assert "caf\\xe9" in (out / "report.html").read_text(encoding="utf-8")
    assert len(list((out / "masks").iterdir())) == 2
    assert main(["extract", str(recipe), "--input", str(odd), "--out", str(tmp_path / "extract"), "--no-progress"]) == 0
    assert set(pd.read_csv(tmp_path / "extract" / "particles.csv")["image"]) == names


def test_an_uncalibrated_run_states_its_scale_and_how_far_to_trust_it(experiment, tmp_path, capsys):
    import imageio.v3 as iio
    import numpy as np
    import pandas as pd
    import tifffile
    recipe, inputs = experiment
    exports = tmp_path / "exports"
    exports.mkdir()
    for tif in sorted(inputs.glob("*.tif")):  # JPEG-like exports: the calibration is gone
        data = tifffile.imread(tif).astype(float)
        data = np.tile(data, (2, 2))  # enough particles for a credible estimate
        iio.imwrite(exports / f"{tif.stem}.png", (255 * (data - data.min()) / np.ptp(data)).astype(np.uint8))
    iio.imwrite(exports / "blank.png", np.full((96, 96), 120, np.uint8) + np.eye(96, dtype=np.uint8))
    out = tmp_path / "run"
    capsys.readouterr()
    code = run(recipe, exports, out)
    printed = capsys.readouterr().out
    images = run_info(out)["images"]
    credible = [name for name, entry in images.items() if entry["pixel_size_credible"]]
    assert credible, images
    for name in credible:
        assert images[name]["pixel_size_source"] == "estimated"
        entry = images[name]["pixel_size_estimate"]
        assert entry["log_sd"]["total"] > entry["log_sd"]["recipe"] > 0
        low, high = entry["interval_95_nm"]
        assert low < entry["pixel_size_nm"] < high
    table = pd.read_csv(out / "particles.csv")
    statistics = json.loads((out / "statistics.json").read_text())
    if len(table) >= 3 and all(entry["pixel_size_credible"] for entry in images.values()):
        assert statistics["unit"] == "nm" and "ci_total" in statistics["pooled"]
        assert "with the estimated scale" in printed
    assert "+/- " in (out / "report.html").read_text()
    # an export in which nothing stands out has no scale to estimate: it is an error row, not a failed run
    assert code == 3 and "blank.png" not in images
    errors = (out / "errors.csv").read_text()
    assert "blank.png" in errors and "--pixel-size-nm" in errors
