"""`moelab dpo`: the loss formula, margin and accuracy rise on a learnable rule, the reference never moves."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from moelab.cli import main
from moelab.posttrain.common import chat_setup
from moelab.posttrain.data import load_jsonl
from moelab.posttrain.dpo import DPOObjective, build_dpo, dpo_loss, train_dpo
from moelab.posttrain.pairs import PairLoader, dpo_pair
from moelab.train.trainer import Trainer

from .conftest import base_checkpoint, dpo_config, dpo_records, metrics, write_jsonl

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chat_tokenizer):
    root = tmp_path_factory.mktemp("dpo")
    base = base_checkpoint(root / "base", "olmoe", chat_tokenizer)
    data = write_jsonl(root / "dpo.jsonl", dpo_records(96))
    held_out = write_jsonl(root / "held_out.jsonl", dpo_records(32, seed=1))
    return root, base, data, held_out


def test_dpo_loss_matches_its_closed_form():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.5, -4.5])
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    z = [0.5 * ((-3 + 3.5) - (-4 + 3.5)), 0.5 * ((-5 + 4) - (-4 + 4.5))]  # [0.5, -0.75]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-x)) for x in z) / 2)
    assert m["reward_margin"] == pytest.approx(sum(z) / 2)
    assert m["reward_accuracy"] == 0.5
    assert m["reward_chosen"] == pytest.approx((0.25 - 0.5) / 2)
    assert m["logp_chosen"] == -4.0 and m["logp_rejected"] == -4.0


def _held_out_accuracy(trainer, objective: DPOObjective, path) -> float:
    tok, template = chat_setup(trainer.cfg, write=False)
    pairs = load_jsonl(path, lambda o: dpo_pair(o, tok, template, 65)).records
    batch = PairLoader(pairs, batch_size=len(pairs)).make_batch(list(range(len(pairs))))
    trainer.model.eval()
    with torch.no_grad():
        return objective.loss(trainer.forward, batch).metrics["reward_accuracy"]


def test_margin_and_accuracy_rise_and_the_reference_never_changes(setup, tmp_path):
    _, base, data, held_out = setup
    cfg = dpo_config(tmp_path, base, data, max_steps=8)
    trainer = Trainer(cfg, objective=lambda t: build_dpo(cfg, t), **QUIET)
    objective = trainer.loader
    ref = objective.reference
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    probe = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits_before = ref(probe).logits.clone()
    assert _held_out_accuracy(trainer, objective, held_out) == 0.0  # policy == reference: ties
    trainer.run()

    rows = metrics(tmp_path / "run")
    first, last = rows[0], rows[-1]
    assert first["reward_margin"] == 0.0 and first["loss"] == pytest.approx(math.log(2))
    assert last["reward_margin"] > 0.5 and last["reward_accuracy"] == 1.0
    assert (
        last["logp_chosen"] - last["logp_rejected"]
        > first["logp_chosen"] - first["logp_rejected"] + 5
    )
    assert "lb_loss" in last and "max_vio" in last
    assert _held_out_accuracy(trainer, objective, held_out) >= 0.9  # the rule, not the pairs
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert torch.equal(ref(probe).logits, logits_before)
    assert not torch.equal(trainer.model(probe).logits, logits_before)  # the policy did move


def test_precomputed_reference_matches_the_frozen_model_and_is_reused(setup, tmp_path):
    _, base, data, _ = setup
    live = dpo_config(tmp_path / "a", base, data, max_steps=4)
    stored = dpo_config(tmp_path / "b", base, data, max_steps=4, **{"dpo.reference": "precomputed"})
    train_dpo(live, **QUIET)
    logged = []
    train_dpo(stored, stop_at_step=2, log=logged.append)
    assert any("written to" in line for line in logged)
    table = torch.load(tmp_path / "b" / "run" / "reference_logps.pt")["logps"]
    assert table.shape == (96, 2) and (table[:, 0] != table[:, 1]).all()
    logged.clear()
    train_dpo(stored, resume="auto", log=logged.append)
    assert any("reference log-probs from" in line for line in logged)  # reused, not recomputed
    a, b = (metrics(tmp_path / x / "run") for x in "ab")
    for key in ("loss", "reward_margin", "logp_chosen"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-4, abs=1e-5)


def test_resume_equals_uninterrupted_and_cli(setup, tmp_path, capsys):
    _, base, data, _ = setup
    train_dpo(dpo_config(tmp_path / "a", base, data, max_steps=7), **QUIET)
    part = dpo_config(tmp_path / "b", base, data, max_steps=7)
    train_dpo(part, stop_at_step=3, **QUIET)
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump(part.to_dict()))
    assert main(["dpo", str(cfg), "--resume", "auto"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 7 and set(last) >= {"reward_margin", "reward_accuracy", "logp_chosen"}
    losses = [[r["loss"] for r in metrics(tmp_path / x / "run")] for x in "ab"]
    assert len(losses[0]) == 7 and losses[0] == losses[1]
