"""Perplexity and bits per byte: a uniform model scores the vocabulary size; every target counts once."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from moelab.cli import main
from moelab.eval.perplexity import evaluate_perplexity, token_byte_lengths
from moelab.tokens.shards import ShardWriter, write_meta
from moelab.tokens.tokenizer import train_bpe
from tests.train.conftest import make_shards, tiny_config


class Uniform(nn.Module):
    """Returns all-zero logits: every token has probability 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        self.seen = getattr(self, "seen", 0) + ids.numel()
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.vocab) + 0 * self.dummy})


def _shards(path, docs):
    with ShardWriter(path, 0) as w:
        w.write(docs)
        info = w.close()
    write_meta(path, [info], {"hash": "t", "vocab_size": 50})
    return path


@pytest.mark.parametrize(("seq_len", "batch"), [(7, 3), (16, 1), (1000, 4)])
def test_uniform_model_has_perplexity_equal_to_vocab_size(tmp_path, seq_len, batch):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, size=int(n)).tolist() for n in rng.integers(5, 40, size=20)]
    shards = _shards(tmp_path / "s", docs)
    total = sum(map(len, docs))
    byte_lengths = np.full(50, 2)
    result = evaluate_perplexity(
        Uniform(50), shards, seq_len=seq_len, batch_size=batch, byte_lengths=byte_lengths
    )
    assert result.tokens == total - 1  # every token but the first is predicted exactly once
    assert result.perplexity == pytest.approx(50, rel=1e-6)  # fp32 log-softmax per token
    assert result.bytes == 2 * (total - 1)
    assert result.bits_per_byte == pytest.approx(math.log2(50) / 2, rel=1e-6)


def test_max_tokens_limits_the_stream(tmp_path):
    shards = _shards(tmp_path / "s", [list(range(30))] * 4)
    assert evaluate_perplexity(Uniform(50), shards, seq_len=8, max_tokens=33).tokens == 32


def test_loss_equals_one_full_forward_when_the_window_covers_the_stream(tmp_path):
    shards = make_shards(tmp_path / "shards", docs=3)
    cfg = tiny_config(tmp_path, shards)
    from moelab.model.transformer import build_model

    model = build_model(cfg.model, seed=0).eval()
    stream = torch.from_numpy(np.fromfile(shards / "shard_00000.bin", dtype="<u4").astype(np.int64))
    with torch.no_grad():
        ref = nn.functional.cross_entropy(model(stream[None, :-1]).logits[0], stream[1:])
    result = evaluate_perplexity(model, shards, seq_len=len(stream), batch_size=1)
    assert result.loss == pytest.approx(ref.item(), rel=1e-5)


def test_byte_table_counts_exact_utf8_bytes_and_zero_for_eos():
    texts = ["naïve café 数据 模型 😀 experts route tokens"] * 30 + ["über alles 3.14"] * 30
    tok = train_bpe(texts, vocab_size=300)
    table = token_byte_lengths(tok)
    for text in ["数据😀 naïve", "über café experts", "x"]:
        ids = tok.encode_documents([text])[0]
        assert ids[-1] == tok.eos_id and table[tok.eos_id] == 0
        assert int(table[ids].sum()) == len(text.encode("utf-8"))


def test_cli_reports_a_trained_run_below_the_uniform_perplexity(tmp_path, capsys):
    from moelab.train.trainer import train

    shards = make_shards(tmp_path / "shards")
    train(tiny_config(tmp_path, shards, max_steps=30), log=lambda _m: None)
    out = tmp_path / "ppl.json"
    rc = main(
        ["eval", "perplexity", str(tmp_path / "run"), "--data", str(shards), "--seq-len", "16"]
        + ["--json", "--out", str(out)]
    )
    assert rc == 0
    record = json.loads(capsys.readouterr().out)
    assert record == json.loads(out.read_text())
    assert main(["eval", "perplexity", str(tmp_path / "run"), "--data", str(shards), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_len"] == 16  # the run's training seq_len
    assert record["bits_per_byte"] is None  # synthetic shards: no tokenizer to count bytes
    assert 1 < record["perplexity"] < 0.5 * 64  # learned the walk: far below uniform (64)


def test_unigram_baseline_scores_the_same_targets_and_matches_its_formula(tmp_path):
    from moelab.eval.perplexity import unigram_counts, unigram_perplexity

    shards = _shards(tmp_path / "s", [[1, 1, 1, 2], [3, 1]])  # stream 1 1 1 2 3 1
    counts = unigram_counts(shards, 50)
    assert counts[:4].tolist() == [0, 4, 1, 1] and counts.sum() == 6
    result = unigram_perplexity(counts, shards)
    p = lambda c: (c + 1) / (6 + 50)  # noqa: E731
    expected = -(3 * math.log(p(4)) + 2 * math.log(p(1))) / 5  # targets 1 1 2 3 1
    assert result.tokens == 5 and result.loss == pytest.approx(expected)


def test_cli_compares_with_the_unigram_baseline(tmp_path, capsys):
    from moelab.train.trainer import train

    shards = make_shards(tmp_path / "shards")
    train(tiny_config(tmp_path, shards, max_steps=30), log=lambda _m: None)
    args = ["eval", "perplexity", str(tmp_path / "run"), "--data", str(shards)]
    assert main([*args, "--seq-len", "16", "--unigram-from", str(shards), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    # the walk is predictable from the previous token, invisible to a unigram
    assert record["perplexity"] < 0.5 * record["unigram"]["perplexity"]
