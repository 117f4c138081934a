"""`moelab analyze` end to end on a real tiny run: documents → shards → checkpoints → report."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from moelab.analysis.collect import Trace, checkpoints_of
from moelab.analysis.config import AnalysisConfig
from moelab.analysis.sample import draw_sample, labels_from_documents
from moelab.checkpoint.layout import list_checkpoints, load_model
from moelab.cli import main
from moelab.commands.analyze import analyze_run
from moelab.data.document import Document, write_documents
from moelab.tokens.config import TokenizeConfig
from moelab.tokens.pipeline import tokenize
from moelab.tokens.shards import ShardReader
from moelab.tokens.tokenizer import train_bpe
from moelab.train.trainer import train
from tests.train.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = {
    "prose.example": "the router sends each token to a few experts and the experts learn".split(),
    "code.example": "def f ( x ) : return x + 1 ; for i in range ( 10 ) : print ( i )".split(),
}


def _docs(root: Path) -> Path:
    rng = random.Random(0)
    docs_dir = root / "docs"
    docs_dir.mkdir(parents=True)
    for f in range(2):
        docs = []
        for j in range(60):
            host = list(DOMAINS)[(j + f) % 2]
            text = " ".join(rng.choices(DOMAINS[host], k=rng.randint(20, 60)))
            docs.append(Document(f"d{f}-{j}", text, url=f"https://www.{host}/{f}/{j}"))
        write_documents(docs_dir / f"{f:05d}.jsonl", docs)
    return docs_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("analysis")
    docs = _docs(tmp)
    texts = [" ".join(words) for words in DOMAINS.values()] * 20
    train_bpe(texts, vocab_size=300).save(tmp / "tok")
    tokenize(
        TokenizeConfig.from_dict(
            {"docs_dir": str(docs), "out_dir": str(tmp / "tokens"), "tokenizer": str(tmp / "tok"),
             "validation_fraction": 0.2, "workers": 1}
        )
    )  # fmt: skip
    shards = tmp / "tokens" / "train"
    cfg = tiny_config(tmp, shards, **{"model.vocab_size": 300, "checkpoint.every_tokens": 640})
    train(cfg, log=lambda _m: None)
    return {"tmp": tmp, "docs": docs, "shards": shards, "run": tmp / "run", "tok": tmp / "tok"}


def test_labels_follow_the_tokenizer_split_and_refuse_other_documents(run, tmp_path):
    labels = labels_from_documents(run["docs"], run["shards"])
    assert len(labels) == ShardReader(run["shards"]).num_docs
    assert set(labels) == set(DOMAINS)  # URL hosts, www. dropped
    other = _docs(tmp_path)
    write_documents(other / "00000.jsonl", [Document("x", "only one")])
    with pytest.raises(ValueError, match="not the documents these shards were made from"):
        labels_from_documents(other, run["shards"])


def test_sample_is_deterministic_and_labels_every_token(run):
    reader = ShardReader(run["shards"])
    labels = labels_from_documents(run["docs"], run["shards"])
    a = draw_sample(reader, 6, 16, seed=3, doc_labels=labels)
    b = draw_sample(reader, 6, 16, seed=3, doc_labels=labels)
    assert np.array_equal(a.token_ids, b.token_ids) and a.token_ids.shape == (6, 16)
    doc, dom = a.doc_index[0, 0], a.domain_ids[0, 0]
    assert a.domains[dom] == labels[doc]
    start = int(reader.doc_ends[doc - 1]) if doc else 0
    assert a.token_ids[0, 0] in reader.read(start, int(reader.doc_ends[doc]) - start)


def test_analyze_run_writes_traces_metrics_and_a_self_contained_report(run):
    out = run["tmp"] / "analysis"
    cfg = AnalysisConfig(num_sequences=8, seq_len=16, min_token_count=2)
    page = analyze_run(run["run"], run["shards"], out, docs_dir=run["docs"], tokenizer=run["tok"],
                       config=cfg, log=lambda _m: None)  # fmt: skip
    steps = list_checkpoints(run["run"])
    assert sorted(p.stem for p in (out / "routing").glob("*.npz")) == [p.name for p in steps]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["step"] for c in metrics["checkpoints"]] == [5, 10, 15, 20]
    final = metrics["checkpoints"][-1]["per_layer"]
    assert [layer["saturation"] for layer in final] == [1.0] * len(final)
    assert {d["name"] for d in metrics["domains"]} == set(DOMAINS)
    assert sum(d["tokens"] for d in metrics["domains"]) == 8 * 16
    assert all("text" in t for e in metrics["final"]["per_layer"][0]["top_tokens"] for t in e)
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 5
    assert not re.search(r"""(src|href)=["']?(https?:|/|file:)""", text)  # nothing external

    # the trace is exactly what the final model's routers choose
    trace = Trace.load(out / "routing" / f"{steps[-1].name}.npz")
    sample = np.load(out / "sample.npz")["token_ids"]
    with torch.no_grad():
        router = load_model(steps[-1])(torch.from_numpy(sample)).router
    for i, r in enumerate(router):
        assert np.array_equal(trace.expert_ids[i], r.expert_ids_TK.view(8, 16, -1).numpy())


def test_cli_resumes_and_reads_hf_directories(run, capsys):
    import moelab

    final = list_checkpoints(run["run"])[-1]
    hf = moelab.save_pretrained(load_model(final), run["tmp"] / "hf")
    out = run["tmp"] / "analysis_hf"
    args = [str(run["run"]), str(hf), "--data", str(run["shards"]), "--out", str(out)]
    args += ["--set", "num_sequences=4", "seq_len=16"]
    assert main(["analyze", *args]) == 0
    assert main(["analyze", *args]) == 0
    assert capsys.readouterr().out.count("already collected") == 5  # 4 steps + the HF dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoints"][-1]["tokens"] == -1  # an HF directory has no training tokens
    # the HF export routes exactly like the checkpoint it came from
    assert [p["saturation"] for p in metrics["checkpoints"][-2]["per_layer"]] == [1.0, 1.0][
        : len(metrics["layers"])
    ]
    assert len(checkpoints_of([run["run"], hf])) == 5


def test_default_config_file_loads():
    cfg = AnalysisConfig.from_yaml(ROOT / "configs" / "analysis" / "default.yaml")
    assert cfg == AnalysisConfig()


def test_an_olmoe_hf_directory_is_collected_like_its_model(tmp_path):
    import moelab
    from moelab.analysis.collect import collect
    from moelab.analysis.sample import Sample
    from moelab.model.config import ModelConfig
    from moelab.model.transformer import build_model

    cfg = ModelConfig.from_dict(
        {"preset": "tiny-olmoe", "vocab_size": 64, "hidden_size": 32, "num_layers": 2,
         "attention": {"num_heads": 2, "num_kv_heads": 2, "head_dim": 16},
         "moe": {"num_experts": 16, "top_k": 4, "expert_intermediate_size": 16}}
    )  # fmt: skip
    model = build_model(cfg, seed=1).eval()
    hf = moelab.save_pretrained(model, tmp_path / "olmoe_hf")
    assert json.loads((hf / "config.json").read_text())["model_type"] == "olmoe"
    tokens = np.random.default_rng(0).integers(0, 64, size=(3, 10))
    sample = Sample(tokens, np.zeros_like(tokens))
    [file] = collect([hf], sample, tmp_path / "routing", batch_size=2, log=lambda _m: None)
    trace = Trace.load(file)
    assert (trace.num_experts, trace.top_k, trace.step) == (16, 4, -1)
    with torch.no_grad():
        router = model(torch.from_numpy(tokens)).router
    assert trace.expert_ids.shape == (len(router), 3, 10, 4)
    for i, r in enumerate(router):
        assert np.array_equal(trace.expert_ids[i], r.expert_ids_TK.view(3, 10, 4).numpy())


def test_rows_longer_than_the_context_are_refused_by_name(run, tmp_path):
    cfg = AnalysisConfig(num_sequences=1, seq_len=1100)  # tiny-dots keeps 1024 positions
    with pytest.raises(ValueError, match="exceed the model's context .*lower seq_len"):
        analyze_run(run["run"], run["shards"], tmp_path, config=cfg, log=lambda _m: None)
