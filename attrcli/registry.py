"""One small registry class, used for datasets, models and methods.

A name is either registered with the decorator, or given as ``package.module:Attribute`` to load
a user's own object without editing attrcli.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from attrcli.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("digits-vgg11")``."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items or ":" in name

    def get(self, name: str) -> T:
        """The object registered as ``name``, or loaded from ``module:attribute``."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            if not module_name.strip() or not attr.strip():
                raise UserError(f"invalid {self.kind} {name!r}: use module:Name, e.g. mypackage.models:MyModel")
            try:
                module = importlib.import_module(module_name)
                return getattr(module, attr)
            except (ImportError, AttributeError) as exc:
                raise UserError(f"cannot load {self.kind} {name!r}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a user's module that fails to import
                first = (str(exc).strip().splitlines() or [""])[0]
                raise UserError(f"cannot load {self.kind} {name!r}: {type(exc).__name__}: {first}") from None
        raise UserError(
            f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())} "
            f"(or module:Name for your own)"
        )
