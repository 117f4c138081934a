"""Figures and a self-contained HTML report drawn from the metrics JSON alone.

Nothing here computes a metric: every number plotted is read from the JSON ``metrics.compute_metrics``
wrote (plus, when given, the trainer's ``metrics.jsonl`` rows and the data funnel rows). Figures
are PNGs; the report inlines them as base64 so the one ``report.html`` file can be mailed or
opened offline. matplotlib comes with the ``eval`` extra and is imported only here, with the
non-interactive Agg backend.

What this module does not know: models, checkpoints, shards or tokenizers.
"""

from __future__ import annotations

import io

import numpy as np

from moelab.common.deps import require

CURVES = (
    ("max_vio", "MaxVio (max/mean load − 1)"),
    ("dead_experts", "dead experts"),
    ("saturation", "router saturation vs final"),
    ("vocab_concentration", "vocabulary specialization"),
    ("domain_tv", "domain specialization (TV)"),
    ("distinct_experts_per_seq", "distinct experts per sequence"),
)


def _plt():
    mpl = require("matplotlib", "eval")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _x(metrics: dict) -> tuple[list[float], str]:
    """Training tokens of each checkpoint, or its position when tokens are unknown."""
    tokens = [c["tokens"] for c in metrics["checkpoints"]]
    if all(t is not None and t >= 0 for t in tokens):
        return tokens, "training tokens"
    return list(range(len(tokens))), "checkpoint"


def _si(value: float, _pos: object = None) -> str:
    """Tick label: 51200 -> 51k, 1.2e6 -> 1.2M."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{unit}"
    return f"{value:.3g}"


def _token_axis(ax, xlabel: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.set_xlabel(xlabel, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    if xlabel == "training tokens":
        ax.xaxis.set_major_formatter(FuncFormatter(_si))


def _value(layer: dict, key: str) -> float | None:
    v = layer.get(key)
    return v["mean"] if isinstance(v, dict) else v


def fig_curves(metrics: dict) -> bytes:
    """One panel per metric over training, one line per MoE layer."""
    plt = _plt()
    x, xlabel = _x(metrics)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.ravel(), CURVES, strict=True):
        for i, layer in enumerate(metrics["layers"]):
            ys = [_value(c["per_layer"][i], key) for c in metrics["checkpoints"]]
            if any(y is not None for y in ys):
                ys = [np.nan if y is None else y for y in ys]
                ax.plot(x, ys, marker="o", ms=3, label=f"layer {layer}")
        if key == "distinct_experts_per_seq":
            ax.axhline(metrics["num_experts"], color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        _token_axis(ax, xlabel)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def fig_load(metrics: dict) -> bytes:
    """Final checkpoint: each expert's load over the mean, per layer (1 = balanced)."""
    plt = _plt()
    load = np.array([layer["load"] for layer in metrics["checkpoints"][-1]["per_layer"]], float)
    rel = load / np.maximum(load.mean(axis=1, keepdims=True), 1e-9)
    fig, ax = plt.subplots(figsize=(13, 0.5 + 0.45 * len(rel)))
    im = ax.imshow(rel, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(rel)), [f"layer {i}" for i in metrics["layers"]], fontsize=8)
    ax.set_xlabel("expert", fontsize=8)
    ax.set_title("expert load / mean load (final checkpoint)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _png(fig)


def _pick_layers(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


def fig_coactivation(metrics: dict) -> bytes:
    """Final checkpoint: co-activation matrices of the first, middle and last MoE layer."""
    plt = _plt()
    finals = metrics["final"]["per_layer"]
    picks = _pick_layers(len(finals))
    fig, axes = plt.subplots(1, len(picks), figsize=(4.3 * len(picks), 4), squeeze=False)
    for ax, i in zip(axes[0], picks, strict=True):
        im = ax.imshow(np.array(finals[i]["coactivation"]), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"co-activation, layer {finals[i]['layer']}", fontsize=10)
        ax.set_xlabel("expert j", fontsize=8)
        ax.set_ylabel("expert i", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02)
    return _png(fig)


def fig_domains(metrics: dict) -> bytes | None:
    """Final checkpoint: log2 of each domain's token share per expert over the uniform k/E."""
    finals = metrics["final"]["per_layer"]
    if not metrics["domains"] or finals[0]["domain_share"] is None:
        return None
    plt = _plt()
    picks = _pick_layers(len(finals))
    names = [d["name"] for d in metrics["domains"]]
    fig, axes = plt.subplots(
        len(picks),
        1,
        figsize=(13, 0.8 + (0.3 * len(names) + 0.9) * len(picks)),
        squeeze=False,
        gridspec_kw={"hspace": 0.9},
    )
    for ax, i in zip(axes[:, 0], picks, strict=True):
        share = np.array(finals[i]["domain_share"]) / metrics["uniform_share"]
        ratio = np.log2(np.maximum(share, 1 / 16))
        im = ax.imshow(
            ratio, aspect="auto", cmap="RdBu_r", vmin=-4, vmax=4, interpolation="nearest"
        )
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"layer {finals[i]['layer']}: log2(domain share / uniform k/E)", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("expert", fontsize=8)
    fig.colorbar(im, ax=axes[:, 0].tolist(), fraction=0.02)
    return _png(fig)


def fig_training(rows: list[dict]) -> bytes | None:
    """The trainer's metrics.jsonl: loss, learning rate and MaxVio over tokens."""
    rows = [r for r in rows if "loss" in r and "tokens" in r]
    if not rows:
        return None
    plt = _plt()
    x = [r["tokens"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key in zip(axes, ("loss", "lr", "max_vio"), strict=True):
        ax.plot(x, [r.get(key, np.nan) for r in rows], lw=1.2)
        ax.set_title(key, fontsize=10)
        _token_axis(ax, "training tokens")
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def fig_funnel(funnel: list[dict]) -> bytes | None:
    """Documents left after each data step."""
    if not funnel:
        return None
    plt = _plt()
    steps = [f["step"] for f in funnel]
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.35 * len(steps)))
    ax.barh(steps, [f["docs_out"] for f in funnel], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("documents kept", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title("data funnel", fontsize=10)
    return _png(fig)
