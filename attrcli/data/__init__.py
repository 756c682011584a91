"""Datasets and grid images."""
