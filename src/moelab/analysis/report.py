"""One self-contained HTML page: routing figures, top tokens, training curves and data funnel.

Built from the metrics JSON (plus optional trainer ``metrics.jsonl`` rows and data-funnel rows,
each a plain dict); figures come from ``plots`` and are inlined as base64 PNGs, so the page has
no external reference. Figures are also written beside it as PNG files.

What this module does not know: how any number was computed.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from moelab.analysis import plots

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1240px;
color:#1d2433;background:#fff;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #dde;
padding-bottom:4px}.sub{color:#667;font-size:13px}img{max-width:100%;display:block;margin:8px 0}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #dde;padding:3px 8px;
text-align:right}th{background:#f3f4f8}td.l,th.l{text-align:left}.note{font-size:13px;color:#445;max-width:900px}
code{background:#f3f4f8;padding:1px 4px;border-radius:3px}
"""

NOTES = {
    "curves": (
        "Each point is one intermediate checkpoint run over the same token sample. Saturation is "
        "the share of a checkpoint's top-k experts that the final checkpoint also picks (OLMoE "
        "Fig. 6); vocabulary specialization is the share of a frequent token id's occurrences "
        "sent to its most common expert; domain specialization is the mean total-variation "
        "distance between a domain's expert distribution and that of all tokens."
    ),
    "coactivation": "Of the tokens routed to expert i, the share also routed to expert j (OLMoE Fig. 8).",
    "domains": "Red: a domain sends more of its tokens to the expert than uniform routing (k/E) would.",
}


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[Any]], left: tuple[int, ...] = (0,)) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i in left else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3f}"


def _layer_mean(layers: list[dict], key: str) -> float | None:
    values = [plots._value(p, key) for p in layers]
    return None if any(v is None for v in values) else sum(values) / len(values)


def _checkpoint_table(metrics: dict) -> str:
    rows = []
    for c in metrics["checkpoints"]:
        layers = c["per_layer"]
        means = [_fmt(_layer_mean(layers, k)) for k in ("max_vio", "saturation",
                 "vocab_concentration", "domain_tv", "distinct_experts_per_seq")]  # fmt: skip
        dead = sum(p["dead_experts"] for p in layers)
        rows.append(
            [c["name"], _fmt(c["step"]), _fmt(c["tokens"]), means[0], _fmt(dead), *means[1:],
             f"{c['tokens_per_s']:,.0f}"]
        )  # fmt: skip
    header = ["checkpoint", "step", "tokens", "MaxVio", "dead", "saturation", "vocab spec.",
              "domain TV", "experts/seq", "collect tok/s"]  # fmt: skip
    return _table(header, rows)


def _top_tokens_table(metrics: dict, max_experts: int = 16) -> str:
    """The most specialised experts of the last MoE layer (by their top token's share)."""
    last = metrics["final"]["per_layer"][-1]
    ranked = sorted(
        enumerate(last["top_tokens"]),
        key=lambda et: (-et[1][0]["share"], -et[1][0]["count"]) if et[1] else (1, 0),
    )
    rows = []
    for e, tokens in ranked[:max_experts]:
        shown = ", ".join(f"{t.get('text', t['id'])!r} {t['share']:.2f}" for t in tokens[:6])
        rows.append([e, shown or "(no frequent token)"])
    note = (
        f"<p class='note'>Layer {last['layer']}, the {min(max_experts, len(ranked))} of "
        f"{len(ranked)} experts whose top token is most concentrated on them: each expert's "
        "frequent tokens with the share of their occurrences routed to it (all experts are in "
        "metrics.json).</p>"
    )
    return note + _table(["expert", "tokens (share)"], rows, (1,))


def _funnel_table(funnel: list[dict]) -> str:
    rows = []
    for f in funnel:
        kept = f"{100 * f['docs_out'] / f['docs_in']:.1f}%" if f["docs_in"] else "–"
        reasons = ", ".join(
            f"{k} {v:,}" for k, v in sorted(f.get("dropped", {}).items(), key=lambda kv: -kv[1])
        )
        notes = ", ".join(f"{k} {v:,}" for k, v in sorted(f.get("counters", {}).items()))
        rows.append([f["step"], f"{f['docs_in']:,}", f"{f['docs_out']:,}", kept, reasons, notes])
    header = ["step", "docs in", "docs out", "kept", "dropped because", "changes"]
    return _table(header, rows, (0, 4, 5))


def data_quality_section(quality: dict) -> str:
    """Stage 3 scored against a labelled crawl (the demo's synthetic gold): clutter-line F1 of
    the learned scorer and the rule baseline, page-type and quality-model precision/recall, and
    the category mixture before rebalancing, targeted, achieved and by gold label."""
    parts = []
    f1 = quality.get("classifiers", {}).get("clutter_line_f1")
    if f1:
        rows = [
            [name, f"{v['precision']:.1f}", f"{v['recall']:.1f}", f"{v['f1']:.1f}"]
            for name, v in f1.items()
        ]
        parts.append("<p class='note'>Clutter lines on held-out labelled pages (%).</p>")
        parts.append(_table(["line scorer", "precision", "recall", "F1"], rows, (0,)))
    steps = [s for s in ("page_type", "quality_model") if isinstance(quality.get(s), dict)]
    if steps:
        rows = [
            [s, str(quality[s].get("removed")), str(quality[s].get("precision")),
             str(quality[s].get("recall"))]
            for s in steps
        ]  # fmt: skip
        parts.append("<p class='note'>Drops against the crawl's gold labels.</p>")
        parts.append(_table(["step", "removed", "precision", "recall"], rows, (0,)))
    target = quality.get("mixture_target_pct")
    if target:
        before = quality.get("mixture_before_pct", {})
        achieved = quality.get("mixture_predicted_pct", {})
        gold = quality.get("mixture_gold_pct", {})
        rows = [
            [c] + [f"{m.get(c, 0.0):.1f}" for m in (before, target, achieved, gold)]
            for c in sorted(set(target) | set(before))
        ]
        parts.append("<p class='note'>Category mixture (%), rebalanced to the target.</p>")
        parts.append(_table(["category", "before", "target", "achieved", "by gold"], rows, (0,)))
    return "".join(parts)


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>{body}"


def write_report(
    metrics: dict,
    out_dir: str | Path,
    *,
    title: str = "moelab routing analysis",
    subtitle: str = "",
    training: list[dict] | None = None,
    funnel: list[dict] | None = None,
    data_quality: dict | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (and the figures as ``out_dir/plots/*.png``); return the page."""
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    figures = {
        "curves": plots.fig_curves(metrics),
        "load": plots.fig_load(metrics),
        "coactivation": plots.fig_coactivation(metrics),
        "domains": plots.fig_domains(metrics),
        "training": plots.fig_training(training or []),
        "funnel": plots.fig_funnel(funnel or []),
    }
    for name, png in figures.items():
        if png is not None:
            (out_dir / "plots" / f"{name}.png").write_bytes(png)
    s = metrics["sample"]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>{html.escape(subtitle)} {metrics['num_experts']} experts, top-{metrics['top_k']}, "
        f"MoE layers {metrics['layers']}; sample of {s['sequences']} × {s['seq_len']} = "
        f"{s['tokens']:,} tokens; {len(metrics['checkpoints'])} checkpoints.</p>",
        _section("Checkpoints (means over MoE layers)", _checkpoint_table(metrics)),
        _section("Routing over training", f"<p class='note'>{NOTES['curves']}</p>" + _img(figures["curves"], "curves")),
        _section("Expert load", _img(figures["load"], "load")),
        _section("Expert co-activation", f"<p class='note'>{NOTES['coactivation']}</p>" + _img(figures["coactivation"], "co-activation")),
    ]  # fmt: skip
    if figures["domains"] is not None:
        domains = ", ".join(f"{d['name']} ({d['tokens']:,})" for d in metrics["domains"])
        note = f"<p class='note'>{NOTES['domains']} Domains (sampled tokens): {html.escape(domains)}.</p>"
        parts.append(_section("Domain specialization", note + _img(figures["domains"], "domains")))
    parts.append(_section("Vocabulary specialization", _top_tokens_table(metrics)))
    if figures["training"] is not None:
        parts.append(_section("Training", _img(figures["training"], "training")))
    if funnel:
        parts.append(
            _section("Data funnel", _img(figures["funnel"], "funnel") + _funnel_table(funnel))
        )
    if data_quality and (body := data_quality_section(data_quality)):
        parts.append(_section("Data quality (stage 3 against labels)", body))
    page = out_dir / "report.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n",
        encoding="utf-8",
    )
    return page


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file (the trainer's metrics.jsonl); [] if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
