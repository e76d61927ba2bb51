"""The product: the closed loop and its declared stages, the run folder and its ``run.json``, model
folders, batch segmentation, the report, the demo and the Python API the commands are made of."""
