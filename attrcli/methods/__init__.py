"""Attribution methods, one short module each, registered in :data:`METHODS`."""

from attrcli.methods import (  # noqa: F401  (each module registers its method)
    grad,
    gradcam,
    gradcampp,
    guided_backprop,
    intgrad,
    ixg,
    layercam,
)
from attrcli.methods.base import METHODS, Method, MethodSpec, parse_method, split_methods

__all__ = ["METHODS", "Method", "MethodSpec", "parse_method", "split_methods"]
