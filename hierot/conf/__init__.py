"""Hydra configs of hierot (a package so that installed copies are found by module)."""
