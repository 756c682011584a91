"""``attrcli models``: the registered models, their layer aliases and attributable layers."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from attrcli.cli.app import command, split_list


@command("models")
def models_command(
    model: str | None = typer.Option(
        None, "--model", help="Only these models (comma list); also accepts module:Name."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List models with their layer aliases (input / middle / final) and every attributable layer.

    Reads the layer structure only: nothing is trained, loaded or downloaded.
    """
    from attrcli.models import describe_model, list_models

    infos = [describe_model(name) for name in (split_list(model) or list_models())]
    if as_json:
        typer.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    table = Table(title="attrcli models", show_lines=True, expand=True)
    table.add_column("model", no_wrap=True)
    table.add_column("family")
    table.add_column("cell", justify="right")
    table.add_column("classes", justify="right")
    table.add_column("aliases", no_wrap=True)
    table.add_column("layers", ratio=1, overflow="fold")
    for info in infos:
        table.add_row(
            info.name,
            info.family,
            str(info.cell_size),
            str(info.num_classes),
            "\n".join(f"{alias} → {path}" for alias, path in info.aliases.items()),
            ", ".join(info.layers),
        )
    Console().print(table)
