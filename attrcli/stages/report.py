"""The study's report: ``summary.md`` with tables and structural findings (the figures are drawn
by :mod:`attrcli.stages.figures`; ``draw_figures`` is re-exported here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attrcli.engine.precision import split_key_method
from attrcli.names import LAYERS, PAPER_SETTINGS
from attrcli.stages.figures import draw_figures
from attrcli.store import ArtifactKey, read_artifact
from attrcli.store.files import write_bytes

__all__ = ["conditioning_notes", "draw_figures", "findings", "smoothing_findings", "write_summary"]


def _spec(method: str) -> str:
    """A key's method without its precision suffix (``gradcam@bf16`` -> ``gradcam``): a study
    computes in one precision, and its findings read the method."""
    return split_key_method(method)[0]


def _base_method(spec: str) -> bool:
    """A method of the study's own list (with any parameters), not a derived smoothing key."""
    return not _spec(spec).startswith(("s-", "smoothgrad-"))


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


def _ci(bounds: tuple[float, float], digits: int = 3) -> str:
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def _has(bounds: tuple[float, float]) -> bool:
    return bool(np.isfinite(bounds).all())


class _Evidence:
    """Intervals behind the findings: stored ones, and paired differences computed on demand."""

    def __init__(self, rows: list) -> None:
        from attrcli.metrics.intervals import BootstrapConfig

        stored = next((r for r in rows if r.confidence), None)
        recorded = {
            "confidence": stored.confidence, "resamples": stored.resamples,
            "method": stored.interval_method, "seed": stored.seed,
        } if stored else {}
        self.config = BootstrapConfig(**{k: v for k, v in recorded.items() if v is not None})
        self.level = f"{100 * self.config.confidence:g} % interval"

    def verdict(self, supported: bool, why: str = "") -> str:
        return f"supported by the {self.level}" if supported else (
            f"not supported by the {self.level}" + (f" ({why})" if why else ""))

    def direction(self, first, second) -> tuple[str, str]:
        """How ``first`` relates to ``second`` by median, and the paired evidence for it."""
        pair = self.paired(first, second)
        if pair is None:
            verb = "beats" if first.median > second.median else "does not beat"
            return verb, "no paired interval (the keys score different attributions)"
        low, high = pair.delta_median_ci
        delta = f"Δmedian {pair.delta_median:+.3f} {_ci(pair.delta_median_ci)}"
        if pair.delta_median == 0:
            return "ties", delta
        positive = pair.delta_median > 0
        supported = low > 0 if positive else high < 0
        why = "it includes 0" if low <= 0 <= high else ""
        return ("beats" if positive else "scores below"), f"{delta}, {self.verdict(supported, why)}"

    def paired(self, first, second):
        """``first`` minus ``second`` (score summaries of keys over the same attributions)."""
        from attrcli.errors import UserError
        from attrcli.metrics.correlation import ScoredAttributions, check_comparable
        from attrcli.metrics.intervals import compare_keys

        arrays, identities = [], []
        for row in (first, second):
            art = read_artifact(row.path, names=["scores", "grid_index", "cells", "heads"])
            arrays.append(np.asarray(art.data["scores"], dtype=np.float64))
            identities.append(ScoredAttributions(
                f"{row.setting}/{row.model}/{row.layer}/{row.method}",
                str(art.attrs.get("grids_hash", "?")),
                *(np.asarray(art.data[k]) for k in ("grid_index", "cells", "heads"))))
        try:
            check_comparable(identities, verb="compare")
        except UserError:
            return None
        return compare_keys(np.stack(arrays), self.config)[0]

    def delta(self, first, second, claim_positive: bool) -> str:
        """``Δmedian +0.21 [0.17, 0.25], supported by ...`` for first minus second."""
        pair = self.paired(first, second)
        if pair is None:
            return "no paired interval (the keys score different attributions)"
        low, high = pair.delta_median_ci
        supported = low > 0 if claim_positive else high < 0
        return (f"Δmedian {pair.delta_median:+.3f} {_ci(pair.delta_median_ci)}, "
                + self.verdict(supported, "it includes 0" if low <= 0 <= high else ""))


def findings(rows: list) -> list[str]:
    """Plain statements of what the scores show, each checked on the data and on its interval."""
    out: list[str] = []
    evidence = _Evidence(rows)
    gradient = ("grad", "guided-backprop", "ixg", "intgrad", "layercam")
    for model in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == model]
        exact = [r for r in mine if r.setting == "difull" and r.layer == "input" and _spec(r.method) in gradient and r.perfect == 1.0]
        if exact:
            names = ", ".join(r.method for r in exact)
            check = ""
            if all(_has(r.perfect_ci) for r in exact):
                lows = min(r.perfect_ci[0] for r in exact)
                check = (f" Their share of perfect scores has the interval "
                         f"{_ci((lows, 1.0), 2)} (or narrower): {evidence.verdict(lows == 1.0)}.")
            out.append(f"{model}, DiFull, input: {names} localize perfectly (score 1.0) on every attribution — the disconnected heads make their gradients zero outside the target cell.{check}")
        near = [r for r in mine if r.setting == "difull" and r.layer != "input" and _spec(r.method) in gradient]
        if near:
            lowest = min(near, key=lambda r: r.median)
            check = ""
            if all(_has(r.median_ci) for r in near):
                above = all(r.median_ci[0] > r.chance for r in near)
                check = (f" The lowest median, {lowest.method} at {lowest.layer}, has the interval "
                         f"{_ci(lowest.median_ci)}; that every median lies above the uniform "
                         f"baseline is {evidence.verdict(above)}.")
            out.append(f"{model}, DiFull, hidden layers: the same methods have medians ≥ {lowest.median:.3f} (exactly zero outside the cell at layer resolution; upsampling leaks a thin border).{check}")
        for layer in LAYERS:
            part = {_spec(r.method): r for r in mine if r.setting == "dipart" and r.layer == layer}
            full = {_spec(r.method): r for r in mine if r.setting == "difull" and r.layer == layer}
            drops = [m for m in gradient if m in part and m in full and part[m].median < full[m].median - 1e-9]
            if drops and layer == "input":
                checks = "; ".join(f"{m}: {evidence.delta(part[m], full[m], claim_positive=False)}" for m in drops)
                out.append(f"{model}, DiPart vs DiFull at the input: {', '.join(drops)} score lower in DiPart, where receptive fields overlap the cell borders ({checks}).")
        uniform = [r for r in mine if r.setting == "gridpg" and r.layer == "final" and _spec(r.method) in ("grad", "guided-backprop") and abs(r.q1 - r.chance) < 1e-6 and abs(r.q3 - r.chance) < 1e-6]
        if uniform:
            check = ""
            if all(_has(r.median_ci) for r in uniform):
                exact_ci = all(abs(r.median_ci[0] - r.chance) < 1e-6 and abs(r.median_ci[1] - r.chance) < 1e-6 for r in uniform)
                check = f" The medians' intervals are {_ci(uniform[0].median_ci)}: {evidence.verdict(exact_ci)}."
            out.append(f"{model}, GridPG, final: {', '.join(r.method for r in uniform)} score exactly 1/n² = {rows[0].chance:.2f} — the layer is followed by global average pooling, so every position gets the same gradient.{check}")
        below = [r for r in mine if r.setting == "gridpg" and r.layer == "input" and r.median < r.chance]
        if below:
            parts = []
            for r in below:
                if _has(r.median_ci):
                    parts.append(f"{r.method} {r.median:.3f} {_ci(r.median_ci)}, "
                                 + evidence.verdict(r.median_ci[1] < r.chance, "it reaches 1/n²"))
            check = f" ({'; '.join(parts)})" if parts else ""
            out.append(f"{model}, GridPG, input: {', '.join(r.method for r in below)} have medians below the uniform baseline 1/n²{check}.")
    return out


def smoothing_findings(rows: list) -> list[str]:
    """Whether the best smoothed kernel beats the unsmoothed method at the input (paired)."""
    from attrcli.plots.smoothing import FAMILIES

    evidence = _Evidence(rows)
    names = {"s-intgrad": "S-IntGrad", "s-ixg": "S-IxG", "intgrad": "IntGrad", "ixg": "IxG"}
    out = []
    for model in sorted({r.model for r in rows}):
        for setting in PAPER_SETTINGS:
            here = [r for r in rows if r.model == model and r.setting == setting and r.layer == "input"]
            for family, base, _ in FAMILIES:
                original = next((r for r in here if _spec(r.method) == base), None)
                smoothed = [r for r in here if _spec(r.method).split(":")[0] == family]
                if original is None or not smoothed:
                    continue
                best = max(smoothed, key=lambda r: (r.median, r.mean))
                verb, check = evidence.direction(best, original)
                out.append(f"{model}: {names[family]} ({best.method}, the best kernel by median) {verb} "
                           f"{names[base]} at the input on {setting}: {check}.")
    return out


def conditioning_notes(attributions: list[Path]) -> list[str]:
    """One line per attribution key whose method dropped ill-conditioned terms (Grad-CAM++'s
    α where ``2 + ΣA·g`` nearly vanishes; docs/methods.md)."""
    out = []
    for path in attributions:
        counts = read_artifact(path, names=[]).attrs.get("diagnostics") or {}
        if counts.get("ill_conditioned"):
            out.append(f"{ArtifactKey.from_path(path).label()}: {counts['ill_conditioned']} ill-conditioned "
                       "terms of the channel weights set to 0 (the map would otherwise depend on float rounding).")
    return out


def write_summary(
    *, study, path: Path, scores: list[Path], correlations: list[Path], figures: list[Path],
    attributions: list[Path] = (), comparisons: list[Path] = (), provenance: dict | None = None,
    sanity: list = (),
) -> Path:
    """``summary.md``: per setting and model a method × layer table, best methods, findings, the
    keys whose maps needed a conditioning guard, the paired comparisons and, with
    ``provenance``, the study file's text and hash, the CLI's overrides and the attrcli version.
    Written only when its text changes."""
    from attrcli.metrics.summary import summarize

    rows = summarize(scores)
    description = getattr(study, "description", "")
    lines = [f"# attrcli study: {study.name}", "", *([description, ""] if description else []),
             f"Models: {', '.join(study.models)}; settings: {', '.join(study.settings)}; "
             f"{study.n}×{study.n} grids of {study.cell_size}-pixel cells. "
             "Cells: median localization [quartiles] (share of perfect scores). Findings are "
             "checked against bootstrap intervals (grid images resampled, all heads of a grid "
             "together) and paired differences between keys over the same attributions.", ""]
    base = [r for r in rows if _base_method(r.method)]
    for setting in study.settings:
        for model in study.models:
            mine = [r for r in base if r.setting == setting and r.model == model]
            if not mine:
                continue
            lines += [f"## {setting} · {model}", "", f"{mine[0].count} attributions per key; uniform map = {mine[0].chance:.3f}.", ""]
            lines += _table(mine, list(study.layers)) + [""]
    statements = findings(base) + smoothing_findings(rows)
    lines += ["## Structural findings", ""] + [f"- {f}" for f in statements] + [""]
    notes = conditioning_notes(list(attributions))
    if notes:
        lines += ["## Ill-conditioned weights", ""] + [f"- {n}" for n in notes] + [""]
    smooth = [r for r in rows if not _base_method(r.method)]
    if smooth:
        lines += ["## Smoothing and SmoothGrad (input layer)", "", "| setting | model | method | median [quartiles] |", "|---|---|---|---|"]
        for r in sorted(smooth, key=lambda r: (r.setting, r.model, _spec(r.method).split(":")[0], int(_spec(r.method).split("=")[-1]) if "k=" in r.method else 0)):
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
    if comparisons:
        lines += comparison_lines(list(comparisons))
    if sanity:
        lines += sanity_lines(list(sanity))
    lines += ["## Figures", ""] + [f"- [{f.name}]({f.name})" for f in figures] + [""]
    if provenance:
        lines += provenance_lines(provenance)
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:  # a warm run writes nothing
        write_bytes(path, text.encode(), what="summary")
    return path


def comparison_lines(paths: list[Path]) -> list[str]:
    """Each comparison artifact as a table of its pairs: Δmedian with its interval, Wilcoxon p
    and Holm-adjusted p."""
    from attrcli.stages.compare import _read_pairs

    lines = ["## Paired comparisons", "",
             "Paired differences over the same attributions (first minus second key), Wilcoxon "
             "signed-rank test, p-values Holm-corrected within each comparison.", ""]
    for path in paths:
        art = read_artifact(path, names=[])
        keys = list(art.attrs.get("keys", []))
        lines += [f"### {Path(path).stem}", "", "| first | second | Δmedian [interval] | Δmean | p (Holm) |", "|---|---|---|---|---|"]
        for pair in _read_pairs(Path(path)):
            lines.append(f"| {keys[pair.first]} | {keys[pair.second]} | {pair.delta_median:+.3f} {_ci(pair.delta_median_ci)} "
                         f"| {pair.delta_mean:+.3f} | {pair.p_adjusted:.3g} |")
        lines.append("")
    return lines


def sanity_lines(results: list) -> list[str]:
    """The model-randomisation checks: each key's similarity to the trained model's maps once the
    whole network is randomised (cascading) or after the deepest single group (independent)."""
    lines = ["## Sanity checks (model randomisation)", "",
             "Similarity of each key's maps to the trained model's after the last step (Adebayo et al., "
             "2018): a method whose maps stay similar does not depend on the model.", "",
             "| key | mode | steps | Spearman [interval] | SSIM | Δscore |", "|---|---|---|---|---|---|"]
    for r in results:
        d = r.to_dict()
        spearman, ci = d["spearman"][-1], d["spearman_ci"][-1]
        shown = "—" if spearman is None else f"{spearman:.2f}" + ("" if None in ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]")
        ssim, change = d["ssim"][-1], d["score_change"][-1]
        lines.append(f"| {d['key']} | {d['mode']} | {len(d['steps'])} | {shown} | "
                     f"{'—' if ssim is None else f'{ssim:.2f}'} | {'—' if change is None else f'{change:+.3f}'} |")
    return lines + [""]


def provenance_lines(provenance: dict) -> list[str]:
    """How to rerun the study: its file (text and hash), the overrides, the attrcli version."""
    overrides = provenance.get("overrides") or {}
    shown = ", ".join(f"`{k} {v}`" if v is not True else f"`{k}`" for k, v in overrides.items()) or "none"
    return ["## Provenance", "",
            f"Study file `{Path(provenance['source']).name}` (sha256 `{provenance['sha256']}`), "
            f"CLI overrides: {shown}; attrcli {provenance['attrcli']}.", "",
            "```toml", provenance["text"].rstrip("\n"), "```", ""]
