"""SFT checkpoint → `moelab export` → transformers: same chat ids, same greedy reply as moelab."""

from __future__ import annotations

import pytest
import torch

from moelab.cli import main
from moelab.infer.loading import load_generator
from moelab.infer.sampling import SamplingParams
from moelab.posttrain.sft import train_sft

from .conftest import ANSWER, base_checkpoint, sft_config, sft_records, write_jsonl

transformers = pytest.importorskip("transformers")

STOP = {"dots1": "<|endofresponse|>", "olmoe": "<|endoftext|>"}


@pytest.mark.parametrize("family", ["dots1", "olmoe"])
def test_sft_export_transformers_round_trip(family, tmp_path, chat_tokenizer):
    base = base_checkpoint(tmp_path / "base", family, chat_tokenizer)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(120))
    train_sft(sft_config(tmp_path, base, data, max_steps=12), log=lambda *_: None)
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), str(out), "--dtype", "float32"]) == 0

    chat = [{"role": "user", "content": "the fruit of green please"}]
    ours = load_generator(tmp_path / "run")  # the SFT run directory: its latest checkpoint
    ids = ours.chat_ids(chat)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf_ids = tok.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert list(hf_ids) == ids

    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    reply = ours.complete([ids], params, chat=True)[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        generated = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    hf_new = generated[0, len(ids) :].tolist()
    assert hf_new == reply.token_ids
    # 12 steps teach the format (a fruit, then the stop token), not yet which fruit.
    assert reply.token_ids[-1] == chat_tokenizer.hf.token_to_id(STOP[family])
    assert reply.text.strip() in ANSWER.values()
