"""Attribution methods, one short module each, registered in :data:`METHODS`."""

from attrcli.methods import (  # noqa: F401  (each module registers its method)
    ablationcam,
    attention,
    baselines,
    bcos,
    deeplift,
    eigencam,
    grad,
    gradcam,
    gradcampp,
    guided_backprop,
    hirescam,
    intgrad,
    ixg,
    layercam,
    lime,
    lrp,
    occlusion,
    rise,
    scorecam,
    smoothgrad,
    smoothing,
    xgradcam,
)
from attrcli.methods.base import METHODS, Method, MethodSpec, parse_method, split_methods

__all__ = ["METHODS", "Method", "MethodSpec", "parse_method", "split_methods"]
