"""Models: the registry, torchvision's families, the embedded digits models, and timm's and the
``bcos`` package's models by name (``timm:NAME``, ``bcos:NAME``)."""

# The one device resolver is attrcli.devices'; re-exported here until every caller imports it there.
from attrcli.devices import resolve_device
from attrcli.models import digits, torchvision_models  # noqa: F401  (register the models)
from attrcli.models.adapter import ModelAdapter
from attrcli.models.registry import (
    MODELS,
    ModelInfo,
    ModelSpec,
    create_model,
    describe_model,
    family_members,
    list_models,
    load_state_dict_file,
    state_dict_hash,
)

__all__ = [
    "MODELS",
    "ModelAdapter",
    "ModelInfo",
    "ModelSpec",
    "create_model",
    "describe_model",
    "family_members",
    "list_models",
    "load_state_dict_file",
    "resolve_device",
    "state_dict_hash",
]
