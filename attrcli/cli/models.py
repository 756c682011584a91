"""``attrcli models``: the registered models, their layer aliases and attributable layers; timm's
and the ``bcos`` package's models by name or by family."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from attrcli.cli.app import command, split_list

PACKAGE_FAMILIES = ("timm", "bcos")


@command("models")
def models_command(
    names: list[str] | None = typer.Argument(
        None, help="Models to show, e.g. resnet18 timm:resnet50 bcos:resnet18 (default: every registered model)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Only these models (comma list); also accepts module:Name, timm:NAME, bcos:NAME."
    ),
    family: str | None = typer.Option(
        None, "--family", help="List a family's models: timm and bcos (what their packages hold that attrcli "
        "reads), or a registered family (vgg, resnet, convnext, swin, vit, digits).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List models with their layer aliases (input / middle / final) and every attributable layer.

    Reads the layer structure only: nothing is trained, loaded or downloaded. ``--family timm``
    and ``--family bcos`` list names only; ``attrcli models timm:NAME`` shows one's layers.
    """
    from attrcli.models import describe_model, family_members, list_models

    wanted = [*(names or []), *split_list(model)]
    if family is not None and family in PACKAGE_FAMILIES and not wanted:
        members = family_members(family)
        if as_json:
            typer.echo(json.dumps([{"name": name, "family": family} for name in members], indent=2))
            return
        table = Table(title=f"attrcli models --family {family} ({len(members)})", expand=True)
        table.add_column("model", overflow="fold")
        table.add_row(", ".join(members))
        Console().print(table)
        Console(stderr=True).print(f"attrcli models {members[0]} shows a model's aliases and layers")
        return
    selected = wanted or (family_members(family) if family is not None else list_models())
    infos = [describe_model(name) for name in selected]
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
