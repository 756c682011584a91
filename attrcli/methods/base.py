"""Method base class, specs (``name:key=value,...``) and the method registry.

A method is one short class. Gradient methods only say how a map follows from the activations
and gradients at a layer (:meth:`Method.from_gradients`); the engine computes those once for all
of them. Methods that run the model themselves implement :meth:`Method.attribute` with the
:class:`~attrcli.engine.context.AttributionContext`. Derived methods (smoothing) implement
:meth:`Method.derive` over the cached maps of their base method, without running the model.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from attrcli.errors import UserError
from attrcli.registry import Registry

if TYPE_CHECKING:
    from attrcli.engine.context import AttributionContext


@dataclass(frozen=True)
class NoConfig:
    """A method without parameters."""


@dataclass(frozen=True)
class MethodTesting:
    """What the registry-driven generic tests need to know about a method that its other class
    attributes do not say. Its kind and where it applies (guided, kind, ``model_problem``; see
    :mod:`attrcli.methods.applicability`) are read from the class itself, so that registering a
    method puts it under every generic test (tests/methods/test_generic_methods.py)."""

    tiny: str = ""  # parameters that keep it cheap on tiny test models ("k=4,s=4"; spec name:tiny)
    difull_exact: bool = False  # DiFull maps exactly zero outside the target cell, at every layer
    model: str = ""  # a tiny test model (tests/models/tiny_families.py) instead of the toy CNN, for
    # methods defined on one family only (attention rollout: ViTs); tested at the layers it allows

    def spec(self, name: str) -> str:
        """The method spec the generic tests run: ``name`` or ``name:tiny``."""
        return f"{name}:{self.tiny}" if self.tiny else name


class Method:
    """Base class of all attribution methods.

    Class attributes:
        name: registry name (also the first part of the artifact's method spec).
        kind: ``"gradient"`` (maps from activations and gradients at the layer; computed in
            the shared pass), ``"model"`` (runs the network itself) or ``"derived"`` (from the
            cached maps of ``base``).
        guided: gradients come from the guided-backprop pass instead of the plain one.
        whole_grid: a gradient method whose map of a DiFull head reads activations outside the
            head's cell (channel weights over the stitched map, as Grad-CAM); the others are
            zero wherever the gradient is, so the engine runs only the target cells for them.
        base: for derived methods, the method whose maps they transform.
        Config: a frozen dataclass of parameters (one comment per field).
        keyed: parameters always written in the artifact key, even at their preset value
            (a smoothing kernel's K, so the keys of a sweep name their K).
        seeded: the method draws random numbers (RISE's masks, SmoothGrad's noise), so its maps
            depend on ``--seed`` and on the chunking: both enter its artifact's identity.
        testing: what the generic tests need besides the above (:class:`MethodTesting`).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "gradient"
    guided: ClassVar[bool] = False
    whole_grid: ClassVar[bool] = False
    base: ClassVar[str | None] = None
    Config: ClassVar[type] = NoConfig
    keyed: ClassVar[tuple[str, ...]] = ()
    seeded: ClassVar[bool] = False
    testing: ClassVar[MethodTesting] = MethodTesting()

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def preset(cls, *, cell_size: int, layer: str) -> Any:
        """The default config for a cell size and layer (paper presets where sizes matter)."""
        return cls.Config()

    def from_gradients(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, T, h, w)`` from activations ``(B, 1, C, h, w)`` and per-target gradients
        ``(B, T, C, h, w)`` at the layer, in grid layout (they broadcast along the target axis).

        Reductions must run over the last three axes (channels, height, width) only."""
        raise NotImplementedError

    def attribute(self, ctx: "AttributionContext") -> torch.Tensor:
        """Maps ``(B, T, h, w)`` in grid layout for the batch in ``ctx``."""
        raise NotImplementedError

    def derive(self, maps: torch.Tensor) -> torch.Tensor:
        """Derived maps ``(N, T, h, w)`` from the base method's maps."""
        raise NotImplementedError

    def check(self, *, layer: str, map_size: tuple[int, int]) -> None:
        """Refuse (``UserError``) a config that does not fit a layer whose grid-layout map is
        ``map_size``; called when a job is planned, before anything is written."""

    def diagnostics(self) -> dict[str, int]:
        """Counts worth recording in the artifact, accumulated over the maps computed so far
        (e.g. Grad-CAM++'s ill-conditioned weights); empty for most methods."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


@dataclass(frozen=True)
class MethodSpec:
    """A method name with the parameters the user set (sorted by name, values as given)."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    def canonical(self) -> str:
        """The spec string used in artifact keys: ``name`` or ``name:k=v,...``."""
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in self.params)

    @property
    def method_class(self) -> type[Method]:
        return METHODS.get(self.name)

    def canonical_for(self, *, cell_size: int, layer: str) -> "MethodSpec":
        """The same computation spelled one way for this cell size and layer: parameters equal
        to the preset are dropped (except the method's ``keyed`` ones, always written), the rest
        written as their typed value (``steps=20.0`` -> ``steps=20``) and sorted, so equal
        computations share one artifact key."""
        cls = self.method_class
        preset = cls.preset(cell_size=cell_size, layer=layer)
        config = _override(cls, preset, dict(self.params)) if self.params else preset
        kept = tuple(
            (name, _format(getattr(config, name)))
            for name in sorted({name for name, _ in self.params} | set(cls.keyed))
            if name in cls.keyed or getattr(config, name) != getattr(preset, name)
        )
        return MethodSpec(self.name, kept)

    def build(self, *, cell_size: int, layer: str) -> Method:
        """The method with its preset for this cell size and layer, then the user's values."""
        cls = self.method_class
        config = cls.preset(cell_size=cell_size, layer=layer)
        if self.params:
            config = _override(cls, config, dict(self.params))
        return cls(config)


def _format(value: Any) -> str:
    """A parameter value as written in a canonical spec."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _coerce(cls: type[Method], field: dataclasses.Field, raw: str, hints: dict) -> Any:
    kind = hints.get(field.name, str)
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if kind is int:
            number = float(raw)  # "20.0" is the integer 20; "20.5" is refused
            if not number.is_integer():
                raise ValueError(raw)
            return int(number)
        if kind in (float, str):
            return kind(raw)
        return raw
    except ValueError:
        raise UserError(
            f"method {cls.name}: parameter {field.name} must be {getattr(kind, '__name__', kind)}, got {raw!r}"
        ) from None


def _override(cls: type[Method], config: Any, values: dict[str, str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise UserError(f"method {cls.name} has no parameter {unknown[0]!r}; valid: {valid}")
    hints = typing.get_type_hints(type(config))
    changes = {name: _coerce(cls, fields[name], raw, hints) for name, raw in values.items()}
    return dataclasses.replace(config, **changes)


def parse_method(text: str) -> MethodSpec:
    """Parse ``name``, ``name:k=v,k=v`` or ``package.module:Class[:k=v,...]``."""
    text = text.strip()
    head, sep, tail = text.rpartition(":")
    if sep and "=" in tail:
        name, params_text = head, tail
    elif sep and head in METHODS.names():
        raise UserError(f"invalid method parameters {tail!r} in {text!r}: use {head}:key=value,...")
    else:
        name, params_text = text, ""
    params: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in params_text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise UserError(f"invalid method parameter {item!r} in {text!r}: use key=value")
        if key.strip() in params:
            raise UserError(f"parameter {key.strip()!r} given twice in {text!r}")
        params[key.strip()] = value.strip()
    cls = METHODS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        what = f"a {type(cls).__name__}" if not isinstance(cls, type) else f"the class {cls.__name__}"
        raise UserError(
            f"method {name!r} is {what}, not an attribution method (a subclass of attrcli.methods.Method)"
        )
    if params:
        _override(cls, cls.Config(), params)  # validates names, types and values early
    return MethodSpec(name, tuple(sorted(params.items())))


def split_methods(text: str) -> list[str]:
    """Split a ``--method`` list: ``occlusion:k=16,s=8,grad`` -> ``["occlusion:k=16,s=8", "grad"]``."""
    out: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token and out:
            out[-1] += f",{token}"
        else:
            out.append(token)
    return out
