"""The attribution engine: batched, shared passes over grids, settings, layers and methods."""
