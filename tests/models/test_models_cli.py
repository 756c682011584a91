"""`attrcli models`: the table and JSON list layer aliases without loading weights."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.models import list_models

runner = CliRunner()


def test_models_table_lists_digits_vgg11_with_aliases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in list_models():
        assert name in result.output
    row = next(line for line in result.output.splitlines() if "digits-vgg11" in line)
    assert "input → input" in row
    assert "middle → features.7" in result.output and "final → features.14" in result.output
    assert "middle → features.12" in result.output  # vgg11
    assert list(tmp_path.iterdir()) == []  # nothing trained, cached or downloaded


def test_models_json_with_filter():
    result = runner.invoke(app, ["models", "--json", "--model", "digits-resnet18,vgg11"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["digits-resnet18", "vgg11"]
    resnet, vgg = rows
    assert resnet["aliases"] == {"input": "input", "middle": "layer2", "final": "layer4"}
    assert resnet["layers"][:4] == ["input", "conv1", "bn1", "relu"] and "layer4.1" in resnet["layers"]
    assert vgg["aliases"]["final"] == "features.19" and vgg["layers"][-1] == "features.20"
    assert vgg["cell_size"] == 224 and vgg["num_classes"] == 1000


def test_models_unknown_name_exits_2():
    result = runner.invoke(app, ["models", "--model", "vgg12"])
    assert result.exit_code == 2
    assert "unknown model 'vgg12'" in result.output and "digits-vgg11" in result.output
