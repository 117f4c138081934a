"""`moelab generate` from a moelab checkpoint and from an HF directory, with a tokenizer beside it."""

from __future__ import annotations

import pytest

from moelab.checkpoint.hf import save_pretrained
from moelab.checkpoint.layout import save_checkpoint
from moelab.cli import main
from moelab.infer.loading import load_generator
from moelab.infer.sampling import SamplingParams


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, text_models, chat_tokenizer):
    root = tmp_path_factory.mktemp("gen")
    run = root / "run"
    save_checkpoint(run, step=3, tokens=0, model=text_models["dots1"])
    chat_tokenizer.save(run)
    hf = save_pretrained(text_models["olmoe"], root / "hf")
    chat_tokenizer.save(hf)
    return {"run": run, "hf": hf}


@pytest.mark.parametrize("kind", ["run", "hf"])
def test_generate_prints_the_greedy_completion(model_dirs, kind, capsys):
    path = model_dirs[kind]
    gen = load_generator(path)
    (expected,) = gen.complete([gen.prompt_ids("the router")], SamplingParams(max_new_tokens=6))
    assert main(["generate", str(path), "--prompt", "the router", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == "the router" + expected.text + "\n"


def test_generate_batch_chat_and_stream(model_dirs, capsys):
    path = str(model_dirs["run"])
    assert main(["generate", path, "--prompt", "a", "--prompt", "b", "--chat"]) == 0
    assert capsys.readouterr().out.count("--- [") == 2
    args = ["generate", path, "--prompt", "hello", "--stream", "--max-new-tokens", "5"]
    assert main(args) == 0
    gen = load_generator(path)
    (expected,) = gen.complete([gen.prompt_ids("hello")], SamplingParams(max_new_tokens=5))
    assert capsys.readouterr().out == expected.text + "\n"


def test_generate_without_tokenizer_says_where_it_looked(tmp_path, text_models, capsys):
    save_checkpoint(tmp_path / "run", step=1, tokens=0, model=text_models["dots1"])
    assert main(["generate", str(tmp_path / "run"), "--prompt", "x"]) == 2
    assert "no tokenizer.json in" in capsys.readouterr().err


def test_generate_penalties_and_a_cache_sized_to_the_request(model_dirs, capsys, monkeypatch):
    """--frequency/--presence-penalty reach the sampler; the KV cache holds the prompt's bytes
    + template room + the new tokens, not the model's whole context."""
    import moelab.infer.loading as loading

    path = model_dirs["hf"]
    gen = load_generator(path)
    params = SamplingParams(max_new_tokens=6, frequency_penalty=2.0, presence_penalty=1.0)
    (expected,) = gen.complete([gen.prompt_ids("the router")], params)
    built = []
    original = loading.Engine
    monkeypatch.setattr(loading, "Engine", lambda *a, **kw: built.append(kw) or original(*a, **kw))
    args = ["generate", str(path), "--prompt", "the router", "--max-new-tokens", "6"]
    assert main([*args, "--frequency-penalty", "2", "--presence-penalty", "1"]) == 0
    assert capsys.readouterr().out == "the router" + expected.text + "\n"
    assert built[0]["max_len"] == len(b"the router") + 256 + 6
