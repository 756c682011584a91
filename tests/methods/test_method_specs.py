"""Method specs (``name:key=value,...``), configs, presets and the registry entries they name."""

from __future__ import annotations

import numpy as np
import pytest

from attrcli.errors import UserError
from attrcli.methods import METHODS, MethodSpec, parse_method, split_methods
from attrcli.methods.intgrad import IntGradConfig, integration_points
from attrcli.stages.plan import resolve_methods

PAPERS = {  # method -> a fragment of the citation its module docstring must carry
    "grad": "Simonyan",
    "guided-backprop": "Springenberg",
    "ixg": "Shrikumar",
    "intgrad": "Sundararajan",
    "gradcam": "Selvaraju",
    "gradcam++": "Chattopadhay",
    "layercam": "Jiang",
}


@pytest.mark.parametrize("name", list(PAPERS))
def test_each_gradient_method_is_one_short_module_citing_its_paper(name):
    import inspect
    import sys

    cls = METHODS.get(name)
    module = sys.modules[cls.__module__]
    assert cls.name == name
    assert PAPERS[name] in module.__doc__ and any(str(year) in module.__doc__ for year in range(2013, 2023))
    assert len(inspect.getsource(module).splitlines()) < 80


def test_parse_plain_names_and_parameters():
    assert parse_method("grad") == MethodSpec("grad")
    spec = parse_method(" intgrad:steps=5,rule=riemann_trapezoid ")
    assert spec.params == (("rule", "riemann_trapezoid"), ("steps", "5"))
    assert spec.canonical() == "intgrad:rule=riemann_trapezoid,steps=5"
    method = spec.build(cell_size=32, layer="input")
    assert method.config == IntGradConfig(steps=5, rule="riemann_trapezoid")
    assert parse_method("intgrad").build(cell_size=32, layer="middle").config == IntGradConfig(20, "gausslegendre")


def test_split_method_lists_keeps_parameters_with_their_method():
    assert split_methods("grad, intgrad:steps=5,rule=riemann_trapezoid,ixg") == [
        "grad", "intgrad:steps=5,rule=riemann_trapezoid", "ixg",
    ]
    assert split_methods("gradcam++,layercam,") == ["gradcam++", "layercam"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("gradcampp", r"unknown method 'gradcampp'; valid: .*gradcam\+\+"),
        ("intgrad:step=5", r"method intgrad has no parameter 'step'; valid: steps, rule"),
        ("intgrad:steps=five", r"parameter steps must be int, got 'five'"),
        ("intgrad:steps", r"invalid method parameters 'steps' in 'intgrad:steps': use intgrad:key=value"),
        ("nosuchpackage.mod:Method", r"cannot load method 'nosuchpackage.mod:Method'"),
        ("grad:abs=1", r"method grad has no parameter 'abs'; valid: none"),
        ("intgrad:steps=5,=3", r"invalid method parameter '=3'"),
    ],
)
def test_bad_specs_are_user_errors_naming_what_is_valid(text, message):
    with pytest.raises(UserError, match=message):
        parse_method(text)


def test_resolve_methods_dedupes_and_all_means_every_computed_method():
    specs = resolve_methods("grad,ixg,grad,intgrad:steps=20")
    assert [s.canonical() for s in specs] == ["grad", "ixg", "intgrad:steps=20"]
    every = [s.name for s in resolve_methods("all")]
    assert set(every) >= set(PAPERS) and all(METHODS.get(n).kind != "derived" for n in every)
    with pytest.raises(UserError, match="no method given"):
        resolve_methods("")


def test_integration_points():
    for steps in (1, 7, 20):
        alphas, weights = integration_points(steps, "gausslegendre")
        assert np.all((alphas > 0) & (alphas < 1)) and weights.sum() == pytest.approx(1.0, abs=1e-14)
        degree = 2 * steps - 1  # Gauss-Legendre is exact up to this polynomial degree
        assert (weights * alphas**degree).sum() == pytest.approx(1 / (degree + 1), rel=1e-12)
    alphas, weights = integration_points(5, "riemann_trapezoid")
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.25, 0.25, 0.125])
    for steps, rule, message in ((0, "gausslegendre", "steps >= 1"), (1, "riemann_trapezoid", "steps >= 2"),
                                 (5, "simpson", "unknown intgrad rule 'simpson'")):
        with pytest.raises(UserError, match=message):
            integration_points(steps, rule)
