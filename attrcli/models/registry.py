"""The model registry: names to :class:`ModelSpec`, and :func:`create_model`.

A registered model is a spec: how to build the module, which adapter family splits it into
feature blocks and a head, and where its default weights come from (torchvision's cache, or the
digits models trained on first use). A user's own model is given as ``module:attr`` where
``attr`` is a :class:`ModelSpec` or a zero-argument factory returning a
:class:`~attrcli.models.adapter.ModelAdapter`. ``timm:NAME`` and ``bcos:NAME`` name the models
of those packages (:mod:`attrcli.models.timm_models`, :mod:`attrcli.models.bcos_models`); their
specs are built on first use.

Weights are only ever loaded with ``torch.load(..., weights_only=True)`` or, for
``.safetensors`` files, with the safetensors library: a file that would need to run code to
unpickle is refused.
"""

from __future__ import annotations

import inspect
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from attrcli.devices import resolve_device
from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter, resnet_adapter, vgg_adapter
from attrcli.models.bcos_models import bcos_adapter, bcos_spec
from attrcli.models.convnext import convnext_adapter
from attrcli.models.swin import swin_adapter
from attrcli.models.timm_models import timm_adapter, timm_spec
from attrcli.models.vit import vit_adapter
from attrcli.models.weights_hash import module_weights_hash, weights_snapshot, with_hash
from attrcli.progress import Progress
from attrcli.registry import Registry
from attrcli.store import content_hash

StateDict = dict[str, torch.Tensor]
RANDOM = "random"
INIT_SEED = 0
FAMILIES: dict[str, Callable[..., ModelAdapter]] = {
    "vgg": vgg_adapter, "resnet": resnet_adapter, "convnext": convnext_adapter, "swin": swin_adapter, "vit": vit_adapter,
    "timm": timm_adapter, "bcos": bcos_adapter,
}
#: ``PREFIX:NAME`` model names resolved by a package's own registry: prefix -> spec builder.
PACKAGES: dict[str, Callable[[str], "ModelSpec"]] = {"timm": timm_spec, "bcos": bcos_spec}
SAFETENSORS = ".safetensors"


class DefaultWeights(Protocol):
    """Returns the state dict a spec uses when no weights are given."""

    def __call__(
        self, spec: ModelSpec, *, cache_dir: Path, progress: Progress | None
    ) -> StateDict: ...


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model."""

    name: str  # registry name, also the model part of artifact keys
    family: str  # a key of FAMILIES (vgg, resnet, convnext, swin, vit): the adapter that splits it
    factory: Callable[[], nn.Module]  # builds the module with fresh random weights
    cell_size: int  # pixel size of one image (one grid cell)
    num_classes: int
    mean: tuple[float, float, float]  # input normalisation the model expects
    std: tuple[float, float, float]
    description: str  # one line for `attrcli models`
    default_weights: DefaultWeights | None = None  # used when create_model gets weights=None
    aliases: Mapping[str, str] = field(default_factory=dict)  # overrides of the family's aliases

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name}: family must be one of {sorted(FAMILIES)}")

    def adapter(self, module: nn.Module) -> ModelAdapter:
        """Split ``module`` (built by :attr:`factory`) into blocks and head."""
        adapter = FAMILIES[self.family](
            module,
            name=self.name,
            cell_size=self.cell_size,
            mean=self.mean,
            std=self.std,
            num_classes=self.num_classes,
        )
        adapter.aliases.update(self.aliases)
        return adapter


class ModelRegistry(Registry):
    """The model registry; ``timm:NAME`` and ``bcos:NAME`` resolve to specs built (once) from
    those packages, everything else as in :class:`~attrcli.registry.Registry`."""

    def __init__(self) -> None:
        super().__init__("model")
        self._packages: dict[str, ModelSpec] = {}

    def get(self, name: str):
        prefix, sep, rest = name.partition(":")
        if not sep or prefix not in PACKAGES:
            return super().get(name)
        if name not in self._packages:
            if not rest.strip():
                raise UserError(f"invalid model {name!r}: use {prefix}:NAME (attrcli models --family {prefix})")
            self._packages[name] = PACKAGES[prefix](rest.strip())
        return self._packages[name]


MODELS: ModelRegistry = ModelRegistry()


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return MODELS.names()


def family_members(family: str) -> list[str]:
    """The models of ``family``: ``timm`` and ``bcos`` list what their packages hold that the
    adapters read (``timm:NAME``, ``bcos:NAME``); any other family its registered models."""
    if family in PACKAGES:
        from attrcli.models import bcos_models, timm_models

        names = {"timm": timm_models.supported_names, "bcos": bcos_models.supported_names}[family]()
        return [f"{family}:{name}" for name in names]
    known = sorted({spec.family for spec in (MODELS.get(n) for n in MODELS.names()) if isinstance(spec, ModelSpec)})
    if family not in known and family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; valid: {', '.join(sorted(set(known) | set(PACKAGES)))}")
    return [n for n in MODELS.names() if getattr(MODELS.get(n), "family", None) == family]


def build_module(spec: ModelSpec) -> nn.Module:
    """The spec's module with random weights drawn from a fixed seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return spec.factory()


def state_dict_hash(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, dtypes, shapes and bytes in sorted key order."""
    items: list = []
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        items += [key, str(tensor.dtype), list(tensor.shape), raw]
    return content_hash(*items)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_safetensors_file(path: Path) -> StateDict:
    """Read a ``.safetensors`` state dict with the safetensors library (no pickle at all)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path} is a safetensors file and the safetensors package is not installed: "
                        "pip install 'attrcli[safetensors]'") from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file (corrupt or truncated): {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not state:
        raise UserError(f"{path} is not a state dict (it holds no tensors)")
    return state


def load_state_dict_file(path: Path | str) -> StateDict:
    """Read a state dict without executing code: ``.safetensors`` files with the safetensors
    library, anything else with ``torch.load(weights_only=True)``.

    A checkpoint that wraps the state dict as ``{"state_dict": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"weights file {path} {problem}")
    if path.suffix == SAFETENSORS:
        return load_safetensors_file(path)
    try:
        with warnings.catch_warnings():  # torch's multi-line notes on odd pickles: the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise UserError(
                f"{path} is not a readable weights file (corrupt, or not written by torch.save)"
            ) from None
        raise UserError(
            f"{path} was refused: unpickling it would need to run code ({found[1]}), and attrcli "
            "only loads plain state dicts (torch.save(model.state_dict(), path))"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for corrupt files
        raise UserError(
            f"{path} is not a readable weights file (corrupt, or not written by torch.save): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise UserError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return obj  # kept as loaded: its _metadata lets old batch-norm checkpoints load


def apply_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], *, model: str, source: str) -> None:
    """Load ``state`` into ``module``; the first key or shape that does not fit is a UserError."""
    check_state_fit(module, state, model=model, source=source)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"weights {source} do not fit model {model}: {_first_line(exc)}") from None


def check_state_fit(module: nn.Module, state: Mapping[str, torch.Tensor], *, model: str, source: str) -> None:
    """Refuse (UserError) a state dict whose keys or shapes do not fit ``module`` (which may be
    on the meta device: only names and shapes are compared). The one line names the first
    missing parameter, the first unexpected one and the first of a wrong shape, each if any."""
    expected = module.state_dict()
    missing = [
        key for key in expected
        if key not in state and not key.endswith("num_batches_tracked")  # absent before PyTorch 0.4.1
    ]
    wrong = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    extra = [key for key in state if key not in expected]
    problems = []
    if missing:
        problems.append(f"parameter {missing[0]} (shape {tuple(expected[missing[0]].shape)}) is missing")
    if extra:
        problems.append(f"unexpected parameter {extra[0]} (shape {tuple(state[extra[0]].shape)})")
    if wrong:
        key = wrong[0]
        problems.append(
            f"parameter {key} has shape {tuple(state[key].shape)} in the file, the model needs {tuple(expected[key].shape)}"
        )
    if problems:
        counts = f" ({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} of a wrong shape)"
        raise UserError(f"weights {source} do not fit model {model}: " + "; ".join(problems) + counts)


def check_weights(name: str, weights: str | Path) -> None:
    """Refuse (UserError) a weights file that cannot be read or does not fit model ``name``,
    before anything is computed or written. Registered models are built on the meta device (no
    memory, no initialisation); a ``module:attr`` factory is called."""
    if isinstance(weights, str) and weights == RANDOM:
        return
    state = load_state_dict_file(weights)
    obj = MODELS.get(name)
    if isinstance(obj, ModelSpec):
        with torch.device("meta"):
            module = obj.factory()
    else:
        module = _from_factory(name, obj, None).module
    check_state_fit(module, state, model=name, source=str(weights))


def _from_spec(
    spec: ModelSpec,
    weights: str | Path | None,
    cache_dir: Path,
    progress: Progress | None,
) -> ModelAdapter:
    state: StateDict | None = None
    if weights is None:
        if spec.default_weights is None:
            raise UserError(
                f"model {spec.name} has no default weights; pass --weights FILE or --weights random"
            )
        state = spec.default_weights(spec, cache_dir=cache_dir, progress=progress)
        source = f"default weights of {spec.name}"
    elif not (isinstance(weights, str) and weights == RANDOM):
        state = load_state_dict_file(weights)
        source = str(weights)
    module = build_module(spec)
    if state is not None:
        apply_state_dict(module, state, model=spec.name, source=source)
    return spec.adapter(module)


def _from_factory(name: str, factory: Callable[[], object], weights: str | Path | None) -> ModelAdapter:
    if not callable(factory):
        raise UserError(
            f"model {name!r} is a {type(factory).__name__}; expected a ModelSpec or a zero-argument "
            "factory returning a ModelAdapter"
        )
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise UserError(
            f"model {name!r} is not a zero-argument factory (it needs arguments); expected a "
            "ModelSpec or a zero-argument factory returning a ModelAdapter"
        ) from None
    except ValueError:  # no signature to inspect (some builtins): calling it will tell
        pass
    adapter = factory()
    if not isinstance(adapter, ModelAdapter):
        raise UserError(
            f"model {name!r} must be a ModelSpec or a zero-argument factory returning a "
            f"ModelAdapter, but it returned {type(adapter).__name__}"
        )
    if weights is not None and not (isinstance(weights, str) and weights == RANDOM):
        state = load_state_dict_file(weights)
        apply_state_dict(adapter.module, state, model=name, source=str(weights))
    return adapter


def create_model(
    name: str,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    cache_dir: Path = Path("cache"),
    progress: Progress | None = None,
) -> ModelAdapter:
    """The adapter of model ``name`` in eval mode on ``device``, with ``weights_hash`` set.

    ``weights``: ``None`` for the model's default weights (torchvision's cached file, never
    downloaded; the digits models train on first use into ``cache_dir/models``), ``"random"``
    for a fixed-seed random initialisation, or the path of a state-dict file.
    ``progress(description, done, total)`` reports training of the digits models.
    """
    target = resolve_device(device)
    before = weights_snapshot(weights)  # the weights file's identity before it is read (hash cache)
    obj = MODELS.get(name)
    if isinstance(obj, ModelSpec):
        adapter = _from_spec(obj, weights, Path(cache_dir), progress)
    elif callable(obj):
        adapter = _from_factory(name, obj, weights)
    else:
        raise UserError(
            f"model {name!r} is a {type(obj).__name__}; expected a ModelSpec or a zero-argument "
            "factory returning a ModelAdapter"
        )
    adapter.module.eval()
    adapter = with_hash(adapter, module_weights_hash(  # attrcli/models/weights_hash.py
        adapter, model=name, source=before, cache_dir=cache_dir, hash_state=state_dict_hash,
        vouched=not isinstance(obj, ModelSpec),
    ))
    return adapter.to(target)


@dataclass(frozen=True)
class ModelInfo:
    """The layer structure of a model, as `attrcli models` shows it."""

    name: str
    family: str
    cell_size: int
    num_classes: int
    description: str
    aliases: dict[str, str]  # input / middle / final -> module path
    layers: list[str]  # every attributable layer, in network order
    stage_layers: list[str]  # what the layer spec `all` means (besides input)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "cell_size": self.cell_size,
            "num_classes": self.num_classes,
            "description": self.description,
            "aliases": dict(self.aliases),
            "layers": list(self.layers),
            "stage_layers": list(self.stage_layers),
        }


def describe_model(name: str) -> ModelInfo:
    """Layer structure of ``name`` without loading or training weights.

    Registered specs are built on the ``meta`` device (no memory, no initialisation cost). A
    user factory (``module:attr``) is called as is.
    """
    obj = MODELS.get(name)
    if isinstance(obj, ModelSpec):
        with torch.device("meta"):
            adapter = obj.adapter(obj.factory())
        family, description = obj.family, obj.description
    elif callable(obj):
        adapter = _from_factory(name, obj, None)
        family = "custom"
        description = ((obj.__doc__ or "").strip().splitlines() or ["user model"])[0]
    else:
        raise UserError(f"model {name!r} is a {type(obj).__name__}, not a ModelSpec or factory")
    return ModelInfo(
        name=name,
        family=family,
        cell_size=adapter.cell_size,
        num_classes=adapter.num_classes,
        description=description,
        aliases={"input": "input", **adapter.aliases},
        layers=adapter.layers,
        stage_layers=list(adapter.stage_layers),
    )
