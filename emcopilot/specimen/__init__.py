"""The specimen's geometry and scale: layouts of particles, clusters and atoms, the morphology
prior fitted to masks, the working-scale resampling, and the pixel size of an uncalibrated image
estimated from its objects."""
