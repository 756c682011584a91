"""``reports/<study>/index.html``: one self-contained page of a study (or of any selection).

The page holds the description and provenance, the summary table (sortable by any column, with
the bootstrap intervals), the figures of the run (PNG and SVG up to :data:`EMBED_LIMIT` bytes
embedded as data URIs; PDF figures, which browsers do not show inline, and larger files linked by
relative path), each correlation artifact as a
heat-map table, each comparison artifact as a table of paired differences, and per key its AggAtt
row (supplement H.4) and the median example of every bin, drawn here as small PNGs from the AggAtt
and attribution artifacts. The only script is a short inline sorter: no network access at view
time. The page is deterministic (no timestamps; the same inputs give the same bytes) and written
only when its bytes change.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import struct
from pathlib import Path

import numpy as np

from attrcli.metrics.summary import ScoreSummary
from attrcli.names import LAYERS, PAPER_METHODS, PAPER_SETTINGS
from attrcli.plots.thumbnails import Examples, aggatt_strip, examples_strips
from attrcli.store import ArtifactKey, read_artifact
from attrcli.store.files import write_bytes

BINS = ("0–2 %", "2–5 %", "5–50 %", "50–95 %", "95–98 %", "98–100 %")
EMBED_LIMIT = 1_000_000  # bytes: larger figures are linked (the AggAtt and examples figures of a
# whole study run to megabytes; the per-key sections show the same content in small tiles)
_MEDIA = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0}td.t,th.t{text-align:left}
table.sortable th{cursor:pointer}table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}
small{color:#666}figure{margin:1em 0}figure img{max-width:100%}
.keys{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:0 1.5em}
.key img{image-rendering:pixelated;display:block;margin:2px 0}.key h3{font-size:.95em}.heat td{min-width:3.2em;color:#000}
code{background:#f4f4f4;padding:0 3px;white-space:pre-wrap}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        if (x === "" || y === "") { return (x === "") - (y === "") || a.dataset.order - b.dataset.order; }
        var nx = Number(x), ny = Number(y);
        var c = isNaN(nx) || isNaN(ny) ? (x < y ? -1 : x > y ? 1 : 0) : nx - ny;
        return dir * c || a.dataset.order - b.dataset.order;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _data_uri(media: str, data: bytes) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _rank(order: tuple[str, ...], value: str) -> int:
    return order.index(value) if value in order else len(order)


def _key_order(key: ArtifactKey) -> tuple:
    base = key.method.partition(":")[0].partition("@")[0]
    return (key.grids, _rank(PAPER_SETTINGS, key.setting), key.setting, key.model,
            _rank(LAYERS, key.layer), key.layer, _rank(PAPER_METHODS, base), key.method)


def anchor(key: ArtifactKey) -> str:
    """The page's id of a key's section."""
    return "key-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{key.grids}-{key.label()}").strip("-")


def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(bounds: tuple[float, float], digits: int = 2, scale: float = 1.0) -> str:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" <small>[{low * scale:.{digits}f}, {high * scale:.{digits}f}]</small>"


def _sortable(value) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return html.escape(str(value), quote=True)


def _cell(shown: str, value, text: bool = False) -> str:
    cls = ' class="t"' if text else ""
    return f'<td{cls} data-sort="{_sortable(value)}">{shown}</td>'


def _th(name: str, text: bool) -> str:
    return f'<th class="t">{html.escape(name)}</th>' if text else f"<th>{html.escape(name)}</th>"


def _pointing_share(path: str) -> float:
    import h5py

    with h5py.File(path, "r") as handle:
        if "pointing" not in handle:
            return float("nan")
        hits = np.asarray(handle["pointing"], dtype=np.float64)
    return float(hits.mean()) if hits.size else float("nan")


def summary_html(rows: list[ScoreSummary], linked: set[str]) -> str:
    """The sortable summary table, one row per key (a key links to its section)."""
    pointing = [_pointing_share(r.path) for r in rows]
    with_pointing = any(math.isfinite(p) for p in pointing)
    with_grids = len({r.grids for r in rows}) > 1
    heads = (["grids"] if with_grids else []) + ["setting", "model", "layer", "method", "count",
                                                  "median [CI]", "q1", "q3", "mean [CI]", "perfect % [CI]"]
    heads += (["pointing"] if with_pointing else []) + ["chance"]
    text = {"grids", "setting", "model", "layer", "method"}
    out = ['<table class="sortable" id="summary"><thead><tr>']
    out += [_th(h, h in text) for h in heads]
    out.append("</tr></thead><tbody>")
    ordered = sorted(zip(rows, pointing), key=lambda rp: _key_order(ArtifactKey.from_path(rp[0].path)))
    for i, (r, share) in enumerate(ordered):
        key = ArtifactKey.from_path(r.path)
        method = html.escape(r.method)
        if anchor(key) in linked:
            method = f'<a href="#{anchor(key)}">{method}</a>'
        cells = ([_cell(html.escape(r.grids), r.grids, True)] if with_grids else []) + [
            _cell(html.escape(r.setting), r.setting, True), _cell(html.escape(r.model), r.model, True),
            _cell(html.escape(r.layer), f"{_rank(LAYERS, r.layer)}{r.layer}", True),
            _cell(method, r.method, True), _cell(str(r.count), float(r.count)),
            _cell(_num(r.median) + _ci(r.median_ci), r.median), _cell(_num(r.q1), r.q1),
            _cell(_num(r.q3), r.q3), _cell(_num(r.mean) + _ci(r.mean_ci), r.mean),
            _cell(_num(100 * r.perfect, 1) + _ci(r.perfect_ci, 0, 100), r.perfect)]
        if with_pointing:
            cells.append(_cell(_num(share), share))
        cells.append(_cell(_num(r.chance), r.chance))
        out.append(f'<tr data-order="{i}">' + "".join(cells) + "</tr>")
    level = next((r.confidence for r in rows if r.confidence), None)
    out.append("</tbody></table>")
    out.append(f"<p><small>[CI]: {100 * level:g} % bootstrap interval over grid images. "
               "Click a column to sort; again to reverse.</small></p>" if level else
               "<p><small>Click a column to sort; again to reverse.</small></p>")
    return "\n".join(out)


def _heat_colour(value: float) -> str:
    """Blue (−1) through white (0) to red (+1)."""
    if not math.isfinite(value):
        return "#eeeeee"
    v = max(-1.0, min(1.0, value))
    fade = int(round(255 * (1 - abs(v))))
    return f"rgb(255,{fade},{fade})" if v >= 0 else f"rgb({fade},{fade},255)"


def correlation_html(path: Path) -> str:
    """A correlation artifact as a heat-map table (the interval of each coefficient as a tooltip)."""
    art = read_artifact(path)
    matrix, low, high = (np.asarray(art.data[k], dtype=np.float64) for k in ("matrix", "low", "high"))
    rows, columns = list(art.attrs["rows"]), list(art.attrs["columns"])
    out = [f"<h3>{html.escape(Path(path).stem)}</h3>",
           f"<p><small>Spearman ρ over {int(art.attrs.get('count', 0))} attributions per key; "
           "hover a cell for its interval.</small></p>", '<table class="heat"><thead><tr><th></th>']
    out += [f'<th>{html.escape(c).replace("/", "/<br>")}</th>' for c in columns]
    out.append("</tr></thead><tbody>")
    for i, label in enumerate(rows):
        cells = []
        for j in range(len(columns)):
            tip = f"[{low[i, j]:.2f}, {high[i, j]:.2f}]" if math.isfinite(low[i, j]) else "no interval"
            cells.append(f'<td style="background:{_heat_colour(matrix[i, j])}" title="{tip}">'
                         f"{_num(matrix[i, j], 2) or '–'}</td>")
        out.append(f'<tr><th class="t">{html.escape(label)}</th>' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def comparison_html(path: Path) -> str:
    """A comparison artifact as a sortable table of paired differences (first − second)."""
    art = read_artifact(path)
    keys, data = list(art.attrs["keys"]), art.data
    heads = ["first", "second", "Δ median [CI]", "Δ mean [CI]", "W", "p (Holm)", "first > second",
             "first < second"]
    out = [f"<h3>{html.escape(Path(path).stem)}</h3>", '<table class="sortable"><thead><tr>']
    out += [_th(h, h in ("first", "second")) for h in heads]
    out.append("</tr></thead><tbody>")
    for row, (first, second) in enumerate(np.asarray(data["pairs"]).tolist()):
        dm, dmean = float(data["delta_median"][row]), float(data["delta_mean"][row])
        cells = [_cell(html.escape(keys[first]), keys[first], True), _cell(html.escape(keys[second]), keys[second], True),
                 _cell(f"{dm:+.3f}" + _ci(tuple(data["delta_median_ci"][row]), 3), dm),
                 _cell(f"{dmean:+.3f}" + _ci(tuple(data["delta_mean_ci"][row]), 3), dmean)]
        for name, digits in (("statistic", 1), ("p_adjusted", 4), ("higher", 2), ("lower", 2)):
            value = float(data[name][row])
            cells.append(_cell(_num(value, digits), value))
        out.append(f'<tr data-order="{row}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _png_img(alt: str, data: bytes, scale: int = 2) -> str:
    """An embedded PNG shown at ``scale`` times its size (small tiles, drawn pixelated)."""
    width, height = struct.unpack(">II", data[16:24])
    return (f'<img alt="{html.escape(alt)}" width="{scale * width}" height="{scale * height}" '
            f'src="{_data_uri("image/png", data)}">')


def key_html(path: Path, examples: Examples | str) -> str:
    """A key's section: its AggAtt row and the median example of each bin (``examples`` from
    :func:`~attrcli.plots.thumbnails.examples_strips`)."""
    key = ArtifactKey.from_path(path)
    strip, counts = aggatt_strip(path)
    label = key.label()
    out = [f'<div class="key" id="{anchor(key)}"><h3>{html.escape(label)} '
           f"<small>({html.escape(key.grids)})</small></h3>",
           f"<small>AggAtt bins {' · '.join(BINS)}; attributions per bin: {' '.join(map(str, counts))}</small>",
           _png_img(f"AggAtt of {label}", strip)]
    if isinstance(examples, str):
        out.append(f"<small>median examples unavailable: {html.escape(examples)}</small>")
    else:
        shown = " ".join("–" if not math.isfinite(s) else f"{s:.2f}" for s in examples.scores)
        out += [f"<small>median example per bin: map and grid image (target cell outlined); scores {shown}</small>",
                _png_img(f"median example maps of {label}", examples.maps),
                _png_img(f"median example images of {label}", examples.images)]
    out.append("</div>")
    return "\n".join(out)


def _link(path: Path, report_dir: Path, note: str) -> str:
    try:
        href = path.resolve().relative_to(Path(report_dir).resolve()).as_posix()
    except ValueError:
        href = path.resolve().as_uri()
    return f'<p><a href="{html.escape(href)}">{html.escape(path.name)}</a> <small>({note})</small></p>'


def figure_html(path: Path, report_dir: Path, embed_limit: int = EMBED_LIMIT) -> str:
    """A figure embedded (PNG, SVG, JPEG up to ``embed_limit`` bytes) or linked relative to the
    page (PDF, which browsers do not show inline, and larger files)."""
    path = Path(path)
    media = _MEDIA.get(path.suffix.lower())
    if media is None:
        return _link(path, report_dir, "not embedded: open the file")
    size = path.stat().st_size
    if size > embed_limit:
        return _link(path, report_dir, f"{size / 1e6:.1f} MB, over the page's embedding limit: "
                     "the file beside this page")
    name = html.escape(path.name)
    uri = _data_uri(media, path.read_bytes())
    return f'<figure><img alt="{name}" src="{uri}"><figcaption><small>{name}</small></figcaption></figure>'


def render_html(*, report_dir: Path, title: str, provenance: dict, summary_rows: list[ScoreSummary],
                figures: list[Path], correlations: list[Path], comparisons: list[Path],
                aggatts: list[Path], description: str = "", embed_limit: int = EMBED_LIMIT) -> str:
    """The page's text (see :func:`write_html`)."""
    keyed = sorted((Path(p) for p in dict.fromkeys(aggatts)), key=lambda p: _key_order(ArtifactKey.from_path(p)))
    linked = {anchor(ArtifactKey.from_path(p)) for p in keyed}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if description:
        parts.append(f"<p>{html.escape(description)}</p>")
    parts.append('<h2>Provenance</h2><table id="provenance"><tbody>')
    for name, value in provenance.items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True, indent=1)
        parts.append(f'<tr><th class="t">{html.escape(str(name))}</th><td class="t"><code>'
                     f"{html.escape(shown)}</code></td></tr>")
    parts.append("</tbody></table>")
    parts += ["<h2>Summary</h2>", "<p><small>Localization score per key (supplement H.3): median "
              "[interval], quartiles, mean [interval], share of perfect scores.</small></p>",
              summary_html(summary_rows, linked)]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [figure_html(f, report_dir, embed_limit) for f in figures]
    if correlations:
        parts.append("<h2>Correlations</h2>")
        parts += [correlation_html(Path(c)) for c in correlations]
    if comparisons:
        parts.append("<h2>Paired comparisons</h2>")
        parts += [comparison_html(Path(c)) for c in comparisons]
    if keyed:
        parts.append("<h2>AggAtt and median examples per key</h2>")
        examples = examples_strips(keyed)
        parts += ['<div class="keys">', *(key_html(p, examples[p]) for p in keyed), "</div>"]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


def write_html(*, report_dir: Path, title: str, provenance: dict, summary_rows: list[ScoreSummary],
               figures: list[Path], correlations: list[Path], comparisons: list[Path],
               aggatts: list[Path], description: str = "", embed_limit: int = EMBED_LIMIT) -> Path:
    """Write ``report_dir/index.html`` (module docstring) when its bytes differ from the file
    there; return its path. ``summary_rows`` are :func:`attrcli.metrics.summary.summarize`'s,
    ``provenance`` name → text or JSON-able value, shown in its order; ``aggatts`` the AggAtt
    artifacts shown per key; figures over ``embed_limit`` bytes are linked, not embedded."""
    page = render_html(report_dir=report_dir, title=title, provenance=provenance, summary_rows=summary_rows,
                       figures=figures, correlations=correlations, comparisons=comparisons,
                       aggatts=aggatts, description=description, embed_limit=embed_limit).encode()
    out = Path(report_dir) / "index.html"
    try:
        if out.read_bytes() == page:
            return out
    except OSError:
        pass
    return write_bytes(out, page, what="report")


def provenance_of(score_paths: list[Path]) -> dict:
    """What the scores were computed from: each grid file's and model's content hash, and the
    versions of the libraries that shape results."""
    from attrcli.store import read_provenance
    from attrcli.store.artifacts import library_versions

    grids, models = {}, {}
    for path in score_paths:
        key = ArtifactKey.from_path(path)
        attrs = read_artifact(path, names=[]).attrs
        grids[key.grids] = str(attrs.get("grids_hash", "?"))
        source = key.sibling("attributions", path)
        if source.is_file():
            models[key.model] = read_provenance(source).get("inputs", {}).get("model", "?")
    return {"grid files (sha256)": dict(sorted(grids.items())), "model weights (sha256)": dict(sorted(models.items())),
            "versions": library_versions()}


def selection_report(*, score_paths: list[Path], report_dir: Path, title: str, correlations: list[Path],
                     comparisons: list[Path], figures: list[Path], selection: dict) -> Path:
    """:func:`write_html` of any selection of score artifacts (``attrcli report``): the AggAtt
    artifacts found beside the scores are shown per key."""
    from attrcli.metrics.summary import summarize

    aggatts = [p for p in (ArtifactKey.from_path(s).sibling("aggatt", s) for s in score_paths) if p.is_file()]
    provenance = {"selection": {k: v for k, v in selection.items() if v is not None},
                  "score artifacts": len(score_paths), **provenance_of(score_paths)}
    return write_html(report_dir=report_dir, title=title, provenance=provenance,
                      summary_rows=summarize(score_paths), figures=figures, correlations=correlations,
                      comparisons=comparisons, aggatts=aggatts)
