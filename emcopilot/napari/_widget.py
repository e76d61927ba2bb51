"""The dock widgets: Measure (segment or run on the open images) and Correct and go round again.

Work runs in a napari worker thread (the viewer stays usable, the activity dock shows progress);
results come back as layers (:func:`emcopilot.napari.layers.result_layers`) and errors as a
notification naming what went wrong. ``busy`` is ``True`` while a job runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from . import layers as L


class _Worker(Container):
    """A container that runs one job at a time in a worker thread and adds its result's layers."""

    def __init__(self, viewer: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.viewer = viewer
        self.busy = False
        self.last_result = None
        self.last_error: BaseException | None = None
        self.status = Label(value="")

    def start(self, description: str, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        from napari.qt.threading import create_worker
        if self.busy:
            self.status.value = "busy: wait for the current job"
            return
        self.busy, self.last_error = True, None
        self.status.value = f"{description} ..."
        worker = create_worker(job, _progress={"desc": description})
        worker.returned.connect(lambda result: self._returned(result, done, description))
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        worker.start()

    def _returned(self, result: Any, done: Callable[[Any], None], description: str) -> None:
        self.last_result = result
        done(result)
        self.status.value = f"{description}: done"

    def _errored(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error
        self.last_error = error
        self.status.value = f"failed: {error}"
        show_error(f"emcopilot: {error}")

    def _finished(self) -> None:
        self.busy = False

    def add_result(self, result: Any) -> None:
        """Add the result's layers, except micrographs already open under the same name."""
        open_names = {layer.name for layer in self.viewer.layers}
        for data, options, kind in L.result_layers(result):
            if kind == "image" and options["name"] in open_names:
                continue
            name = options["name"]
            if name in open_names:  # a layer of an earlier result: replace it
                self.viewer.layers.remove(name)
            getattr(self.viewer, f"add_{kind}")(data, **options)


class MeasureWidget(_Worker):
    """Segment the chosen image with a model folder, or run a recipe on every open image."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, labels=True)
        from ..core.recipe import recipe_index
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.model = FileEdit(label="model folder", mode="d", value="")
        self.segment_button = PushButton(text="Segment image")
        self.recipe = ComboBox(label="recipe", choices=sorted(recipe_index()))
        self.run_button = PushButton(text="Run recipe on all images")
        self.out = FileEdit(label="output folder", mode="d", value="",
                            tooltip="empty: a temporary folder, removed when napari exits")
        self.extend([self.image, self.model, self.segment_button, self.recipe, self.run_button, self.out,
                     self.status])
        self.segment_button.changed.connect(self.segment)
        self.run_button.changed.connect(self.run)
        napari_viewer.layers.events.inserted.connect(lambda _: self.image.reset_choices())
        napari_viewer.layers.events.removed.connect(lambda _: self.image.reset_choices())

    def _image_layers(self, _widget=None) -> list:
        import napari
        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def _out(self) -> Path | None:
        text = str(self.out.value)
        return Path(text) if text not in ("", ".") else None

    def segment(self, *_: Any) -> None:
        from ..pipeline.api import segment
        layer, model = self.image.value, Path(str(self.model.value))
        if layer is None:
            self.status.value = "open an image first"
            return
        micrograph = L.layer_micrograph(layer)
        out = self._out()
        self.start(f"segment {layer.name}", lambda: segment(model, [micrograph], out=out, progress=False),
                   self.add_result)

    def run(self, *_: Any) -> None:
        from ..pipeline.api import run
        micrographs = [L.layer_micrograph(layer) for layer in self._image_layers()]
        if not micrographs:
            self.status.value = "open images first"
            return
        recipe, out = self.recipe.value, self._out()
        self.start(f"run {recipe} on {len(micrographs)} image(s)",
                   lambda: run(recipe, micrographs, out=out, progress=False), self.add_result)


class CorrectionsWidget(_Worker):
    """Save a run's edited label layers as corrections, and run its recipe again with them as priors."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, labels=True)
        self.run_folder = ComboBox(label="run", choices=self._runs)
        self.save_button = PushButton(text="Save corrections")
        self.round_button = PushButton(text="Save and run the next round")
        self.extend([self.run_folder, self.save_button, self.round_button, self.status])
        self.save_button.changed.connect(self.save)
        self.round_button.changed.connect(self.next_round)
        napari_viewer.layers.events.inserted.connect(lambda _: self.run_folder.reset_choices())
        napari_viewer.layers.events.removed.connect(lambda _: self.run_folder.reset_choices())

    def _runs(self, _widget=None) -> list[str]:
        found = []
        for layer in self.viewer.layers:
            tag = layer.metadata.get("emcopilot") or {}
            if tag.get("role") == "labels" and tag.get("out") not in found:
                found.append(tag["out"])
        return found

    def save(self, *_: Any) -> list[Path]:
        folder = self.run_folder.value
        if not folder:
            self.status.value = "open a run folder first"
            return []
        try:
            written = L.save_corrections(self.viewer.layers, folder)
        except Exception as error:  # nothing edited, a folder that cannot be written: say so, keep the viewer
            self._errored(error)
            return []
        self.status.value = f"saved {len(written)} corrected label image(s) to {Path(folder) / 'corrections'}"
        return written or [Path(folder) / "corrections"]

    def next_round(self, *_: Any) -> None:
        if not self.save():
            return
        folder = self.run_folder.value
        images = []
        for layer in self.viewer.layers:  # the open micrographs of this run, else its input files again
            tag = layer.metadata.get("emcopilot") or {}
            if tag.get("role") == "image" and tag.get("out") == folder:
                micrograph = L.layer_micrograph(layer)
                micrograph.name = tag["image"]
                images.append(micrograph)
        self.start(f"next round of {Path(folder).name}",
                   lambda: L.next_round(folder, images or None), self.add_result)
