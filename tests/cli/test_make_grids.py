"""``attrcli make-grids``: paths on stdout, logs on stderr, exit 2 and nothing written on bad input.

Most tests swap the digits models for a nearest-class-mean stand-in; one slow test runs the
real command with the real digits models (trained once into a session cache folder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.data import digits
from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter
from attrcli.stages import make_grids as stage
from attrcli.store import read_artifact

runner = CliRunner()


class Centroids(nn.Module):
    def __init__(self, means: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("means", means)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        distance = (x * x).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means**2).sum(1)
        return -self.scale * distance / x.shape[1]


@pytest.fixture(scope="module")
def fakes() -> dict[str, ModelAdapter]:
    x, y, _ = digits.load_digits_split("train")
    x = digits.normalize(x).flatten(1)
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    out = {}
    for name, scale in (("digits-vgg11", 40.0), ("digits-resnet18", 25.0), ("timid", 10.0)):
        module = Centroids(means, scale).eval()
        out[name] = ModelAdapter(
            name=name, module=module, blocks=[("body", nn.Identity())], head=module, gap_head=True,
            aliases={"middle": "body", "final": "body"}, stage_layers=["body"], cell_size=32,
            num_classes=10, mean=digits.MEAN, std=digits.STD, weights_hash=f"fake-{scale}",
        )
    return out


@pytest.fixture
def fake_models(monkeypatch, fakes):
    def load(names, **_):
        unknown = [n for n in names if n not in fakes]
        if unknown:
            raise UserError(f"unknown model {unknown[0]!r}; valid: {', '.join(sorted(fakes))}")
        return [fakes[n] for n in names]

    monkeypatch.setattr(stage, "load_models", load)


def invoke(*args: str):
    return runner.invoke(app, ["make-grids", "--device", "cpu", *args])


def test_writes_files_and_prints_their_paths(tmp_path, monkeypatch, fake_models):
    monkeypatch.chdir(tmp_path)
    result = invoke("--count", "10")
    assert result.exit_code == 0, result.output
    paths = result.stdout.splitlines()
    assert paths == ["data/grids/digits-distinct-n2-count10.h5", "data/grids/digits-corners-n2-count10.h5"]
    assert "written" in result.stderr
    art = read_artifact(paths[1])
    assert art.attrs["variant"] == "corners" and art.data["labels"].shape == (10, 4)
    assert (art.data["labels"][:, 0] == art.data["labels"][:, 3]).all()

    again = invoke("--count", "10")
    assert again.exit_code == 0 and again.stdout.splitlines() == paths
    assert again.stderr.count("up to date") == 2


def test_json_summary(tmp_path, fake_models):
    result = invoke("--variant", "distinct", "--n", "3", "--count", "4", "--out-dir", str(tmp_path),
                    "--per-model", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["path"] for s in summary] == [
        str(tmp_path / "digits-distinct-n3-count4-digits-vgg11.h5"),
        str(tmp_path / "digits-distinct-n3-count4-digits-resnet18.h5"),
    ]
    first = summary[0]
    assert first["status"] == "written" and first["count"] == 4 and first["n"] == 3
    assert first["models"] == ["digits-vgg11"] and first["reused"] == 0


def test_passes_the_options_through(monkeypatch, tmp_path):
    seen = {}

    def fake_make_grids(**kwargs):
        seen.update(kwargs)
        return [tmp_path / "x.h5"]

    monkeypatch.setattr(stage, "make_grids", fake_make_grids)
    result = invoke("--dataset", "folder", "--root", str(tmp_path), "--variant", "corners", "--n", "3",
                    "--count", "7", "--cell-size", "32", "--min-conf", "0.9", "--models", "a, b",
                    "--per-model", "--seed", "4", "--out-dir", "o", "--cache-dir", "c", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'x.h5'}\n"
    expected = {
        "dataset": "folder", "root": tmp_path, "variant": "corners", "n": 3, "count": 7,
        "cell_size": 32, "min_conf": 0.9, "models": ["a", "b"], "per_model": True, "seed": 4,
        "out_dir": Path("o"), "cache_dir": Path("c"), "device": torch.device("cpu"),
        "download": False, "force": True, "wait": False,
    }
    assert {k: seen[k] for k in expected} == expected


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid: cifar10, digits, folder, imagenet"),
    (["--models", "digits-vgg11,nope"], "unknown model 'nope'; valid:"),
    (["--n", "4", "--variant", "distinct"], "distinct 4×4 grids need 16 distinct classes, digits has 10"),
    (["--n", "4"], "distinct 4×4 grids need 16 distinct classes"),
    (["--n", "1"], "--n must be at least 2"),
    (["--variant", "pairs"], "unknown grid variant 'pairs'; valid: distinct, corners, both"),
    (["--count", "0"], "--count must be at least 1"),
    (["--min-conf", "2"], "between 0 and 1"),
    (["--models", "timid"], r"only \d classes have any: \d+ of 898 digits images pass"),
    (["--models", "timid", "--variant", "corners"], "no class has 2"),
    (["--dataset", "cifar10"], "cifar10 needs --root"),
    (["--dataset", "cifar10", "--root", "missing"], "--root missing does not exist"),
    (["--dataset", "cifar10", "--root", "."], "no CIFAR10 test set in"),
    (["--dataset", "imagenet", "--root", "missing"], "--root missing does not exist"),
    (["--dataset", "folder"], "folder needs --root"),
    (["--root", "."], "digits is embedded and takes no --root"),
    (["--download"], "--download does not apply to digits"),
    (["--cell-size", "64"], "model digits-vgg11 needs 32-pixel cells, not --cell-size 64"),
    (["--device", "tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, fake_models, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    # One line of error after any progress bars, no traceback.
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in result.stderr
    assert re.search(message, lines[-1]), lines[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["make-grids", "--device", "cuda", "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr, result.output
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="session")
def digits_cache(trained_digits_cache) -> Path:
    """The session's trained digits models (tests/fixtures_digits.py), so they train once."""
    return trained_digits_cache


@pytest.mark.slow
def test_real_digits_models_end_to_end(tmp_path, digits_cache):
    pytest.importorskip("attrcli.models", reason="needs the model registry")
    from attrcli.models import create_model

    result = runner.invoke(app, ["make-grids", "--device", "cpu", "--cache-dir", str(digits_cache),
                                 "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["variant"] for s in summary] == ["distinct", "corners"]
    models = [create_model(m, cache_dir=digits_cache) for m in ("digits-vgg11", "digits-resnet18")]
    for entry in summary:
        assert entry["count"] == 100 and entry["reused"] == 0
        art = read_artifact(entry["path"])
        images = torch.from_numpy(art.data["images"])
        cells = images.reshape(-1, 3, 2, 32, 2, 32).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 32, 32)
        for model in models:
            with torch.inference_mode():
                probs = model.logits(cells).softmax(1)
            labels = torch.from_numpy(art.data["labels"].reshape(-1))
            assert (probs.argmax(1) == labels).all()
            assert (probs.gather(1, labels[:, None]) >= 0.99).all()
        assert len(np.unique(art.data["sources"])) == art.data["sources"].size


def test_the_confidence_filter_loads_the_given_weights(tmp_path, monkeypatch):
    """`make-grids --weights MODEL=FILE` (a .safetensors file here) filters with those weights:
    checked first, then loaded for the filter; a misfit file exits 2 and writes nothing."""
    import attrcli.models as models
    from safetensors.torch import save_file

    from tests.study.plugin_models import small_vgg

    monkeypatch.chdir(tmp_path)
    state = {k: v.contiguous() for k, v in small_vgg().module.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    seen = []
    real = models.create_model

    def spy(name, **kw):
        seen.append((name, kw.get("weights")))
        raise SystemExit(0)  # the filter would run next

    monkeypatch.setattr(models, "create_model", spy)
    runner = CliRunner()
    result = runner.invoke(app, ["make-grids", "--models", "tests.study.plugin_models:small_vgg",
                                 "--weights", "w.safetensors"])
    assert seen == [("tests.study.plugin_models:small_vgg", "w.safetensors")], result.output
    monkeypatch.setattr(models, "create_model", real)
    bad = {k: v[..., :1].contiguous() if v.ndim == 4 else v for k, v in state.items()}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    result = runner.invoke(app, ["make-grids", "--models", "tests.study.plugin_models:small_vgg",
                                 "--weights", "bad.safetensors"])
    assert result.exit_code == 2 and "shape" in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "w.safetensors"]
