"""Multi-temporal super-resolution: a field of fixed 2D Gaussian splats fitted to many dates."""
