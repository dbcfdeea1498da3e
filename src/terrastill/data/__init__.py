"""The data stage: observations → STAC acquisitions → masked multi-temporal chips."""
