"""What a run leaves at the top of its folder once its stages are done (docs/run-folder.md).

``run``: the trained segmenter's particle table and masks, the size statistics,
the model (its manifest rewritten with the settings the run segmented with) and
the report. ``extract`` (the runner stopped after the ``prior`` stage): the
priors' particle table and masks and the morphology prior. Both read the
state of the loop (:class:`~emcopilot.pipeline.stages.LoopState`) and write
through the atomic writers.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from ..core.files import read_json, write_json, write_text
from ..core.interfaces import Micrograph
from .models import read_manifest, write_manifest
from .stages import LoopState, RunResult


def write_extract_outputs(state: LoopState) -> RunResult:
    """The priors' particle table and masks, and the morphology prior as ``prior.json``."""
    from ..analysis.measure import write_outputs
    out = state.run.root
    table = write_outputs(out, state.micrographs, state.priors)
    write_text(out / "prior.json", (state.stage_dir("prior", 1) / "prior.json").read_text())
    return RunResult(out=out, micrographs=state.micrographs, instances=state.priors, table=table,
                     statistics={}, errors=[])


def write_run_outputs(state: LoopState) -> RunResult:
    """The last round's particle table and masks, ``statistics.json`` and ``model/``."""
    from ..analysis.measure import write_outputs
    from ..analysis.statistics import size_statistics
    loop, out = state.loop, state.run.root
    if (out / "prior.json").exists():  # left by an extract into this folder; not among a run's outputs
        (out / "prior.json").unlink()
    table = write_outputs(out, state.micrographs, state.predictions)
    images = {m.name: _image_info(m, loop.calibration.get(m.name, {})) for m in state.micrographs}
    statistics = size_statistics(table, images, seed=loop.seed)
    write_json(out / "statistics.json", statistics)
    _copy_tree(state.stage_dir("segmenter", state.final_round) / "model", out / "model")
    # the trained model with the settings this run segmented with (inference-only ones may have
    # changed since it was trained)
    choice = loop.recipe.segmenter
    trained = read_manifest(out / "model")
    write_manifest(out / "model", plugin=choice.plugin, params=choice.params, sample=loop.recipe.sample,
                   registry=loop.registry, working_pixel_size_nm=trained.get("working_pixel_size_nm"))
    write_json(out / "model" / "recipe.json", loop.recipe.as_dict())
    return RunResult(out=out, micrographs=state.micrographs, instances=state.predictions, table=table,
                     statistics=statistics, errors=[])


def write_run_report(state: LoopState, result: RunResult, title: str, notes=()) -> None:
    """``report.html`` (and ``overlays/``) of a finished run."""
    from .report import run_warnings, write_report
    images, _ = state.load_synthetic(state.final_round)
    histories = {stage: read_json(state.stage_dir(stage, state.final_round) / "history.json")
                 for stage in ("generator", "segmenter")}
    warnings = run_warnings(histories=histories, statistics=result.statistics,
                            images=result.run_info.get("images") or {}, diameter_nm=state.sample.diameter_nm,
                            planned_steps={stage: int(state.loop.profile[f"{stage}_steps"])
                                           for stage in histories}, kind=state.sample.kind)
    write_report(state.run.root / "report.html", title=title, micrographs=state.micrographs,
                 instances=state.predictions, table=result.table, statistics=result.statistics,
                 run_info=result.run_info, synthetic=list(images[:4]), histories=histories,
                 metrics=result.run_info.get("metrics"), notes=notes, warnings=warnings)


def _image_info(micrograph: Micrograph, calibration: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`~emcopilot.analysis.statistics.size_statistics` needs of one image: its shape, the pixel size
    its nm are reported with (none when the estimate is not credible) and that pixel size's uncertainty."""
    from ..specimen.pixel_size import reported_pixel_size_nm
    return {"shape": micrograph.shape, "pixel_size_nm": reported_pixel_size_nm(micrograph),
            "pixel_size_log_sd": (calibration.get("log_sd") or {}).get("total", 0.0)}


def _copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
