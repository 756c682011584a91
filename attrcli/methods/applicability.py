"""Which methods can run at which layer of which model (checked when jobs are planned).

Three rules, all read from the model adapter and the method class, so a user's own model or
method is checked the same way:

- Guided backprop needs a ReLU network (:func:`attrcli.engine.guided.guided_problem`).
- At a *token layer* (a ViT encoder block, whose activations are a token sequence that the
  settings show as a map) only gradient methods run. The others perturb or rescale the layer's
  map and run the rest of the network on it; in a ViT the rest of the network also reads the
  class token of that block, which has no position in the map. Gradient methods need no such
  input: the gradient at the patch tokens is the same whatever the class token is held at.
  Methods that only read the layer's activations and run nothing after it (EigenCAM; class
  attribute ``reads_layer_only``) run there too.
- A method class may define ``model_problem(model, layer) -> str | None`` for its own limits
  (LRP: rules exist for ReLU CNNs only).

Derived methods are checked as their base method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrcli.engine.guided import guided_problem
from attrcli.errors import UserError

if TYPE_CHECKING:
    from attrcli.settings.base import GridSetting


def method_problem(setting: GridSetting, method: type | object, layer: str) -> str | None:
    """Why ``method`` (class or instance) cannot run at ``layer`` in ``setting``, or None."""
    from attrcli.methods import METHODS

    cls = method if isinstance(method, type) else type(method)
    if cls.kind == "derived" and cls.base:
        cls = METHODS.get(cls.base)
    model = setting.model
    if cls.guided:
        problem = guided_problem(model.module)
        if problem:
            return problem
    if cls.kind != "gradient" and not getattr(cls, "reads_layer_only", False) and model.is_token_layer(layer):
        return (
            f"layer {layer} is a token layer, where only gradient methods run (the rest of the "
            "network also reads the class token, which has no position in the map)"
        )
    own = getattr(cls, "model_problem", None)
    return own(model, layer) if own is not None else None


def valid_methods(setting: GridSetting, layer: str) -> list[str]:
    """Names of the registered methods that can run at ``layer`` in ``setting``."""
    from attrcli.methods import METHODS

    return [name for name in METHODS.names() if method_problem(setting, METHODS.get(name), layer) is None]


def check_method(setting: GridSetting, method: type | object, layer: str) -> None:
    """Raise a one-line UserError naming the valid methods if ``method`` cannot run there."""
    problem = method_problem(setting, method, layer)
    if problem is None:
        return
    cls = method if isinstance(method, type) else type(method)
    valid = ", ".join(valid_methods(setting, layer)) or "none"
    raise UserError(
        f"method {cls.name} cannot run at layer {layer} of {setting.model.name} in {setting.name}: "
        f"{problem}; valid there: {valid}"
    )
