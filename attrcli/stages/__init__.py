"""The stages of a study, one module each: they orchestrate the libraries below them
(data, models, settings, engine, methods, metrics, plots) and read and write artifacts by key."""
