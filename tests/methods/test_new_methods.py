"""The methods added beside the paper's (deeplift, hirescam, xgradcam, eigencam, lime,
attention-rollout, chefer): ``--method all`` plans each where it applies and skips it elsewhere;
what each declares (kind, sampling, DiFull exactness). Their formulas are tested in
test_new_cams.py, test_deeplift.py, test_lime.py and test_attention.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attrcli.data.gridfile import GridFile
from attrcli.methods import METHODS
from attrcli.methods.applicability import valid_methods
from attrcli.settings import create_setting
from attrcli.stages.plan import plan_jobs, resolve_methods
from tests.models.tiny_families import tiny

NEW = ("deeplift", "hirescam", "xgradcam", "eigencam", "lime", "attention-rollout", "chefer")
ATTENTION = {"attention-rollout", "chefer"}


def _planned(model, setting_name: str, layer: str) -> set[str]:
    setting = create_setting(setting_name, model, 2)
    grid_file = GridFile(Path("t.h5"), "t", np.empty(0), np.empty(0), 2, model.cell_size, setting.variant,
                         model.num_classes, "")
    jobs, _ = plan_jobs(grid_file, setting, setting.default_cells(), [layer], resolve_methods("all"),
                        Path("unused"), applicable_only=True)
    planned = {job.spec.name for job in jobs}
    assert planned == {m for m in valid_methods(setting, layer) if METHODS.get(m).kind != "derived"}
    return planned & set(NEW)


def test_all_plans_each_new_method_where_it_applies(conv_model):
    assert set(NEW) <= set(METHODS.names())
    for setting_name in ("gridpg", "difull", "dipart"):
        for layer in ("input", "final"):
            assert _planned(conv_model(), setting_name, layer) == set(NEW) - ATTENTION
    vit = tiny("tiny-vit")
    for setting_name in ("gridpg", "difull", "gridpg-rescaled"):
        # gradient methods and EigenCAM everywhere; attention methods at the input only; the
        # ReLU-only DeepLIFT and the perturbing LIME not on a ViT's token layers
        assert _planned(vit, setting_name, "input") == set(NEW) - {"deeplift"}
        assert _planned(vit, setting_name, "middle") == {"hirescam", "xgradcam", "eigencam"}
    assert _planned(tiny("tiny-convnext"), "gridpg", "input") == {"hirescam", "xgradcam", "eigencam", "lime"}


@pytest.mark.parametrize("name", NEW)
def test_each_declares_its_kind_sampling_and_exactness(name):
    cls = METHODS.get(name)
    kinds = {"hirescam": "gradient", "xgradcam": "gradient"}
    assert cls.kind == kinds.get(name, "model")
    assert cls.seeded == (name == "lime")
    # XGrad-CAM's weights sum over the stitched DiFull map (as Grad-CAM): not exact
    assert cls.testing.difull_exact == (name != "xgradcam")
    assert cls.whole_grid == (name == "xgradcam")
    assert cls.testing.model == ("tiny-vit" if name in ATTENTION else "")
