"""timm's image classifiers (Wightman, "PyTorch Image Models") as ``timm:NAME``.

The adapter is read from timm's own structure, not from a table per model:

- CNNs (ResNet, EfficientNet, ConvNeXt, RegNet): the blocks are the top-level modules that
  ``forward_features`` calls, in the order it calls them (traced once on the meta device), with
  plain ``nn.Sequential`` containers opened into their members; ``model.feature_info`` names
  the stages (``all``), ``middle`` is the second stage at stride ≥ 4 and ``final`` the last
  (as ``layer2`` / ``layer4`` for torchvision's ResNet). The head is ``forward_head``, which
  starts with global average pooling, so GridPG applies it to the composite map as it is.
- Vision Transformers (ViT, DeiT): as torchvision's ViT path (:mod:`attrcli.models.vit`): the
  patch embedding is a map, the blocks are token layers shown as maps without their prefix
  tokens, position embeddings are resampled with timm's own ``resample_abs_pos_embed`` for a
  whole grid, and DiPart is refused. With a class-token head ``final`` is block L − 2 (the last
  block's patch tokens never reach the logits); with an average-pooled head it is block L − 1.
- Input size, mean and std come from the model's ``pretrained_cfg``.

Default weights are the model's pretrained file from the local Hugging Face hub cache or
torch.hub's cache, loaded without running code; attrcli never downloads them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter, _no_inplace

if TYPE_CHECKING:
    from attrcli.models.registry import ModelSpec

PREFIX = "timm:"
INSTALL = "pip install 'attrcli[timm]'"
#: timm's model modules whose structure the adapter reads (each has a member under test).
TIMM_FAMILIES = ("convnext", "deit", "efficientnet", "regnet", "resnet", "vision_transformer")
AVERAGE_POOLS = ("avg", "fast", "fastavg")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def import_timm() -> Any:
    """The timm package, or a one-line UserError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise UserError(f"timm models need the timm package, which is not installed: {INSTALL}") from None
    return timm


def supported_names() -> list[str]:
    """timm's architectures in the families the adapter reads (``attrcli models --family timm``);
    a member whose structure does not fit (distilled DeiT, attention pooling) is refused by name."""
    timm = import_timm()
    return sorted({name for family in TIMM_FAMILIES for name in timm.list_models(module=family)})


def _family_of(timm: Any, name: str) -> str:
    arch = timm.models.get_arch_name(name)
    if not timm.models.is_model(arch):
        raise UserError(
            f"unknown timm model {name!r}; valid: a timm architecture of the families "
            f"{', '.join(TIMM_FAMILIES)} (attrcli models --family timm lists them)"
        )
    for family in TIMM_FAMILIES:
        if timm.models.is_model_in_modules(arch, [family]):
            return family
    raise UserError(
        f"timm model {name} is not supported: its family does not fit the adapter; valid: the timm "
        f"families {', '.join(TIMM_FAMILIES)} (attrcli models --family timm lists them)"
    )


def timm_spec(name: str, *, cell_size: int | None = None, **kwargs: Any) -> ModelSpec:
    """The spec of ``timm:NAME`` (``name`` without the prefix; a pretrained tag such as
    ``resnet50.a1_in1k`` selects that tag's config). ``kwargs`` go to ``timm.create_model``
    (tests build small members: ``img_size=32, depth=2``); ``cell_size`` overrides the
    pretrained config's input size."""
    from attrcli.models.registry import ModelSpec

    timm = import_timm()
    family = _family_of(timm, name)
    factory = partial(timm.create_model, name, pretrained=False, **kwargs)
    with torch.device("meta"):
        module = factory()
    cfg = dict(module.pretrained_cfg)
    _check_structure(module, name)
    _, height, width = cfg.get("input_size", (3, 224, 224))
    if height != width and cell_size is None:
        raise UserError(f"timm model {name} takes {height}x{width} images; attrcli needs square cells")
    spec_name = PREFIX + name if not kwargs and cell_size is None else PREFIX + name + "+custom"
    return ModelSpec(
        name=spec_name,
        family="timm",
        factory=factory,
        cell_size=int(cell_size or height),
        num_classes=int(module.num_classes),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        description=f"timm {name} ({family}), {cfg.get('tag') or 'default'} config",
        default_weights=timm_weights,
    )


def _arch(spec: ModelSpec) -> str:
    return spec.name[len(PREFIX):]


def cached_weights_file(name: str) -> Path | None:
    """The pretrained file of timm model ``name`` if it is in the local Hugging Face hub cache or
    torch.hub's cache (where ``timm.create_model(name, pretrained=True)`` puts it), else None."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(timm.models.get_arch_name(name))
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
        for filename in files:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file() and path.suffix in (".pth", ".pt", ".bin", ".safetensors"):
            return path
    return None


def timm_weights(spec: ModelSpec, *, cache_dir: Path, progress: Any = None) -> dict[str, torch.Tensor]:
    """The pretrained weights of ``spec`` from the local cache, never downloaded."""
    from attrcli.models.registry import load_state_dict_file

    name = _arch(spec)
    path = cached_weights_file(name)
    if path is None:
        raise UserError(
            f"no pretrained weights for {spec.name} in the local cache: attrcli does not download; "
            f"fetch them once with python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
            "or pass --weights FILE (.pth or .safetensors) or --weights random"
        )
    return load_state_dict_file(path)


# --- structure -----------------------------------------------------------------------------


def _is_vit(module: nn.Module) -> bool:
    return all(hasattr(module, attr) for attr in ("patch_embed", "blocks", "pos_embed", "num_prefix_tokens"))


def _check_structure(module: nn.Module, name: str) -> None:
    """Refuse (one line) a member whose head or layout the adapter cannot read."""
    if _is_vit(module):
        problem = None
        if type(module).__name__ != "VisionTransformer":
            problem = f"it is a {type(module).__name__} (several heads or tokens besides the class token)"
        elif getattr(module, "attn_pool", None) is not None:
            problem = "its head pools with attention"
        elif module.global_pool not in ("token", "avg"):
            problem = f"its head pools by {module.global_pool!r}"
        elif module.pos_embed is None or getattr(module.patch_embed, "flatten", True) is False:
            problem = "it has no absolute position embedding over flattened patches"
        if problem:
            raise UserError(
                f"timm model {name} is not supported: {problem}; valid: ViTs with a class-token or "
                "average-pooled head, and the CNN families (attrcli models --family timm)"
            )
        return
    pools = [m for m in _head_modules(module) if type(m).__name__ == "SelectAdaptivePool2d"]
    if not pools or pools[0].pool_type not in AVERAGE_POOLS:
        kind = pools[0].pool_type if pools else "no global pooling"
        raise UserError(
            f"timm model {name} is not supported: its head does not start with global average pooling "
            f"({kind}); valid: CNN members with an average-pooled head, and ViTs (attrcli models --family timm)"
        )


_CALL_ORDER: dict[tuple, list[str]] = {}


def _called_children(module: nn.Module) -> list[str]:
    """Names of the top-level children that ``forward_features`` calls, in call order (traced
    on the meta device with the model's input size; remembered per class and children)."""
    size = tuple(module.pretrained_cfg.get("input_size", (3, 224, 224)))
    key = (type(module), size, tuple((name, type(child)) for name, child in module.named_children()))
    if key not in _CALL_ORDER:
        _CALL_ORDER[key] = _trace_children(_meta_copy(module), size)
    return list(_CALL_ORDER[key])


def _trace_children(module: nn.Module, size: tuple) -> list[str]:
    order: list[str] = []
    hooks = [
        child.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, child in module.named_children()
    ]
    try:
        with torch.no_grad():
            module.forward_features(torch.empty(1, *size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order))


def _head_modules(module: nn.Module) -> list[nn.Module]:
    called = set(_called_children(module))
    return [m for name, child in module.named_children() if name not in called for m in child.modules()]


def _meta_copy(module: nn.Module) -> nn.Module:
    param = next(module.parameters(), None)
    if param is not None and param.device.type == "meta":
        return module
    import copy

    return copy.deepcopy(module).to("meta")


def _flatten(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """A plain ``nn.Sequential`` opened into its members (recursively); anything else is one block."""
    if type(module) is nn.Sequential and len(module) > 0:
        return [block for index, child in enumerate(module) for block in _flatten(f"{name}.{index}", child)]
    return [(name, module)]


def timm_adapter(module: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int) -> ModelAdapter:
    """Adapter of a timm model, read from its structure (see the module docstring)."""
    _no_inplace(module)
    module.eval()
    if _is_vit(module):
        return _vit_adapter(module, name=name, cell_size=cell_size, mean=mean, std=std, num_classes=num_classes)
    children = dict(module.named_children())
    called = _called_children(module)
    blocks = [block for child in called for block in _flatten(child, children[child])]
    paths = [path for path, _ in blocks]
    stages, layer_alias = [], {}
    for info in module.feature_info:
        stage = info["module"]
        members = [p for p in paths if p == stage or p.startswith(stage + ".")]
        if not members:
            continue
        if members[-1] != stage:
            layer_alias[stage] = members[-1]
        stages.append((stage, info["reduction"]))
    main = [stage for stage, reduction in stages if reduction >= 4] or [stage for stage, _ in stages]

    def head(features: torch.Tensor) -> torch.Tensor:
        return module.forward_head(features)

    return ModelAdapter(
        name=name, module=module, blocks=blocks, head=head, gap_head=True,
        aliases={"middle": main[min(1, len(main) - 1)], "final": main[-1]},
        stage_layers=[stage for stage, _ in stages], cell_size=cell_size, num_classes=num_classes,
        mean=tuple(mean), std=tuple(std), layer_alias=layer_alias,
    )


# --- Vision Transformers -------------------------------------------------------------------


class PatchMap(nn.Module):
    """timm's patch embedding as a map ``(B, C, h, w)``: its projection, then its norm over channels."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.embed = vit.patch_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed.proj(x)
        return self.embed.norm(patches.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FirstTokenBlock(nn.Module):
    """Patch map to tokens (prefix tokens and position embeddings, resampled by timm for a map
    of another size), then timm's pre-block steps and the first block."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        vit = self.vit
        batch, _, height, width = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        prefix = [t.expand(batch, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        own = 0 if vit.no_embed_class else vit.num_prefix_tokens
        pos = resample_abs_pos_embed(
            vit.pos_embed, new_size=(height, width), old_size=vit.patch_embed.grid_size, num_prefix_tokens=own,
        )
        if vit.no_embed_class:
            tokens = torch.cat(prefix + [tokens + pos], dim=1)
        else:
            tokens = torch.cat(prefix + [tokens], dim=1) + pos
        tokens = vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))
        return vit.blocks[0](tokens)


def _tokens_to_map(prefix: int):
    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        batch, count, channels = tokens.shape
        side = int(round((count - prefix) ** 0.5))
        if side * side != count - prefix:
            raise ValueError(f"{count - prefix} patch tokens do not form a square map")
        return tokens[:, prefix:].transpose(1, 2).reshape(batch, channels, side, side)

    return to_map


def _vit_adapter(module: nn.Module, *, name: str, cell_size: int, mean, std, num_classes: int) -> ModelAdapter:
    paths = [f"blocks.{index}" for index in range(len(module.blocks))]
    blocks: list[tuple[str, nn.Module]] = [("patch_embed", PatchMap(module)), (paths[0], FirstTokenBlock(module))]
    blocks += [(path, block) for path, block in zip(paths[1:], list(module.blocks)[1:])]
    class_token = module.global_pool == "token"
    reaching = [path for path, _ in (blocks[:-1] if class_token else blocks)]

    def head(tokens: torch.Tensor) -> torch.Tensor:
        return module.forward_head(module.norm(tokens))

    return ModelAdapter(
        name=name, module=module, blocks=blocks, head=head, gap_head=True,
        aliases={"middle": blocks[len(paths) // 2][0], "final": reaching[-1]},
        stage_layers=reaching, cell_size=cell_size, num_classes=num_classes, mean=tuple(mean), std=tuple(std),
        token_layers=frozenset(paths), tokens_to_map=_tokens_to_map(module.num_prefix_tokens), part_heads=False,
    )
