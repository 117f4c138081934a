"""`moelab sft`: the loss is CE over assistant tokens only, it falls, and resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from moelab.checkpoint.layout import load_model
from moelab.cli import main
from moelab.infer.chat import builtin_template
from moelab.posttrain.packing import PackedLoader
from moelab.posttrain.sft import SFTObjective, build_sft, sft_example, train_sft
from moelab.train.trainer import Trainer

from .conftest import base_checkpoint, metrics, sft_config, sft_records, write_jsonl

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chat_tokenizer):
    root = tmp_path_factory.mktemp("sft")
    base = base_checkpoint(root / "base", "dots1", chat_tokenizer)
    data = write_jsonl(root / "sft.jsonl", sft_records(120))
    return root, base, data


def test_loss_is_the_mean_over_assistant_tokens_of_each_conversation_alone(setup, chat_tokenizer):
    _, base, _ = setup
    model = load_model(base).eval()
    template = builtin_template("dots1")
    records = sft_records(6, seed=5)
    examples = [sft_example(r, chat_tokenizer, template, 65) for r in records]
    loader = PackedLoader(examples, seq_len=64, batch_size=2, seed=0)
    objective = SFTObjective(loader)
    batch = objective.prepare_step([next(iter(objective))])[0]
    members = [i for row in loader.rows(0)[:2] for i in row]
    with torch.no_grad():
        got = objective.loss(lambda x, **kw: model(x, **kw), batch).loss
        # Independently: each conversation alone, CE only where the target is assistant text.
        nll, count = 0.0, 0
        for i in members:
            text = template.render(records[i]["messages"], add_generation_prompt=False)
            ids = torch.tensor(chat_tokenizer.encode(text, parse_special=True))
            logits = model(ids[None, :-1]).logits[0]
            mask = torch.tensor([t != -100 for t in examples[i].targets.tolist()])
            nll += F.cross_entropy(logits[mask], ids[1:][mask], reduction="sum").item()
            count += int(mask.sum())
    assert count == batch.trained_tokens
    assert got.item() == pytest.approx(nll / count, rel=1e-5)


def test_sft_lowers_the_assistant_loss_and_counts_trained_tokens(setup, tmp_path):
    _, base, data = setup
    logged = []
    train_sft(sft_config(tmp_path, base, data, max_steps=12), log=logged.append)
    turns = sum(m["role"] == "assistant" for r in sft_records(120) for m in r["messages"])
    # every answer is one fruit token plus <|endofresponse|>
    assert f"120 conversations, {2 * turns:,} assistant tokens (0 skipped)" in " ".join(logged)
    rows = metrics(tmp_path / "run")
    assert rows[0]["loss"] > 5.5 and rows[-1]["loss"] < rows[0]["loss"] - 3
    assert 0 < rows[-1]["trained_frac"] < 0.2 and "lb_loss" in rows[-1] and "max_vio" in rows[-1]
    assert (tmp_path / "run" / "tokenizer.json").is_file()  # export and generate find it


def test_init_from_loads_the_weights(setup, tmp_path):
    _, base, data = setup
    cfg = sft_config(tmp_path, base, data)
    trainer = Trainer(cfg, objective=lambda t: SFTObjective([]), **QUIET)
    for name, tensor in load_model(base).state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_resume_equals_uninterrupted(setup, tmp_path):
    _, base, data = setup
    train_sft(sft_config(tmp_path / "a", base, data, max_steps=8), **QUIET)
    part = sft_config(tmp_path / "b", base, data, max_steps=8)
    train_sft(part, stop_at_step=3, **QUIET)  # not on the 5-step checkpoint cadence
    train_sft(part, resume="auto", **QUIET)
    losses = [[r["loss"] for r in metrics(tmp_path / x / "run")] for x in "ab"]
    assert len(losses[0]) == 8 and losses[0] == losses[1]


def test_cli_runs_and_reports_bad_records_by_line(setup, tmp_path, capsys):
    _, base, data = setup
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [*sft_records(3), {"messages": [{"role": "user", "content": "x"}]}]
    )
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"init_from": str(base), "data": {"path": str(bad)}}))
    common = [
        f"out_dir={tmp_path / 'run'}",
        "max_steps=2",
        "batch.seq_len=64",
        "batch.micro_batch_size=1",
    ]
    common += ["batch.global_batch_size=1"]
    assert main(["sft", str(cfg), *common]) == 2
    assert "bad.jsonl:4: messages must end with an assistant turn" in capsys.readouterr().err
    assert main(["sft", str(cfg), *common, "data.on_error=skip"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["step"] == 2
    assert "bad.jsonl:4:" in (tmp_path / "run" / "data_problems.txt").read_text()


def test_sft_starts_from_an_hf_directory_and_uses_its_jinja_template(setup, tmp_path):
    _, base, data = setup
    hf = tmp_path / "hf"
    assert main(["export", str(base), str(hf), "--dtype", "float32"]) == 0
    logged = []
    cfg = sft_config(tmp_path, hf, data, max_steps=2)
    trainer = Trainer(cfg, objective=lambda t: build_sft(cfg, t), log=logged.append)
    assert "template tokenizer_config" in " ".join(logged)  # the exported Jinja template
    for name, tensor in load_model(base).state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    # The Jinja template marks the same tokens as the built-in one.
    ours = train_sft(sft_config(tmp_path / "b", base, data, max_steps=2), **QUIET)
    theirs = trainer.run()
    assert theirs["last"]["loss"] == pytest.approx(ours["last"]["loss"], rel=1e-6)
