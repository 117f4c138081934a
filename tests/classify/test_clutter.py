"""Clutter lines: the learned scorer beats the heuristic baseline (G13); the step cleans pages."""

from __future__ import annotations

from moelab.classify.clutter import ClutterStep, HeuristicLineScorer, LearnedLineScorer, line_f1
from moelab.data.document import Document

from .synthetic import FakeContext, clutter_docs


def test_learned_scorer_beats_heuristic_by_five_f1_points_on_held_out_pages() -> None:
    scorer = LearnedLineScorer.train(clutter_docs(300, seed=0))
    held_out = clutter_docs(200, seed=1)
    learned = line_f1(scorer, held_out)
    baseline = line_f1(HeuristicLineScorer(), held_out)
    assert learned["f1"] >= baseline["f1"] + 5, (learned, baseline)


def test_heuristic_flags_navigation_and_keeps_sentences() -> None:
    h = HeuristicLineScorer()
    assert h.is_clutter("Home | About | Contact")
    assert h.is_clutter("We use cookies to improve your experience.")
    assert not h.is_clutter("The river runs through the old city and into the sea.")


def test_step_removes_clutter_lines_and_drops_pages_that_are_mostly_clutter() -> None:
    lines = [
        "Home | About | Contact",
        "The river runs through the old city and into the sea.",
        "Boats have carried salt and grain along it for three hundred years.",
        "© 2024 Example Media. All rights reserved.",
    ]
    good = Document("good", "\n".join(lines))
    junk = Document(
        "junk", "Home | About | Contact | Blog | Shop\nAdvertisement\nA sentence that stays."
    )
    ctx = FakeContext()
    kept = list(ClutterStep(HeuristicLineScorer(), max_removed=0.5).run([good, junk], ctx))
    assert [d.id for d in kept] == ["good"]
    assert kept[0].text.split("\n") == lines[1:3]
    assert kept[0].metadata["clutter"]["lines_removed"] == 2
    assert ctx.dropped[0][0].id == "junk" and ctx.dropped[0][1] == "clutter>0.50"
    assert ctx.dropped[0][0].text.startswith("Home | About")  # the exclusion writer sees it whole
    assert ctx.stats.counters["clutter_lines_removed"] == 4


def test_train_classifier_clutter_kind_reports_both_scorers(tmp_path, capsys) -> None:
    import json

    from moelab.classify.commands import main
    from moelab.data.document import write_documents

    pages = clutter_docs(300, seed=3)
    docs = [
        Document(
            f"p{i}",
            "\n".join(line for line, _ in page),
            metadata={"clutter_lines": [int(bad) for _, bad in page]},
        )
        for i, page in enumerate(pages)
    ]
    write_documents(tmp_path / "lines.jsonl", docs)
    args = [f"docs={tmp_path / 'lines.jsonl'}", f"out_dir={tmp_path / 'm'}", "kind=clutter"]
    overrides = ["label_field=clutter_lines", "holdout_fraction=0.3", "model.dim=65536"]
    assert main(["train-classifier", *args, *overrides]) == 0
    f1 = json.loads(capsys.readouterr().out)["heldout_line_f1"]
    assert f1["learned"] >= f1["heuristic"] + 5
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["heldout_docs"] > 50
