"""The report's data-quality section: stage 3 scored against labels, drawn from the JSON alone."""

from moelab.analysis.report import data_quality_section

QUALITY = {
    "classifiers": {
        "clutter_line_f1": {
            "learned": {"precision": 100.0, "recall": 98.2, "f1": 99.1},
            "heuristic": {"precision": 54.1, "recall": 92.7, "f1": 68.3},
        }
    },
    "page_type": {"removed": 14, "precision": 1.0, "recall": 1.0},
    "quality_model": {"removed": 14, "precision": 1.0, "recall": 0.9333},
    "mixture_before_pct": {"files": 13.0, "zh": 87.0},
    "mixture_target_pct": {"files": 40.0, "zh": 60.0},
    "mixture_predicted_pct": {"files": 39.6, "zh": 60.4},
    "mixture_gold_pct": {"files": 39.6, "zh": 60.4},
}


def _cells(html: str) -> str:
    return html.replace(' class="l"', "")


def test_section_has_clutter_f1_steps_and_mixture():
    html = _cells(data_quality_section(QUALITY))
    assert "<td>learned</td><td>100.0</td><td>98.2</td><td>99.1</td>" in html
    assert "68.3" in html and "quality_model" in html and "0.9333" in html
    # the mixture row: before, target, achieved, by gold
    assert "<td>files</td><td>13.0</td><td>40.0</td><td>39.6</td><td>39.6</td>" in html


def test_missing_parts_are_left_out():
    assert data_quality_section({}) == ""
    only_f1 = data_quality_section({"classifiers": QUALITY["classifiers"]})
    assert "F1" in only_f1 and "category" not in only_f1
