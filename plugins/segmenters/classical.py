"""The ``classical`` segmenter: the ``classical`` prior extractor behind the segmenter interface.

It is the baseline the U-Net is compared with: no training (``fit`` returns
``{}``), and a model folder only records which extractor and params it uses.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emcopilot.core.errors import CheckpointError
from emcopilot.core.interfaces import Instances, Micrograph, TrainBudget
from emcopilot.core.plugins import get_registry
from emcopilot.core.recipe import Sample

CONFIG_NAME = "config.json"


class ClassicalSegmenter:
    def __init__(self, params: Mapping[str, Any], sample: Sample | None):
        self.params = dict(params)
        self.sample = sample
        self.extractor = get_registry().get("prior_extractor", "classical").create(
            self.params["extractor_params"], sample)

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[Instances], workdir: Path | None = None, *,
            budget: TrainBudget) -> dict[str, Any]:
        return {}

    def predict(self, micrograph: Micrograph) -> Instances:
        micrograph.require_finite()
        found = self.extractor.extract(micrograph)
        found.metadata.setdefault("segmenter", "classical")
        found.metadata.setdefault("pixel_size_nm", micrograph.pixel_size_nm)
        return found

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"segmenter": {"plugin": "classical", "params": self.params},
                  "sample": self.sample.as_dict() if self.sample else None}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def load(self, directory: Path) -> None:
        path = Path(directory) / CONFIG_NAME
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot read the segmenter config: {error}") from None
        plugin = (config.get("segmenter") or {}).get("plugin")
        if plugin != "classical":
            raise CheckpointError(f"{path}: model folder is for segmenter {plugin!r}, not 'classical'")
