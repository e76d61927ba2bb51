"""Reading micrographs: files with their calibration (rosettasciio, imageio), in-memory images and
HyperSpy signals as inputs, per-file calibration tables and scale bars burned into the pixels."""
