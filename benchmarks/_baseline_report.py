"""The report of ``bench_baseline.py``: summary statistics, JSON and markdown."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

BAR_MODELS = ("vgg11", "resnet18")  # the bar: geometric mean >= 5x over these


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric mean speed-up per model and over the bar's models, the slowest key, agreement."""
    keys = [r for r in rows if r["method"] != "together"]

    def slowest(selected):
        worst = min(selected, key=lambda r: r["speedup"])
        return {k: worst[k] for k in ("model", "setting", "layer", "method", "speedup")}

    sharing = {(r["model"], r["setting"]): r["sharing"] for r in rows if r["method"] == "together"}

    def in_one_call(selected) -> float | None:
        """Geometric mean speed-up with each key charged its share of its setting's *together*
        time (in proportion to its time alone): the key-by-key figure times the sharing factor."""
        if not selected or any((r["model"], r["setting"]) not in sharing for r in selected):
            return None
        return _geomean([r["speedup"] * sharing[r["model"], r["setting"]] for r in selected])

    per_model = {}
    for model in dict.fromkeys(r["model"] for r in keys):
        mine = [r for r in keys if r["model"] == model]
        per_model[model] = {"keys": len(mine), "geomean_speedup": _geomean([r["speedup"] for r in mine]),
                            "geomean_speedup_in_one_call": in_one_call(mine), "slowest": slowest(mine)}
    bar = [r for r in keys if r["model"] in BAR_MODELS]
    statuses: dict[str, int] = {}
    for r in keys:
        statuses[map_status(r["agreement"])] = statuses.get(map_status(r["agreement"]), 0) + 1
    bar_geomean = _geomean([r["speedup"] for r in bar])
    return {
        "per_model": per_model,
        "overall_geomean_speedup": _geomean([r["speedup"] for r in keys]),
        "bar_models": list(BAR_MODELS),
        "bar_geomean_speedup": bar_geomean,
        "bar_geomean_met": None if bar_geomean is None else bar_geomean >= 5,
        "bar_geomean_speedup_in_one_call": in_one_call(bar),
        "bar_none_slower_met": None if not bar else all(r["speedup"] >= 1 for r in bar),
        "slowest": slowest(keys) if keys else None,
        "agreement": statuses,
        "differ": [{k: r[k] for k in ("model", "setting", "layer", "method")} | {"max_diff": r["agreement"]["max_diff"]}
                   for r in keys if map_status(r["agreement"]) == "differ"],
    }


def map_status(found: dict[str, Any]) -> str:
    """``agree``, ``differ``, ``not comparable``, or ``rounding``: the maps differ but agree with
    the loop run on attrcli's kernels (float32 rounding of two kernel sets, not another method)."""
    if found["status"] == "differ" and found.get("same_kernels", {}).get("status") == "agree":
        return "rounding"
    return found["status"]


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: conditions, summary, one table row per key."""
    meta, summary = report["meta"], report["summary"]
    lines = [
        f"# attrcli vs the straightforward Captum / pytorch-grad-cam loop ({meta['mode']} mode)",
        "",
        (f"{meta['date']}; device {meta['device']}; {meta['cpu_count']} CPUs, {meta['torch_threads']} torch "
         f"threads; torch {meta['torch']}, captum {meta['captum']}, grad-cam {meta['grad_cam']}; load average "
         f"{meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after. {meta['note']}"),
        "",
        ("Speed-up = loop time / attrcli time for the same attributions. *Key by key*: attrcli computes "
         "each (setting, layer, method) in its own call. *In one call*: each key charged its share of "
         "the setting's *together* time (all keys in the fewest calls), in proportion to its time alone."),
        "",
        "| model | keys | geometric mean speed-up, key by key | in one call | slowest key (key by key) |",
        "|---|---:|---:|---:|---|",
    ]
    for model, s in summary["per_model"].items():
        w = s["slowest"]
        lines.append(f"| {model} | {s['keys']} | {_fmt(s['geomean_speedup'])}× | "
                     f"{_fmt(s['geomean_speedup_in_one_call'])}× | {w['method']} @ {w['layer']}, "
                     f"{w['setting']}: {w['speedup']:.2f}× |")
    lines += [
        "",
        f"Over {', '.join(summary['bar_models'])}: geometric mean {_fmt(summary['bar_geomean_speedup'])}× key by "
        f"key (bar ≥ 5×: {summary['bar_geomean_met']}), {_fmt(summary['bar_geomean_speedup_in_one_call'])}× in "
        f"one call; no key slower than the loop: {summary['bar_none_slower_met']}. "
        f"All keys: {_fmt(summary['overall_geomean_speedup'])}×. Maps: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["agreement"].items())) + ".",
        "",
        "| model | setting | layer | method | spec | attrcli attr/s | loop attr/s | speed-up | × floor | maps |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if r["method"] == "together":
            lines.append(f"| {r['model']} | {r['setting']} | all | together | {r['calls']} call(s), sharing "
                         f"×{r['sharing']:.2f} | {r['attributions'] / r['attrcli_s']:.3g} | "
                         f"{r['attributions'] / r['loop_s']:.3g} | {r['speedup']:.2f}× | | |")
            continue
        a = r["agreement"]
        maps = map_status(a) + (f" ({a['max_diff']:.0e}" if a.get("max_diff") is not None else "")
        if "same_kernels" in a:
            maps += f"; {a['same_kernels']['max_diff']:.0e} on the same kernels"
        maps += ")" if a.get("max_diff") is not None else ""
        spec = r["spec"] + (f" ({r['channels']} ch)" if r["channels_capped"] else "")
        lines.append(f"| {r['model']} | {r['setting']} | {r['layer']} | {r['method']} | {spec} | "
                     f"{r['attrcli_per_s']:.3g} | {r['loop_per_s']:.3g} | {r['speedup']:.2f}× | "
                     f"{r['floor_ratio']:.2f} | {maps} |")
    return "\n".join(lines) + "\n"


def finite(obj: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``bench_baseline.json`` and ``bench_baseline.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = finite(report)
    paths = out_dir / "bench_baseline.json", out_dir / "bench_baseline.md"
    paths[0].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def metadata(mode: str, device: torch.device, load_before) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import captum

    try:
        grad_cam = version("grad-cam")
    except PackageNotFoundError:
        grad_cam = "missing"
    cpu = platform.processor()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": mode, "device": str(device),
        "cpu": cpu, "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "captum": captum.__version__, "grad_cam": grad_cam, "python": platform.python_version(),
        "machine": platform.machine(), "load_before": list(load_before), "load_after": list(os.getloadavg()),
        "note": "Shared machine, other jobs running: timings are noisy.",
    }
