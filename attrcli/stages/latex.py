"""The per-key summary as booktabs LaTeX tables, the way papers show it (``attrcli export
--format latex``): one table per model, methods as rows, settings × layers as columns, each cell
the median localization score with its bootstrap interval, the best median of a column (as
printed, three decimals; ties all) in bold.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from attrcli.metrics.selection import natural_key
from attrcli.metrics.summary import ScoreSummary
from attrcli.names import LAYERS, PAPER_METHODS, PAPER_SETTINGS

_SPECIAL = re.compile(r"([\\&%$#_{}~^])")
_REPLACE = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text: str) -> str:
    """``text`` safe in LaTeX's text mode (``s-intgrad:k=9`` stays readable, ``a_b`` becomes
    ``a\\_b``)."""
    return _SPECIAL.sub(lambda m: _REPLACE.get(m[1], "\\" + m[1]), str(text))


def _rank(order: tuple[str, ...], value: str) -> tuple:
    return (order.index(value) if value in order else len(order), natural_key(value))


def _method_rank(method: str) -> tuple:
    return (_rank(PAPER_METHODS, method.partition(":")[0].partition("@")[0]), natural_key(method))


def cell_text(row: ScoreSummary, best: bool) -> str:
    """``0.812 [0.75, 0.86]`` (median and interval; the interval left out when absent)."""
    median = f"{row.median:.3f}"
    text = rf"\textbf{{{median}}}" if best else median
    low, high = row.median_ci
    if math.isfinite(low) and math.isfinite(high):
        text += rf" {{\scriptsize[{low:.2f}, {high:.2f}]}}"
    return text


def latex_summary(rows: list[ScoreSummary]) -> str:
    """Booktabs tables (``\\usepackage{booktabs}``) of the medians of ``rows``, one per model.

    Column groups are settings (with the grid file's name when a setting has several); a key
    missing from the selection is ``--``.
    """
    out = ["% attrcli export --format latex: needs \\usepackage{booktabs}"]
    for model in sorted({r.model for r in rows}, key=natural_key):
        mine = [r for r in rows if r.model == model]
        grids_of: dict[str, set[str]] = {}
        for r in mine:
            grids_of.setdefault(r.setting, set()).add(r.grids)
        groups = sorted({(r.setting, r.grids) for r in mine},
                        key=lambda g: (_rank(PAPER_SETTINGS, g[0]), natural_key(g[1])))
        columns = [(g, layer) for g in groups
                   for layer in sorted({r.layer for r in mine if (r.setting, r.grids) == g},
                                       key=lambda v: _rank(LAYERS, v))]
        methods = sorted({r.method for r in mine}, key=_method_rank)
        by = {((r.setting, r.grids), r.layer, r.method): r for r in mine}
        best = {}
        for group, layer in columns:
            here = [r for (g, lay, _), r in by.items() if g == group and lay == layer and math.isfinite(r.median)]
            if here:
                best[(group, layer)] = max(round(r.median, 3) for r in here)  # as printed: ties all bold
        confidence = next((r.confidence for r in mine if r.confidence), None)
        level = f"{100 * confidence:g}\\,\\% interval" if confidence else "interval"
        grids = ", ".join(sorted({escape(r.grids) for r in mine}))
        out += [
            r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{Median localization score [{level}, bootstrap over grid images] of "
            rf"\texttt{{{escape(model)}}} (grids \texttt{{{grids}}}); best median per column in bold.}}",
            r"\begin{tabular}{l" + "".join(" " + "c" * sum(1 for g, _ in columns if g == group)
                                          for group in groups) + "}",
            r"\toprule",
        ]
        header, rules, start = [""], [], 2
        for group in groups:
            width = sum(1 for g, _ in columns if g == group)
            setting, grid = group
            label = escape(setting if len(grids_of[setting]) == 1 else f"{setting} ({grid})")
            header.append(rf"\multicolumn{{{width}}}{{c}}{{{label}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        out += [" & ".join(header) + r" \\", " ".join(rules),
                " & ".join(["Method"] + [escape(layer) for _, layer in columns]) + r" \\", r"\midrule"]
        for method in methods:
            cells = [escape(method)]
            for group, layer in columns:
                row = by.get((group, layer, method))
                cells.append("--" if row is None else cell_text(row, round(row.median, 3) == best.get((group, layer))))
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def latex_for(score_paths: list[Path]) -> str:
    """:func:`latex_summary` of the score artifacts' summaries."""
    from attrcli.metrics.summary import summarize

    return latex_summary(summarize(score_paths))
