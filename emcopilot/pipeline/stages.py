"""The stages of :mod:`emcopilot.pipeline.loop`, declared once (:data:`PIPELINE`).

Every stage reads what earlier stages wrote (so a resumed run and a fresh run
take identical paths) and writes its own outputs atomically. The ``metrics``
stage is in :mod:`.scoring`; what a finished run writes at the top of its
folder is in :mod:`.outputs`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import EmcopilotError, InputError
from ..core.interfaces import Instances, Micrograph
from .models import save_model
from .rundir import RunDirectory
from ..core.files import atomic_path, read_json, write_json
from .scoring import load_metrics, metrics_stage

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run returns: its folder, the micrographs, their instances, the particle table and statistics."""
    out: Path
    micrographs: list[Micrograph]
    instances: list[Instances]
    table: Any
    statistics: dict[str, Any]
    errors: list[tuple[str, str]]
    timings: dict[str, float] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)


#: Round r > 1 keeps a predicted object as a prior when its score is at least this (see emcopilot.pipeline.loop).
CONFIDENT_SCORE = 0.5


def _save_instances(path: Path, instances: Instances) -> None:
    arrays = {"labels": instances.labels if instances.labels is not None else np.zeros((0, 0), np.int32)}
    if instances.points is not None:
        arrays["points"] = instances.points
    if instances.scores is not None:
        arrays["scores"] = np.asarray(instances.scores, float)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:  # nothing left behind on failure
        np.savez_compressed(handle, **arrays)
    write_json(path.with_suffix(".json"), instances.metadata)


def _load_instances(path: Path) -> Instances:
    with np.load(path) as data:
        labels = data["labels"] if data["labels"].size else None
        points = data["points"] if "points" in data else None
        scores = data["scores"] if "scores" in data else None
    return Instances(labels=labels, points=points, scores=scores, metadata=read_json(path.with_suffix(".json")))


def _progress(items, description: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(items, desc=description, disable=not enabled, leave=False)


def confident(instances: Instances, shape: tuple[int, int], threshold: float) -> Instances:
    """Objects with score >= threshold that do not touch the frame edge (next round's priors)."""
    if instances.labels is None:
        keep = np.ones(len(instances.points), bool) if instances.scores is None else np.asarray(instances.scores) >= threshold
        return Instances(points=instances.points[keep], metadata=dict(instances.metadata, confident_of=int(len(keep))))
    labels = instances.labels.copy()
    ids = np.unique(labels[labels > 0])
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    scores = instances.scores
    drop = set(edge[edge > 0].tolist())
    if scores is not None and len(scores) >= ids.max(initial=0):
        drop |= {int(i) for i in ids if scores[int(i) - 1] < threshold}
    if drop:
        labels[np.isin(labels, list(drop))] = 0
    points = None
    if instances.points is not None:
        rows = np.clip(instances.points[:, 0].round().astype(int), 0, shape[0] - 1)
        cols = np.clip(instances.points[:, 1].round().astype(int), 0, shape[1] - 1)
        points = instances.points[labels[rows, cols] > 0]
    return Instances(labels=labels, points=points,
                     metadata=dict(instances.metadata, confident_of=int(len(ids)), kept=int(len(ids) - len(drop))))


class LoopState:
    """What the loop knows between stages of one run."""

    def __init__(self, loop, run: RunDirectory, micrographs: list[Micrograph]):
        self.loop, self.run, self.micrographs = loop, run, micrographs
        # each micrograph's number in the stage folders' file names: its place among the micrographs
        # read, kept when a micrograph the prior extractor failed on leaves the run
        self.numbers = list(range(len(micrographs)))
        self.sample = loop.recipe.sample
        self.working_px = float(self.sample.working_pixel_size_nm)
        self.priors: list[Instances] = []
        self._working: list[Micrograph] | None = None  # resampled real images, per calibration
        self.predictions: list[Instances] = []
        self.history: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------ round

    def run_round(self, round_index: int, base: dict[str, Any], until: str | None = None) -> None:
        """Run one round: every stage of :data:`PIPELINE` in order (up to and including ``until``), each
        keyed by exactly what its outputs depend on (the keys of the stages it needs and its own settings)."""
        for stage in PIPELINE:
            needs = {need: self.loop.keys[f"{need}@{round_index}"] for need in stage.needs}
            depends = {**needs, **stage.settings(self, round_index, base)}
            self.loop.stage(self.run, stage.name, round_index, depends, stage.compute(self, round_index))
            if stage.load is not None:
                stage.load(self, round_index)
            if stage.name == until:
                return

    # what each stage's outputs depend on besides the stages it needs (see PIPELINE)

    def _slot(self, slot: str, base: dict[str, Any]) -> dict[str, Any]:
        return {"choice": self.loop.recipe.as_dict()[slot], "plugin": base["plugins"][slot]}

    def _budget(self, steps: str) -> dict[str, Any]:
        return {k: self.loop.profile[k] for k in (steps, "batch_size", "crop_px", "max_minutes")}

    def _extract_settings(self, round_index: int, base: dict[str, Any]) -> dict[str, Any]:
        if round_index > 1:  # the previous round's confident predictions are this round's priors
            return {"segment": self.loop.keys[f"segment@{round_index - 1}"]}
        depends = {"inputs": base["inputs"], "sample": self.loop.recipe.as_dict()["sample"],
                   "pixel_size_override": base["pixel_size_override"],
                   "prior_extractor": self._slot("prior_extractor", base)}
        if "corrections" in base:
            depends["corrections"] = base["corrections"]
        return depends

    def _extract_compute(self, round_index: int):
        return self.extract if round_index == 1 else self.priors_from_predictions(round_index)

    def _segmenter_settings(self, round_index: int, base: dict[str, Any]) -> dict[str, Any]:
        # settings the segmenter reads only when it predicts re-segment with the trained model kept
        learning, _ = self.segmenter_settings()
        return {"segmenter": {**self._slot("segmenter", base), "choice": learning},
                "budget": self._budget("segmenter_steps"), "seed": self.loop.seed}

    def stage_dir(self, name: str, round_index: int) -> Path:
        return self.run.stage_dir(f"{name}@{round_index}")

    def file(self, directory: Path, index: int) -> Path:
        """The file of the ``index``-th micrograph of the run in a stage folder."""
        return directory / f"{self.numbers[index]:05d}.npz"

    # ------------------------------------------------------------ extract

    def extract(self, directory: Path) -> None:
        """The priors of every micrograph; one the extractor fails on (an :class:`EmcopilotError`) is
        recorded in ``failed.json`` and leaves the run (:meth:`load_priors`), the others go on."""
        import time

        from .corrections import read_correction
        extractor = None  # built only for micrographs without a hand correction
        calibration, failed, seconds = {}, {}, {}
        for index, micrograph in enumerate(_progress(self.micrographs, "extract priors", self.loop.progress)):
            started = time.perf_counter()
            number = self.numbers[index]
            if number in self.loop.corrections:
                instances = read_correction(self.loop.corrections[number], micrograph, self.sample.kind)
            else:
                extractor = extractor or self.loop.component("prior_extractor")
                try:
                    instances = extractor.extract(micrograph)
                except EmcopilotError as error:
                    message = str(error)  # without the name it usually starts with: errors.csv names it
                    message = message[len(micrograph.name) + 2:] if message.startswith(f"{micrograph.name}: ") else message
                    log.warning("%s: the prior extractor failed: %s", micrograph.name, message)
                    failed[str(number)] = message
                    continue
            _save_instances(self.file(directory, index), instances)
            calibration[micrograph.name] = self._calibration_of(micrograph, instances)
            seconds[str(number)] = round(time.perf_counter() - started, 3)
        write_json(directory / "calibration.json", calibration)
        write_json(directory / "failed.json", failed)
        write_json(directory / "seconds.json", seconds)

    def _calibration_of(self, micrograph: Micrograph, instances: Instances) -> dict[str, Any]:
        """The micrograph's pixel size by the one rule of every command, and its scale bar if it has one."""
        from ..specimen.pixel_size import resolve_pixel_size
        entry = resolve_pixel_size(micrograph, self.sample, instances)
        if "scale_bar" in micrograph.metadata:  # found in the pixels (and painted over), read or not
            entry["scale_bar"] = micrograph.metadata["scale_bar"]
        return entry

    def priors_from_predictions(self, round_index: int):
        def compute(directory: Path) -> None:
            source = self.stage_dir("segment", round_index - 1)
            calibration = read_json(self.stage_dir("extract", round_index - 1) / "calibration.json")
            previous = self.stage_dir("extract", round_index - 1)
            for index, micrograph in enumerate(self.micrographs):
                if self.numbers[index] in self.loop.corrections:  # what a person drew stays its prior
                    _save_instances(self.file(directory, index), _load_instances(self.file(previous, index)))
                    continue
                kept = confident(_load_instances(self.file(source, index)), micrograph.shape, CONFIDENT_SCORE)
                if kept.count == 0:  # nothing confident: this image keeps its earlier priors
                    log.info("%s: no confident prediction in round %d; keeping its earlier priors",
                             micrograph.name, round_index - 1)
                    kept = _load_instances(self.file(previous, index))
                _save_instances(self.file(directory, index), kept)
            write_json(directory / "calibration.json", calibration)
        return compute

    def load_priors(self, round_index: int) -> None:
        directory = self.stage_dir("extract", round_index)
        failed = read_json(directory / "failed.json") if (directory / "failed.json").exists() else {}
        rows = [(m.name, f"{m.name}: the prior extractor failed: {failed[str(number)]}")
                for m, number in zip(self.micrographs, self.numbers) if str(number) in failed]
        if rows:  # those micrographs leave the run; the run goes on with the others
            kept = [i for i, number in enumerate(self.numbers) if str(number) not in failed]
            self.micrographs = [self.micrographs[i] for i in kept]
            self.numbers = [self.numbers[i] for i in kept]
            self.loop.add_errors(rows)
        if not self.micrographs:
            raise EmcopilotError(f"the prior extractor failed on every micrograph ({rows[0][1]}); "
                                 f"see {self.run.root / 'errors.csv'}")
        calibration = read_json(directory / "calibration.json")
        self.loop.calibration = calibration
        from ..specimen.pixel_size import apply_pixel_size
        for micrograph in self.micrographs:  # an estimate not credible is a working scale only: sizes in px
            apply_pixel_size(micrograph, calibration[micrograph.name])
        self._working = None
        self.priors = [_load_instances(self.file(directory, i)) for i in range(len(self.micrographs))]

    def extract_seconds(self) -> list[float | None]:
        """Per micrograph, the seconds its prior took in round 1 (``None`` from a stage folder of an earlier
        version, which did not record them)."""
        path = self.stage_dir("extract", 1) / "seconds.json"
        seconds = read_json(path) if path.exists() else {}
        return [seconds.get(str(number)) for number in self.numbers]

    # ------------------------------------------------------------ fits

    def scalings(self):
        from ..specimen.scale import plan_scaling
        return [plan_scaling(m.shape, m.pixel_size_nm, self.working_px, m.name) for m in self.micrographs]

    def working_images(self) -> list[Micrograph]:
        """The real micrographs resampled to the recipe's working pixel size (once per round)."""
        if self._working is None:
            self._working = self._resample_to_working()
        return self._working

    def _resample_to_working(self) -> list[Micrograph]:
        from ..specimen.scale import to_working
        return [Micrograph(to_working(m.data, scaling), pixel_size_nm=scaling.grid_pixel_size_nm, modality=m.modality,
                           source=m.source, name=m.name, metadata=m.metadata)
                for m, scaling in zip(self.micrographs, self.scalings())]

    def working_labels(self) -> list[np.ndarray]:
        """The priors' label images on the working grid (points become their disks)."""
        from ..specimen.scale import to_working_labels
        return [to_working_labels(prior.labels, scaling) for prior, scaling in zip(self.priors, self.scalings())]

    def fit_prior(self, round_index: int):
        def compute(directory: Path) -> None:
            from ..specimen.morphology import MorphologyPrior
            prior = MorphologyPrior.fit(self.priors, self.micrographs, sample=self.sample)
            (directory / "prior.json").write_text(prior.to_json())
        return compute

    def fit_adapter(self, round_index: int):
        def compute(directory: Path) -> None:
            from ..specimen.scale import MIN_WORKING_SIDE_PX, too_small_message
            adapter = self.loop.component("physics_adapter")
            images = self.working_images()
            # an image whose scale was estimated can turn out too small to fit imaging conditions on;
            # it is still measured, and the conditions come from the others
            usable = [m for m in images if min(m.shape) >= MIN_WORKING_SIDE_PX]
            for original, working in zip(self.micrographs, images):
                if min(working.shape) < MIN_WORKING_SIDE_PX:
                    message = too_small_message(original.name, original.shape, original.pixel_size_nm or self.working_px,
                                                self.working_px, self.loop.recipe.name)
                    if usable:
                        log.warning("%s; imaging conditions are fitted on the other images", message)
                    else:
                        raise InputError(message)
            write_json(directory / "adapter.json", adapter.fit(usable))
        return compute

    def fit_generator(self, round_index: int):
        def compute(directory: Path) -> None:
            labels, images = self.working_labels(), self.working_images()
            pairs = [(label, image) for label, image in zip(labels, images) if label is not None and label.any()]
            if not pairs:
                raise EmcopilotError("the prior extractor found no object in any micrograph, so there is nothing "
                                     "to learn contrast from; check the recipe's sample (modality, diameter_nm) "
                                     "or give --pixel-size-nm")
            if len(pairs) < len(labels):
                log.warning("%d of %d micrographs have no prior objects and are left out of generator training",
                            len(labels) - len(pairs), len(labels))
            generator = self.loop.component("generator")
            history = generator.fit([p[0] for p in pairs], [p[1] for p in pairs], directory / "work",
                                    budget=self.loop.budget("generator_steps"))
            generator.save(directory / "model")
            write_json(directory / "history.json", history or {})
        return compute

    # ------------------------------------------------------------ synthesize

    def render(self, round_index: int, count: int, rng: np.random.Generator,
               description: str = "synthesize") -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """``count`` synthetic micrographs of the round's prior, generator and physics: images, labels, points."""
        from ..specimen.morphology import MorphologyPrior
        prior = MorphologyPrior.from_json((self.stage_dir("prior", round_index) / "prior.json").read_text())
        adapter = self.loop.component("physics_adapter")
        adapter.restore(read_json(self.stage_dir("adapter", round_index) / "adapter.json"))
        generator = self.loop.component("generator")
        generator.load(self.stage_dir("generator", round_index) / "model")
        side = int(self.loop.profile["image_px"])
        images, labels, points = [], [], []
        for start in _progress(range(0, count, 8), description, self.loop.progress):
            layouts = [prior.sample((side, side), self.working_px, rng) for _ in range(min(8, count - start))]
            for layout, clean in zip(layouts, generator.generate(layouts, rng)):
                images.append(adapter.apply(clean, self.working_px, rng, layout=layout).astype(np.float32))
                truth = layout.instances()
                labels.append(truth.labels)
                points.append(truth.points if truth.points is not None else np.zeros((0, 2)))
        return images, labels, points

    def synthesize(self, round_index: int):
        def compute(directory: Path) -> None:
            count = int(self.loop.profile["synthetic_images"])
            images, labels, points = self.render(round_index, count, np.random.default_rng([self.loop.seed, round_index, 1]))
            tmp = directory / "synthetic.part.npz"
            np.savez_compressed(tmp, images=np.stack(images), labels=np.stack(labels),
                                n_points=np.array([len(p) for p in points]), points=np.concatenate(points))
            tmp.replace(directory / "synthetic.npz")
        return compute

    def load_synthetic(self, round_index: int) -> tuple[np.ndarray, list[Instances]]:
        with np.load(self.stage_dir("synthesize", round_index) / "synthetic.npz") as data:
            images, labels = data["images"], data["labels"]
            splits = np.cumsum(data["n_points"])[:-1]
            points = np.split(data["points"], splits) if len(data["points"]) else [None] * len(images)
        atomistic = self.sample.kind != "particles"
        return images, [Instances(labels=l, points=p if atomistic else None) for l, p in zip(labels, points)]

    # ------------------------------------------------------------ segmenter

    def segmenter_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The recipe's segmenter choice without its inference-only settings (what training depends on),
        and those settings (what segmenting depends on besides the trained model)."""
        choice = self.loop.recipe.segmenter
        schema = self.loop.registry.get("segmenter", choice.plugin).params
        inference = {name for name, param in schema.items() if param.inference_only}
        training = {"plugin": choice.plugin,
                    "params": {k: v for k, v in choice.params.items() if k not in inference}}
        return training, {k: v for k, v in choice.params.items() if k in inference}

    def fit_segmenter(self, round_index: int):
        def compute(directory: Path) -> None:
            images, truth = self.load_synthetic(round_index)
            segmenter = self.loop.component("segmenter")
            budget = self.loop.budget("segmenter_steps")
            history = segmenter.fit(list(images), truth, directory / "work", budget=budget) or {}
            if callable(getattr(segmenter, "adapt", None)):  # learns from the real micrographs, unlabelled
                real = [m.data for m in self.working_images()]
                adapted = segmenter.adapt(real, directory / "work", budget=budget)
                if adapted:
                    history = {**history, "adapt": adapted}
            choice = self.loop.recipe.segmenter
            save_model(segmenter, directory / "model", plugin=choice.plugin, params=choice.params,
                       sample=self.loop.recipe.sample, registry=self.loop.registry)
            write_json(directory / "history.json", history or {})
        return compute

    def segment(self, round_index: int):
        def compute(directory: Path) -> None:
            segmenter = self.loop.component("segmenter")
            segmenter.load(self.stage_dir("segmenter", round_index) / "model")
            for index, micrograph in enumerate(_progress(self.micrographs, "segment", self.loop.progress)):
                _save_instances(self.file(directory, index), segmenter.predict(micrograph))
        return compute

    def load_predictions(self, round_index: int) -> None:
        directory = self.stage_dir("segment", round_index)
        self.predictions = [_load_instances(self.file(directory, i)) for i in range(len(self.micrographs))]
        self.final_round = round_index

@dataclass(frozen=True)
class Stage:
    """One stage of the loop, declared: the runner (:meth:`LoopState.run_round`) derives its key,
    its place in the order, what ``--force`` redoes and what its error message names from this.

    ``needs``: the stages of the same round whose outputs it reads (their keys enter its key);
    ``slots``: the recipe slots whose plugins it calls; ``settings(state, round, base)``: everything
    else its outputs depend on; ``compute(state, round)``: the function that fills its folder;
    ``load(state, round)``: reads its outputs into the state for the stages after it.
    """
    name: str
    needs: tuple[str, ...]
    slots: tuple[str, ...]
    settings: Callable[[LoopState, int, dict[str, Any]], dict[str, Any]]
    compute: Callable[[LoopState, int], Callable[[Path], None]]
    load: Callable[[LoopState, int], None] | None = None


#: The stages of one round, in order.
PIPELINE: tuple[Stage, ...] = (
    Stage("extract", (), ("prior_extractor",), LoopState._extract_settings, LoopState._extract_compute,
          LoopState.load_priors),
    Stage("prior", ("extract",), (), lambda state, r, base: {}, LoopState.fit_prior),
    Stage("adapter", ("extract",), ("physics_adapter",),
          lambda state, r, base: {"adapter": state._slot("physics_adapter", base)}, LoopState.fit_adapter),
    Stage("generator", ("extract",), ("generator",),
          lambda state, r, base: {"generator": state._slot("generator", base),
                                  "budget": state._budget("generator_steps"), "seed": state.loop.seed},
          LoopState.fit_generator),
    Stage("synthesize", ("prior", "adapter", "generator"), ("generator", "physics_adapter"),
          lambda state, r, base: {"count": state.loop.profile["synthetic_images"],
                                  "image_px": state.loop.profile["image_px"], "seed": state.loop.seed},
          LoopState.synthesize),
    Stage("segmenter", ("synthesize",), ("segmenter",), LoopState._segmenter_settings, LoopState.fit_segmenter),
    Stage("segment", ("segmenter",), ("segmenter",),
          lambda state, r, base: {"predicting": state.segmenter_settings()[1]}, LoopState.segment,
          LoopState.load_predictions),
    Stage("metrics", ("segment",), ("generator", "physics_adapter", "segmenter"),
          lambda state, r, base: {"metrics": state.loop.recipe.as_dict()["metrics"], "seed": state.loop.seed},
          metrics_stage, load_metrics),
)
#: Stage names in order (``--force`` takes one) and the slots each calls (named in error messages).
STAGES = [stage.name for stage in PIPELINE]
STAGE_SLOTS = {stage.name: stage.slots for stage in PIPELINE}
