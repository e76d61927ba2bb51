"""emcopilot in napari: open a run, measure the open images, correct the labels, go round again.

Installed with ``pip install "emcopilot[napari]"``; napari finds it through the
``napari.manifest`` entry point (``napari.yaml`` here). Three contributions:

- a **reader**: *File > Open Folder* on an output folder of ``run``, ``extract`` or ``segment``
  (any folder with a ``run.json``) opens each micrograph at its scale in nm (where its input
  file can still be read), its label image with the particle table as the layer's features,
  and, for atoms, the atoms as points;
- **Measure**: segments the chosen image layer with a trained model folder, or runs a recipe's
  whole loop on every open image layer, in a worker thread with napari's progress indicator,
  and adds the results as layers;
- **Correct and go round again**: saves the edited label layers of a run (delete false
  particles, paint missed ones, each with its own label value) into ``<run>/corrections/``,
  and runs the run's recipe again with them as priors (``emcopilot run --priors-from``) into
  ``<run>-corrected``, whose ``run.json`` then says it is no longer label-free.

The work is done by the plain functions of :mod:`emcopilot.napari.layers`, which need napari
only for the layer objects they are given; the widgets only wire them to buttons.
"""
