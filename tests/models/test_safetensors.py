"""``--weights FILE.safetensors``: read with the safetensors library (no pickle), checked and hashed
as ``.pth`` state dicts are, so the same weights give the same artifacts; a file that does not fit
is refused in one line naming the first missing, unexpected and wrong-shape parameter, and
nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.errors import UserError
from attrcli.models import create_model, load_state_dict_file
from attrcli.models.registry import check_weights
from attrcli.store import read_artifact
from tests.engine.helpers import write_grids

runner = CliRunner()
MODEL = "digits-vgg11"  # registered, 32-pixel cells; with weights given nothing is trained
QUICK = ["--layer", "input,final", "--method", "grad,ixg", "--device", "cpu", "-q"]
TIMING = ("seconds", "created")  # the only provenance that differs between two runs


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_grids(tmp_path / "g.h5", count=2)
    write_grids(tmp_path / "c.h5", count=2, variant="corners")
    state = {k: v + 0.25 if v.is_floating_point() else v
             for k, v in create_model(MODEL, weights="random").module.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    return tmp_path


def attribute(weights: str, grids: str, cache: str):
    setting = "difull" if grids == "c.h5" else "gridpg"
    result = runner.invoke(app, ["attribute", "--grids", grids, "--model", MODEL, "--weights", weights, *QUICK,
                                 "--setting", setting, "--cache-dir", cache, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_safetensors_and_pth_give_identical_artifacts(workdir):
    for grids in ("g.h5", "c.h5"):  # GridPG and DiFull
        pth = attribute("w.pth", grids, "a")
        safe = attribute("w.safetensors", grids, "b")
        assert [r["key"] for r in pth] == [r["key"] for r in safe] and len(pth) == 4
        for one, other in zip(pth, safe):
            first, second = read_artifact(workdir / one["path"]), read_artifact(workdir / other["path"])
            assert sorted(first.data) == sorted(second.data)
            for name in first.data:  # the maps, byte for byte
                assert first.data[name].dtype == second.data[name].dtype
                assert first.data[name].tobytes() == second.data[name].tobytes(), name
            assert first.attrs == second.attrs
            drop = lambda p: {k: v for k, v in p.items() if k not in TIMING}  # noqa: E731
            assert drop(first.provenance) == drop(second.provenance)
            assert np.any(first.data["maps"] != 0)
    # the same weights hash: a .pth artifact is up to date for the .safetensors file
    again = attribute("w.safetensors", "c.h5", "a")
    assert {r["status"] for r in again} == {"up to date"}
    assert create_model(MODEL, weights="w.pth").weights_hash == create_model(MODEL, weights="w.safetensors").weights_hash


def test_a_safetensors_file_that_does_not_fit_is_refused_in_one_line(workdir):
    state = load_state_dict_file(workdir / "w.safetensors")
    state["features.3.weight"] = torch.zeros(32, 16, 5, 5)
    save_file(state, "bad.safetensors")
    result = runner.invoke(app, ["attribute", "--grids", "g.h5", "--model", MODEL, "--weights", "bad.safetensors",
                                 *QUICK, "--setting", "gridpg", "--cache-dir", "bad"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert ("parameter features.3.weight has shape (32, 16, 5, 5) in the file, the model needs (32, 16, 3, 3)"
            in result.stderr) and "Traceback" not in result.output
    assert not (workdir / "bad").exists() and result.stdout == ""


def test_the_line_names_the_first_missing_unexpected_and_wrong_shape_parameter(workdir):
    state = load_state_dict_file(workdir / "w.safetensors")
    del state["classifier.6.bias"], state["features.0.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["features.3.weight"] = torch.zeros(1)
    save_file(state, "three.safetensors")
    with pytest.raises(UserError) as refused:
        check_weights(MODEL, "three.safetensors")  # run's and study files' check before anything is written
    message = str(refused.value)
    assert message == (
        f"weights three.safetensors do not fit model {MODEL}: parameter features.0.bias (shape (16,)) is missing; "
        "unexpected parameter extra.weight (shape (2,)); parameter features.3.weight has shape (1,) in the file, "
        "the model needs (32, 16, 3, 3) (2 missing, 1 unexpected, 1 of a wrong shape)"
    )
    check_weights(MODEL, "w.safetensors")  # a fitting file passes


def test_unreadable_safetensors_are_one_line_and_never_unpickled(workdir):
    Path("junk.safetensors").write_bytes(b"\x00\x01 not a safetensors header")
    with pytest.raises(UserError, match=r"^junk\.safetensors is not a readable safetensors file \(corrupt or truncated\)"):
        load_state_dict_file("junk.safetensors")
    torch.save({"w": torch.zeros(1)}, "pickled.safetensors")  # a pickle under the name: read as safetensors only
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        load_state_dict_file("pickled.safetensors")
