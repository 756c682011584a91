"""The study's report: its figures and ``summary.md`` with tables and structural findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrcli.store import ArtifactKey, read_artifact


def _keys(paths: list[Path]) -> list[tuple[ArtifactKey, Path]]:
    return [(ArtifactKey.from_path(p), Path(p)) for p in paths]


def _base_method(spec: str) -> bool:
    return ":" not in spec and not spec.startswith(("s-", "smoothgrad-"))


def draw_figures(*, study, report_dir: Path, fmt: str, scores: list[Path], aggatts: list[Path],
                 correlations: list[Path], grid_files: dict[str, Path]) -> list[Path]:
    """Every figure of SPEC §4 for the study, written under ``report_dir``."""
    from attrcli.plots.aggatt import plot_aggatt
    from attrcli.plots.boxes import plot_boxes
    from attrcli.plots.correlation import plot_correlation
    from attrcli.plots.examples import plot_examples
    from attrcli.plots.smoothing import plot_smoothing

    out: list[Path] = []
    base_scores = [p for k, p in _keys(scores) if _base_method(k.method)]
    out.append(plot_boxes(score_paths=base_scores, out=report_dir / f"boxes.{fmt}", fmt=fmt))
    keyed = _keys(aggatts)
    for model in study.models:
        for setting in study.settings:
            chosen = [p for k, p in keyed if k.model == model and k.setting == setting and _base_method(k.method)]
            if chosen:
                out.append(plot_aggatt(aggatt_paths=chosen, out=report_dir / f"aggatt-{setting}-{model}.{fmt}", fmt=fmt))
        for layer in ("input", "final"):
            chosen = [p for k, p in keyed if k.model == model and k.setting == "gridpg" and k.layer == layer and _base_method(k.method)]
            if chosen:
                out.append(plot_examples(aggatt_paths=chosen, out=report_dir / f"examples-gridpg-{model}-{layer}.{fmt}", fmt=fmt))
    for path in correlations:
        out.append(plot_correlation(paths=[path], out=report_dir / f"correlation-{Path(path).stem}.{fmt}", fmt=fmt))
    sweep = [p for k, p in _keys(scores)
             if (k.layer == "input" and (k.method.split(":")[0] in ("s-intgrad", "s-ixg", "intgrad", "ixg") or k.method.startswith("smoothgrad-")))
             or (k.layer == "final" and k.method == "gradcam")]
    sweep = [p for p in sweep if ArtifactKey.from_path(p).setting in study.smoothing_settings]
    if sweep:
        out.append(plot_smoothing(score_paths=sweep, out=report_dir / f"smoothing.{fmt}", fmt=fmt))
    return out


def _table(rows: list, layers: list[str]) -> list[str]:
    by = {(r.method, r.layer): r for r in rows}
    methods = list(dict.fromkeys(r.method for r in rows))
    lines = ["| method | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for method in methods:
        cells = []
        for layer in layers:
            r = by.get((method, layer))
            cells.append("—" if r is None else f"{r.median:.3f} [{r.q1:.2f}, {r.q3:.2f}]" + (f" ({r.perfect:.0%} = 1)" if r.perfect > 0 else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    best = []
    for layer in layers:
        candidates = [r for r in rows if r.layer == layer]
        if candidates:
            top = max(candidates, key=lambda r: (r.median, r.mean))
            best.append(f"{layer}: **{top.method}** ({top.median:.3f})")
    lines.append("")
    lines.append("Best median per layer — " + "; ".join(best) + ".")
    return lines


def findings(rows: list) -> list[str]:
    """Plain statements of what the scores show, each checked on the data."""
    out: list[str] = []
    gradient = ("grad", "guided-backprop", "ixg", "intgrad", "layercam")
    for model in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == model]
        exact = [r.method for r in mine if r.setting == "difull" and r.layer == "input" and r.method in gradient and r.perfect == 1.0]
        if exact:
            out.append(f"{model}, DiFull, input: {', '.join(exact)} localize perfectly (score 1.0) on every attribution — the disconnected heads make their gradients zero outside the target cell.")
        near = [r for r in mine if r.setting == "difull" and r.layer != "input" and r.method in gradient]
        if near:
            low = min(r.median for r in near)
            out.append(f"{model}, DiFull, hidden layers: the same methods have medians ≥ {low:.3f} (exactly zero outside the cell at layer resolution; upsampling leaks a thin border).")
        for layer in ("input", "middle", "final"):
            part = {r.method: r for r in mine if r.setting == "dipart" and r.layer == layer}
            full = {r.method: r for r in mine if r.setting == "difull" and r.layer == layer}
            drops = [m for m in gradient if m in part and m in full and part[m].median < full[m].median - 1e-9]
            if drops and layer == "input":
                out.append(f"{model}, DiPart vs DiFull at the input: {', '.join(drops)} score lower in DiPart, where receptive fields overlap the cell borders.")
        uniform = [r.method for r in mine if r.setting == "gridpg" and r.layer == "final" and r.method in ("grad", "guided-backprop") and abs(r.q1 - r.chance) < 1e-6 and abs(r.q3 - r.chance) < 1e-6]
        if uniform:
            out.append(f"{model}, GridPG, final: {', '.join(uniform)} score exactly 1/n² = {rows[0].chance:.2f} — the layer is followed by global average pooling, so every position gets the same gradient.")
        below = [r.method for r in mine if r.setting == "gridpg" and r.layer == "input" and r.median < r.chance]
        if below:
            out.append(f"{model}, GridPG, input: {', '.join(below)} have medians below the uniform baseline 1/n².")
    return out


def write_summary(*, study, path: Path, scores: list[Path], correlations: list[Path], figures: list[Path]) -> Path:
    """``summary.md``: per setting and model a method × layer table, best methods, findings."""
    from attrcli.metrics.stages import summarize

    rows = summarize(scores)
    lines = [f"# attrcli study: {study.name}", "",
             f"Models: {', '.join(study.models)}; settings: {', '.join(study.settings)}; "
             f"{study.n}×{study.n} grids of {study.cell_size}-pixel cells. "
             "Cells: median localization [quartiles] (share of perfect scores).", ""]
    base = [r for r in rows if _base_method(r.method)]
    for setting in study.settings:
        for model in study.models:
            mine = [r for r in base if r.setting == setting and r.model == model]
            if not mine:
                continue
            lines += [f"## {setting} · {model}", "", f"{mine[0].count} attributions per key; uniform map = {mine[0].chance:.3f}.", ""]
            lines += _table(mine, list(study.layers)) + [""]
    lines += ["## Structural findings", ""] + [f"- {f}" for f in findings(base)] + [""]
    smooth = [r for r in rows if not _base_method(r.method)]
    if smooth:
        lines += ["## Smoothing and SmoothGrad (input layer)", "", "| setting | model | method | median [quartiles] |", "|---|---|---|---|"]
        for r in sorted(smooth, key=lambda r: (r.setting, r.model, r.method.split(":")[0], int(r.method.split("=")[-1]) if "k=" in r.method else 0)):
            lines.append(f"| {r.setting} | {r.model} | {r.method} | {r.median:.3f} [{r.q1:.2f}, {r.q3:.2f}] |")
        lines.append("")
    if correlations:
        lines += ["## Correlations", ""]
        for c in correlations:
            art = read_artifact(c)
            matrix = art.data.get("matrix")
            lines.append(f"- `{Path(c).name}`: Spearman matrix over {len(matrix) if matrix is not None else '?'} keys"
                         + (f", mean off-diagonal {np.nanmean(matrix[~np.eye(len(matrix), dtype=bool)]):.2f}" if matrix is not None and len(matrix) > 1 else "") + ".")
        lines.append("")
    lines += ["## Figures", ""] + [f"- [{f.name}]({f.name})" for f in figures] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
