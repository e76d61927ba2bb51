"""Built-in generators: the analytic `physical` renderer and the `pix2pix` cGAN."""
