"""Built-in metrics: image quality (image.py) and segmentation (segmentation.py)."""
