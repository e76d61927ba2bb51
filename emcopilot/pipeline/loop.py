"""The closed loop, stage by stage, resumable.

::

    read ─► extract priors ─► fit morphology prior ─► fit physics adapter ─► fit generator
        ─► synthesize (sample layouts, generate, adapt) ─► train segmenter
        ─► segment the real micrographs ─► measure ─► (next round) ─► report

Each stage writes into ``<out>/stages/<stage>@<round>/`` with a ``key.json``
holding the hash of everything it depends on (input SHA-256s, the resolved
recipe, the profile, plugin versions and the previous stages' keys). Re-running
with the same ``--out`` reuses stages whose key matches; ``force`` redoes a
stage and everything after it.

Round ``r > 1`` takes the segmenter's confident predictions on the real
micrographs from round ``r − 1`` as its priors instead of the prior
extractor's output (a micrograph with hand-corrected priors, ``priors_from``
and :mod:`emcopilot.pipeline.corrections`, keeps them in every round). Confidence: an object is kept when its score (the
segmenter's mean foreground probability over the object, ``Instances.scores``)
is at least ``emcopilot.pipeline.stages.CONFIDENT_SCORE`` (0.5) and it does not touch the frame edge (a cut
object would teach wrong shapes and sizes).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from . import outputs, stages
from ..core.errors import EmcopilotError, InputError, ReadError
from ..core.interfaces import Micrograph, TrainBudget
from ..io.inputs import gather
from ..core.plugins import get_registry
from ..core.recipe import PROFILE_SCHEMA, Recipe
from .rundir import RunDirectory, write_run_json
from ..core.files import digest, write_errors
from .stages import STAGE_SLOTS, STAGES, RunResult

if TYPE_CHECKING:
    from ..io.calibration import CalibrationTable

log = logging.getLogger(__name__)



class Loop:
    """One run of a recipe on a set of micrographs."""

    def __init__(self, recipe: Recipe, inputs: Any, out: Path, *,
                 profile: str | None = None, pixel_size_nm: float | None = None,
                 force: str | None = None, device: str = "auto", progress: bool = True,
                 max_minutes: float | None = None, calibration: "CalibrationTable | None" = None,
                 recursive: bool = False, priors_from: str | Path | None = None,
                 scale_bar_nm: float | None = None):
        if force is not None and force not in STAGES:
            raise EmcopilotError(f"--force: unknown stage {force!r}; stages are {', '.join(STAGES)}")
        self.recipe = recipe
        self.inputs = inputs  # anything emcopilot.io.inputs.gather takes: paths, folders, arrays, signals
        self.recursive = recursive
        self.out = Path(out)
        self.profile_name = profile or recipe.train["profile"]
        self.profile = dict(recipe.profile(self.profile_name))
        if max_minutes is not None:  # the wall-time budget of each training stage, instead of the profile's;
            # the same rule as a recipe's train.profiles.*.max_minutes
            value, problem = PROFILE_SCHEMA["max_minutes"].check(max_minutes)
            if problem:
                raise EmcopilotError(f"max_minutes (the training budget in minutes) {problem}")
            self.profile["max_minutes"] = value
        self.pixel_size_override = pixel_size_nm
        self.calibration_table = calibration
        self.scale_bar_nm = scale_bar_nm
        self.force = force
        self.device = device
        self.progress = progress
        self.seed = int(recipe.train["seed"])
        self.registry = get_registry()
        self.timings: dict[str, float] = {}
        self.keys: dict[str, str] = {}
        self.reused: list[str] = []
        self.calibration: dict[str, dict[str, Any]] = {}
        self.priors_from = Path(priors_from) if priors_from is not None else None
        self.corrections: dict[int, Path] = {}  # micrograph index -> its hand-corrected labels
        self.priors_record: dict[str, Any] = {}
        self.errors: list[tuple[str, str]] = []  # (input, why it is not in the results)

    # ----------------------------------------------------------------- helpers

    def budget(self, steps_key: str) -> TrainBudget:
        return TrainBudget(steps=int(self.profile[steps_key]), batch_size=int(self.profile["batch_size"]),
                           crop_px=int(self.profile["crop_px"]), seed=self.seed,
                           max_minutes=self.profile.get("max_minutes"), device=self.device,
                           progress=self.progress)

    def component(self, slot: str) -> Any:
        return getattr(self.recipe, slot).create(self.recipe.sample, self.registry)

    def plugin_versions(self) -> dict[str, Any]:
        out = {}
        for slot in ("prior_extractor", "generator", "physics_adapter", "segmenter"):
            choice = getattr(self.recipe, slot)
            origin = self.registry.get(slot, choice.plugin).origin
            out[slot] = {"name": choice.plugin, "distribution": origin.distribution, "version": origin.version}
        return out

    def describe_plugins(self, stage: str) -> str:
        """The plugins a stage calls, with their origin, for error messages."""
        slots = STAGE_SLOTS.get(stage, ())
        versions = self.plugin_versions()
        return ", ".join(f"{slot} {versions[slot]['name']!r} from {versions[slot]['distribution'] or '?'} "
                         f"{versions[slot]['version'] or ''}".rstrip() for slot in slots) or "no plugin"

    def stage(self, run: RunDirectory, name: str, round_index: int, depends: dict[str, Any], compute) -> Path:
        stage_id = f"{name}@{round_index}"
        key = digest({"stage": stage_id, "emcopilot": __version__, **depends})
        started = time.perf_counter()
        force = self.force is not None and STAGES.index(name) >= STAGES.index(self.force)
        try:
            directory, reused = run.run_stage(stage_id, key, compute, force=force)
        except Exception as error:  # name the stage and its plugins; finished stages stay on disk
            raise EmcopilotError(f"stage {stage_id} failed ({self.describe_plugins(name)}): "
                                 f"{type(error).__name__}: {error}. Completed stages are kept in "
                                 f"{run.root / 'stages'}; re-run the same command to resume.") from error
        self.keys[stage_id] = run.output_key(stage_id)  # what later stages depend on
        if reused:
            self.reused.append(stage_id)
        self.timings[stage_id] = round(time.perf_counter() - started, 3)
        log.info("%s %s (%.1f s)", "reused" if reused else "done", stage_id, self.timings[stage_id])
        return directory

    # ----------------------------------------------------------------- inputs

    def read_inputs(self, run: RunDirectory) -> tuple[list[Micrograph], list[tuple[str, str]], list[dict[str, Any]]]:
        """The micrographs, the inputs that could not be read, and a ``run.json`` record of each input read."""
        micrographs, errors, records = [], [], []
        for item in gather(self.inputs, recursive=self.recursive):
            try:
                frames = item.read(self.pixel_size_override, self.calibration_table, self.scale_bar_nm)
                records.append(item.record())
            except ReadError as error:
                log.warning("%s", error)
                errors.append((item.label, str(error)))
                continue
            for frame in frames:
                problem = self._too_small(frame)
                if problem:
                    log.warning("%s", problem)
                    errors.append((frame.name, problem))
                else:
                    micrographs.append(frame)
        write_errors(run.root / "errors.csv", errors)
        if not micrographs:
            only = f": {errors[0][1]}" if len(errors) == 1 else ""
            raise EmcopilotError(f"none of the {len(errors)} inputs could be used{only}; see {run.root / 'errors.csv'}")
        return micrographs, errors, records

    def _too_small(self, micrograph: Micrograph) -> str | None:
        """Why a calibrated micrograph is too small to learn from at the recipe's working scale, or why an
        uncalibrated one has no scale to estimate; else ``None``."""
        from ..specimen.scale import MIN_WORKING_SIDE_PX, too_small_message, working_side_px
        working = float(self.recipe.sample.working_pixel_size_nm)
        if micrograph.pixel_size_nm is None:
            return self._no_scale(micrograph)
        if working_side_px(micrograph.shape, micrograph.pixel_size_nm, working) >= MIN_WORKING_SIDE_PX:
            return None
        return too_small_message(micrograph.name, micrograph.shape, micrograph.pixel_size_nm, working,
                                 self.recipe.name)

    def _no_scale(self, micrograph: Micrograph) -> str | None:
        """Why no pixel size can be estimated for an uncalibrated micrograph (nothing stands out from its
        texture), or ``None``; the estimate is kept for the prior extractor, which asks for it again."""
        from ..specimen.pixel_size import estimate_pixel_size
        try:
            estimate_pixel_size(micrograph, self.recipe.sample)
        except InputError as error:
            return (f"{micrograph.name}: {error}; give its pixel size with --pixel-size-nm or "
                    f"--calibration table.csv")
        return None

    # ----------------------------------------------------------------- run

    def run(self) -> RunResult:
        """Every stage of every round: the particle table of the trained segmenter, statistics,
        the model and the report."""
        return self._execute(until=None)

    def extract(self) -> RunResult:
        """``emcopilot extract``: the same runner stopped after the first round's ``prior`` stage. The
        priors' particle table and masks and the morphology prior (``prior.json``) are the outputs; a
        later ``run`` of the same recipe on the same inputs into the same folder reuses both stages."""
        return self._execute(until="prior")

    def _execute(self, until: str | None) -> RunResult:
        from ..analysis.measure import mask_file_name
        from .rundir import remove_stale_outputs

        command = "run" if until is None else "extract"
        started = time.perf_counter()
        with RunDirectory(self.out) as run:
            if until is not None:
                refuse_later_stages(run.root, until, command)
            micrographs, self.errors, records = self.read_inputs(run)
            # what they hold, not where they are
            contents = sorted((Path(r["path"]).name if r["path"] else f"{r['name']} ({r['kind']})", r["sha256"])
                              for r in records)
            given = {m.name: m.pixel_size_nm for m in micrographs
                     if m.metadata.get("pixel_size_source") in ("calibration table", "scale bar")}
            override = [self.pixel_size_override, given] if given else self.pixel_size_override
            base = {"inputs": contents, "pixel_size_override": override,
                    "plugins": self.plugin_versions()}
            from . import corrections
            if self.priors_from is not None:
                self.corrections = corrections.correction_files(self.priors_from, micrographs)
            self.priors_record = corrections.record(self.priors_from, self.corrections, micrographs)
            if self.corrections:  # the priors of round 1 are what the person drew
                base["corrections"] = sorted((name, entry["sha256"])
                                             for name, entry in self.priors_record["corrected"].items())
            state = stages.LoopState(self, run, micrographs)
            rounds = 1 if until is not None else int(self.recipe.train["rounds"])
            for round_index in range(1, rounds + 1):
                state.run_round(round_index, base, until)
            result = outputs.write_run_outputs(state) if until is None else outputs.write_extract_outputs(state)
            result.errors = list(self.errors)
            remove_stale_outputs(run.root, [mask_file_name(m.name) for m in result.micrographs])
            self.timings["total"] = round(time.perf_counter() - started, 3)
            result.timings = dict(self.timings)
            if until is None:
                result.run_info = self.write_run_json(run, result, records, state.metrics)
                outputs.write_run_report(state, result, title=f"emcopilot run: {self.recipe.name}",
                                         notes=self.notes(self.errors))
            else:
                result.run_info = self.write_extract_json(run, result, records, state)
            return result

    def add_errors(self, errors: list[tuple[str, str]]) -> None:
        """Micrographs that left the run after it started (the prior extractor failed on them), in
        ``errors.csv`` beside the inputs that could not be read."""
        self.errors = [*self.errors, *errors]
        write_errors(self.out / "errors.csv", self.errors)

    def notes(self, errors) -> list[str]:
        notes = [f"Recipe {self.recipe.name!r}, profile {self.profile_name!r}, "
                 f"{self.recipe.train['rounds']} round(s), seed {self.seed}."]
        if errors:
            notes.append(f"{len(errors)} input(s) could not be read or measured; see errors.csv.")
        if self.corrections:
            notes.append(f"Not label-free: the priors of {len(self.corrections)} micrograph(s) are hand-corrected "
                         f"label images from {self.priors_from} (run.json: priors).")
        return notes

    def write_run_json(self, run: RunDirectory, result: RunResult, records: list[dict[str, Any]],
                       metrics: dict[str, Any]) -> dict[str, Any]:
        from ..specimen.pixel_size import image_record
        images = {m.name: image_record(m, objects=instances.count)
                  for m, instances in zip(result.micrographs, result.instances)}
        return write_run_json(
            run.root, "run", recipe=self.recipe.as_dict(), plugins=self.plugin_versions(), inputs=records,
            images=images, errors=result.errors, timings_s=self.timings, seeds={"train": self.seed},
            profile={"name": self.profile_name, **self.profile}, priors=self.priors_record,
            stage_keys=self.keys, stages_reused=self.reused,
            statistics=result.statistics.get("pooled", {}),
            metrics=metrics)  # the label-free scores of the last round

    def write_extract_json(self, run: RunDirectory, result: RunResult, records: list[dict[str, Any]],
                           state: "stages.LoopState") -> dict[str, Any]:
        from ..specimen.pixel_size import image_record
        images = {}
        for micrograph, instances, seconds in zip(result.micrographs, result.instances, state.extract_seconds()):
            report = {k: v for k, v in instances.metadata.items() if isinstance(v, (int, float, str))}
            images[micrograph.name] = image_record(micrograph, objects=instances.count, seconds=seconds,
                                                   extractor_report=report)
        plugin = self.plugin_versions()["prior_extractor"]
        return write_run_json(run.root, "extract", recipe=self.recipe.as_dict(), plugins={"prior_extractor": plugin},
                              inputs=records, images=images, errors=result.errors, timings_s=self.timings)


def refuse_later_stages(out: Path, until: str, command: str) -> None:
    """``extract`` does not write into the folder of a run that went past its stages (it would mix the
    priors' table with the run's)."""
    done = {path.name.split("@")[0] for path in (Path(out) / "stages").glob("*@*") if path.is_dir()}
    later = sorted(done - set(STAGES[:STAGES.index(until) + 1]), key=STAGES.index)
    if later:
        raise EmcopilotError(f"--out {out} holds an emcopilot run (stages {', '.join(later)}); {command} would "
                             f"mix its outputs with the run's: choose another folder")
