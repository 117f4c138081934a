"""`moelab data eval RUN --truth OUT/truth.jsonl`: score a run on a synthetic crawl.

Per step, precision (of what the step removed, how much the truth says it should have) and recall
(of what the truth says the step should remove, how much it did). Duplicates are scored by family
(the original and its planted copies): a dedup removal is correct when the removed document and
the keeper it names belong to the same family, and a family of k + 1 pages expects k removals.
Near-duplicates are also scored per exact 5-gram Jaccard bucket, computed on the texts that entered
the MinHash pass, next to the LSH theory 1 − (1 − J^r)^b; MinHash recall is over the planted pairs
with J ≥ 0.8, the ones the dots banding exists to catch. Line dedup is scored on the planted
site lines: none may occur more than the cap in the output.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from moelab.data.config import DataConfig
from moelab.data.document import read_documents

_BUCKETS = [(0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)]


def _outcomes(run: Path) -> tuple[dict[str, tuple[str, dict]], dict[str, str]]:
    """id → (step, metadata) for removed documents; id → text for kept ones."""
    removed: dict[str, tuple[str, dict]] = {}
    for path in sorted(run.glob("removed/*/*.jsonl.gz")):
        step = path.parent.name.split("_", 1)[1]
        for doc in read_documents(path):
            removed[doc.id] = (step, doc.metadata)
    kept = {d.id: d.text for p in sorted(run.glob("docs/*.jsonl.gz")) for d in read_documents(p)}
    return removed, kept


def _phase_input_texts(run: Path, step: str) -> dict[str, str]:
    """Texts that entered the phase whose global step is ``step``."""
    phases = sorted((run / "phases").glob("p*_*"), key=lambda p: int(p.name.split("_")[0][1:]))
    target = next((p for p in phases if p.name.split("_", 1)[1] == step), None)
    names = [p.name for p in phases]
    if target is None:
        prev = phases[-1] if phases else None
    else:
        idx = names.index(target.name)
        prev = phases[idx - 1] if idx > 0 else None
    if prev is None:
        return {}
    return {d.id: d.text for p in sorted(prev.glob("docs/*.jsonl.gz")) for d in read_documents(p)}


def _pr(tp: int, removed: int, expected: int) -> dict:
    return {
        "removed": removed,
        "expected": expected,
        "correct": tp,
        "precision": round(tp / removed, 4) if removed else None,
        "recall": round(tp / expected, 4) if expected else None,
    }


def evaluate_run(run_dir: str | Path, truth_path: str | Path) -> dict:
    run = Path(run_dir)
    truth = [json.loads(line) for line in Path(truth_path).read_text().splitlines() if line.strip()]
    removed, kept = _outcomes(run)
    by_id = {t["id"]: t for t in truth if t.get("id")}
    family = {t["id"]: t.get("group") or t["id"] for t in truth if t.get("id")}
    report: dict = {"pages": len(truth), "kept": len(kept), "steps": {}}
    for step in ("url_filter", "extract", "language", "quality"):
        got = [i for i, (s, _) in removed.items() if s == step]
        ok = sum(by_id.get(i, {}).get("expected") in (step, "dropped") for i in got)
        expected = [t for t in truth if t["expected"] == step]
        hit = sum(removed.get(t["id"], ("",))[0] == step for t in expected)
        report["steps"][step] = _pr(ok, len(got), len(expected)) | {"recall_hits": hit}
        report["steps"][step]["recall"] = round(hit / len(expected), 4) if expected else None
    report["steps"]["read"] = _score_read(truth, removed, kept)
    for step, kind in (("exact_dedup", "exact_dup"), ("minhash", "near_dup")):
        report["steps"][step] = _score_dedup(step, kind, truth, removed, family, by_id)
    curve = _near_dup_curve(run, truth, removed, family)
    report["near_dup_by_jaccard"] = curve
    high = [row for row in curve if row["jaccard"] in ("[0.8,0.9)", "[0.9,1.0)") and row["pairs"]]
    if high:  # MinHash recall counts the pairs the dots banding is meant to catch (J >= 0.8)
        pairs = sum(r["pairs"] for r in high)
        found = sum(round(r["recall"] * r["pairs"]) for r in high)
        report["steps"]["minhash"].update(expected=pairs, recall=round(found / pairs, 4))
    report["line_dedup"] = _score_lines(run, truth, kept)
    odd = [t for t in truth if t["kind"] == "odd_encoding" and t.get("marker") and t["id"] in kept]
    report["odd_encodings_decoded"] = f"{sum(t['marker'] in kept[t['id']] for t in odd)}/{len(odd)}"
    return report


def _score_read(truth: list[dict], removed: dict, kept: dict) -> dict:
    got = [i for i, (s, _) in removed.items() if s == "read"]
    expected = [t for t in truth if t["expected"] == "read"]
    with_id = [t for t in expected if t.get("id")]
    hit = sum(removed.get(t["id"], ("",))[0] == "read" or t["id"] not in kept for t in with_id)
    anonymous = [i for i in got if "@" in i or not i]
    hit += min(len(anonymous), len(expected) - len(with_id))
    truth_ids = {t.get("id") for t in truth}
    ok = sum(1 for i in got if i in truth_ids or "@" in i or not i)
    return _pr(ok, len(got), len(expected)) | {
        "recall": round(hit / len(expected), 4) if expected else None
    }


def _score_dedup(
    step: str, kind: str, truth: list[dict], removed: dict, family: dict, by_id: dict
) -> dict:
    """A removal is correct if it names a keeper of its own family, or if the page was junk
    that any step may drop (two identical navigation-only pages are true duplicates)."""
    got = [(i, m) for i, (s, m) in removed.items() if s == step]
    same = [
        family.get(i) is not None and family.get(i) == family.get(m.get("duplicate_of"))
        for i, m in got
    ]
    junk = [by_id.get(i, {}).get("expected") == "dropped" for i, _ in got]
    correct = sum(a or b for a, b in zip(same, junk, strict=True))
    copies = Counter(t["group"] for t in truth if t["kind"] == kind)
    removed_in_family: Counter = Counter()
    for (i, _), ok in zip(got, same, strict=True):
        if ok:
            removed_in_family[family[i]] += 1
    tp = sum(min(removed_in_family[g], k) for g, k in copies.items())
    out = _pr(correct, len(got), sum(copies.values()))
    out["recall"] = round(tp / sum(copies.values()), 4) if copies else None
    out["false_merges"] = len(got) - correct
    return out


def _near_dup_curve(run: Path, truth: list[dict], removed: dict, family: dict) -> list[dict]:
    from moelab.data.dedup.shingles import jaccard, shingle_hashes, tokenize

    try:
        cfg = DataConfig.from_yaml(run / "config.yaml").minhash
    except (OSError, ValueError):
        return []
    texts = _phase_input_texts(run, "minhash")
    rows: dict[tuple, list[bool]] = defaultdict(list)
    for t in truth:
        if t["kind"] != "near_dup" or t["id"] not in texts or t["group"] not in texts:
            continue
        a, b = (shingle_hashes(tokenize(texts[x]), cfg.ngram) for x in (t["id"], t["group"]))
        j = jaccard(a, b)
        found = any(
            removed.get(x, ("",))[0] == "minhash"
            and family.get(removed[x][1].get("duplicate_of")) == t["group"]
            for x in (t["id"], t["group"])
        )
        bucket = next(bk for bk in _BUCKETS if bk[0] <= j < bk[1])
        rows[bucket].append((found, 1 - (1 - j**cfg.rows_per_band) ** cfg.num_bands))
    out = []
    for lo, hi in _BUCKETS:
        pairs = rows.get((lo, hi), [])
        found = [f for f, _ in pairs]
        theory = sum(t for _, t in pairs) / len(pairs) if pairs else 0.0
        out.append(
            {
                "jaccard": f"[{lo:.1f},{min(hi, 1.0):.1f})",
                "pairs": len(found),
                "recall": round(sum(found) / len(found), 4) if found else None,
                "theory": round(theory, 4),
            }
        )
    return out


def _score_lines(run: Path, truth: list[dict], kept: dict) -> dict:
    try:
        cap = DataConfig.from_yaml(run / "config.yaml").line_dedup.max_occurrences
    except (OSError, ValueError):
        cap = 200
    planted = {line for t in truth for line in t.get("lines", [])}
    counts: Counter = Counter()
    for text in kept.values():
        for line in text.split("\n"):
            if line.strip() in planted:
                counts[line.strip()] += 1
    return {
        "cap": cap,
        "planted_lines": len(planted),
        "max_occurrences_in_output": max(counts.values(), default=0),
        "lines_over_cap": sum(c > cap for c in counts.values()),
    }


def format_report(report: dict) -> str:
    lines = [
        f"pages {report['pages']}, kept {report['kept']}",
        f"{'step':<14}{'removed':>9}{'expected':>10}{'precision':>11}{'recall':>8}",
    ]
    for step, r in report["steps"].items():
        p = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        lines.append(f"{step:<14}{r['removed']:>9}{r['expected']:>10}{p:>11}{rc:>8}")
    lines.append(
        "near-duplicates by Jaccard (recall vs LSH theory 1-(1-J^r)^b averaged over the pairs):"
    )
    for row in report["near_dup_by_jaccard"]:
        rc = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        lines.append(
            f"  J {row['jaccard']:<11} pairs {row['pairs']:>5}  recall {rc:>6}  theory {row['theory']:.3f}"
        )
    ld = report["line_dedup"]
    lines.append(
        f"line dedup: cap {ld['cap']}, max planted-line occurrences {ld['max_occurrences_in_output']}, "
        f"lines over cap {ld['lines_over_cap']}"
    )
    lines.append(f"odd encodings decoded correctly: {report['odd_encodings_decoded']}")
    return "\n".join(lines)


def evaluate_stage3(run_dir: str | Path, truth_path: str | Path) -> dict:
    """Stage 3 against the crawl's gold: page-type and quality-model precision/recall, and the
    category mixture of the output (by the classifier's label and by the gold label).

    Recall counts only the junk that reached the step (earlier steps may drop it first); a
    drop is correct when the page's gold says it is junk for that step.
    """
    run = Path(run_dir)
    truth = {
        t["id"]: t
        for line in Path(truth_path).read_text().splitlines()
        if line.strip() and (t := json.loads(line)).get("id")
    }
    removed: dict[str, tuple[int, str]] = {}
    for path in sorted(run.glob("removed/*/*.jsonl.gz")):
        number, step = path.parent.name.split("_", 1)
        for doc in read_documents(path):
            removed[doc.id] = (int(number), step)
    out = [d for p in sorted(run.glob("docs/*.jsonl.gz")) for d in read_documents(p)]
    from moelab.data.funnel import load_funnel

    steps = {d.split("_", 1)[1]: int(d.split("_", 1)[0]) for d, _ in load_funnel(run)}
    report: dict = {}
    for step, is_junk in (
        ("page_type", lambda t: t.get("page_type") not in (None, "detail")),
        ("quality_model", lambda t: t.get("quality") == "low"),
    ):
        if step not in steps:
            continue
        number = steps[step]
        got = [i for i, (_, s) in removed.items() if s == step]
        ok = sum(is_junk(truth.get(i, {})) for i in got)
        reached = [
            i
            for i, t in truth.items()
            if is_junk(t) and (i not in removed or removed[i][0] >= number)
        ]
        hit = sum(removed.get(i, (0, ""))[1] == step for i in reached)
        report[step] = _pr(ok, len(got), len(reached)) | {
            "recall": round(hit / len(reached), 4) if reached else None
        }
    predicted = [d.metadata["category"]["label"] for d in out if "category" in d.metadata]
    if predicted:
        report["mixture_predicted_pct"] = _shares(predicted)
        report["mixture_gold_pct"] = _shares(
            [truth[d.id].get("category") or "none" for d in out if d.id in truth]
        )
    return report


def _shares(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {k: round(100 * v / len(labels), 2) for k, v in sorted(counts.items())}
