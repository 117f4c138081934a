"""The lm-eval adapter: its three request kinds against direct computation, and a task in the test.

Skipped when lm-eval (the ``eval`` extra) is not installed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from moelab.eval.lm_eval import MoelabLM  # noqa: E402
from moelab.tokens.shards import ShardWriter, write_meta  # noqa: E402
from moelab.tokens.tokenizer import train_bpe  # noqa: E402
from moelab.train.trainer import train  # noqa: E402
from tests.train.conftest import tiny_config  # noqa: E402

TEXTS = ["the cat sat on the mat . the dog sat on the log ."] * 40 + [
    "one two three four five"
] * 40


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> MoelabLM:
    tmp = tmp_path_factory.mktemp("lmeval")
    tok = train_bpe(TEXTS, vocab_size=300)
    with ShardWriter(tmp / "shards", 0) as w:
        w.write(tok.encode_documents(TEXTS))
        info = w.close()
    write_meta(tmp / "shards", [info], tok.describe())
    train(
        tiny_config(tmp, tmp / "shards", **{"model.vocab_size": 300, "max_steps": 40}),
        log=lambda _m: None,
    )
    tok.save(tmp / "run")  # the run directory carries its tokenizer
    model = MoelabLM(pretrained=str(tmp / "run"), batch_size=4)
    model.run_dir = tmp / "run"
    return model


def req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def direct(lm: MoelabLM, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(ids[:, :-1]).logits.float(), -1)[0, len(ctx) - 1 :]
    want = torch.tensor(cont)
    return float(lp.gather(1, want[:, None]).sum()), bool((lp.argmax(-1) == want).all())


def test_loglikelihood_matches_a_direct_forward(lm):
    pairs = [
        ("the cat sat on the", " mat"),
        ("one two", " three four"),
        ("the dog ", "sat"),
        ("", "one"),
    ]
    got = lm.loglikelihood([req("loglikelihood", *p) for p in pairs])
    tok = lm.tok
    expected = [
        direct(lm, tok.encode("the cat sat on the"), tok.encode(" mat")),
        direct(lm, tok.encode("one two"), tok.encode(" three four")),
        direct(lm, tok.encode("the dog"), tok.encode(" sat")),  # the space moves over
        direct(lm, [tok.eos_id], tok.encode("one")),  # empty context: EOS
    ]
    for (lp, greedy), (ref_lp, ref_greedy) in zip(got, expected, strict=True):
        assert lp == pytest.approx(ref_lp, abs=1e-4) and greedy == ref_greedy
    assert got[1][1]  # the trained model continues the counting greedily


def test_rolling_loglikelihood_is_the_whole_text_and_windows_cover_every_token(lm):
    text = "the cat sat on the mat . one two three four five the dog sat on the log ."
    whole = lm.loglikelihood_rolling([req("loglikelihood_rolling", text)])[0]
    assert whole == pytest.approx(
        lm.loglikelihood([req("loglikelihood", "", text)])[0][0], abs=1e-4
    )
    lm.max_length, saved = 4, lm.max_length
    try:
        windowed = lm.loglikelihood_rolling([req("loglikelihood_rolling", text)])[0]
    finally:
        lm.max_length = saved
    assert windowed < 0 and windowed != pytest.approx(whole, abs=1e-6)  # shorter contexts


def test_generate_until_stops_before_the_stop_string(lm):
    out = lm.generate_until(
        [req("generate_until", "one two", {"until": ["five"], "max_gen_toks": 20}),
         req("generate_until", "the cat", {"until": ["\n"], "max_gen_toks": 5})]
    )  # fmt: skip
    assert out[0] == " three four "  # greedy on a model trained on the counting
    assert "five" not in out[0] and isinstance(out[1], str)


ROWS = [{"q": "one two three", "choices": [" four", " cat"], "label": 0},
        {"q": "the cat sat on the", "choices": [" two", " mat"], "label": 1}] * 3  # fmt: skip


def write_task(tmp_path: Path, rows: list[dict]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tiny.yaml").write_text(
        "task: moelab_tiny\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ntarget_delimiter: ''\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )


def test_simple_evaluate_runs_a_task_defined_here(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = ROWS
    write_task(tmp_path, rows)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tmp_path))
    results = simple_evaluate(model=lm, tasks=["moelab_tiny"], task_manager=manager)
    right = 0
    for r in rows:  # the accuracy lm-eval must report, from the adapter's own scores
        scores = lm.loglikelihood([req("loglikelihood", r["q"], c) for c in r["choices"]])
        right += max(range(2), key=lambda i: scores[i][0]) == r["label"]
    assert results["results"]["moelab_tiny"]["acc,none"] == pytest.approx(right / len(rows))
    assert right / len(rows) == 1.0  # the trained model knows both continuations


def test_lm_eval_command_line_finds_the_registered_model(lm, tmp_path, monkeypatch, capsys):
    from moelab.eval.lm_eval import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_task(tmp_path, ROWS)
    argv = ["lm_eval", "--model", "moelab", "--model_args", f"pretrained={lm.run_dir}",
            "--tasks", "moelab_tiny", "--include_path", str(tmp_path), "--batch_size", "4"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    main()  # lm-eval asks for cuda:0 by default; the adapter falls back to the CPU
    assert re.search(r"\|moelab_tiny\s*\|.*\|acc\s*\|.*\|\s*1(\.0+)?\|", capsys.readouterr().out)
