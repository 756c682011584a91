"""DiFull's target-cell rows, for methods that treat each target's cell as its head's whole input."""

from __future__ import annotations

import torch


def cell_rows(ctx) -> torch.Tensor | None:
    """Network-layout rows of the target cells in DiFull, grid-major (row ``r`` shows target
    ``r % T`` of grid image ``r // T``), as :meth:`GridSetting.target_rows`; None in connected
    settings. Methods whose DiFull map of a head is computed from that head's cell alone use
    these rows whether or not the engine computed the other cells."""
    setting = ctx.setting
    if not setting.disconnected:
        return None
    first = torch.arange(ctx.grids, device=ctx.device)[:, None] * setting.n**2
    return (first + ctx.targets.cells[None]).reshape(-1)
