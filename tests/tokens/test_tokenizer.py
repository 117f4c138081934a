"""Tokenizer wrapper: round trips, family special tokens, hashes, and loading foreign layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from moelab.tokens.tokenizer import EOT, SpecialTokens, Tokenizer, train_bpe

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    words = "the of and router token shard naïve café 数据 😀 3.14 x=y+1".split()
    return [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(i % 13 + 3)) for i in range(200)
    ]


def _byte_bpe(pre: pre_tokenizers.PreTokenizer, leading_specials: list[str]) -> HFTokenizer:
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=leading_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(), trainer=trainer)
    return tk


def _write(directory: Path, tk: HFTokenizer, config: dict | None) -> Path:
    directory.mkdir(parents=True)
    tk.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def qwen2_style(directory: Path) -> Path:
    """dots.llm1 layout: Qwen2 regex split + byte level, NFC, specials after the vocab, no BOS."""
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk = _byte_bpe(pre, [])
    tk.normalizer = normalizers.NFC()
    tk.add_special_tokens([EOT, "<|im_start|>", "<|im_end|>"])
    config = {"bos_token": None, "eos_token": EOT, "pad_token": EOT}
    return _write(directory, tk, config)


def neox_style(directory: Path, with_config: bool) -> Path:
    """OLMoE layout: |||IP_ADDRESS||| = 0, <|padding|> = 1, <|endoftext|> = the last id."""
    tk = _byte_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False), ["|||IP_ADDRESS|||", "<|padding|>"]
    )
    tk.add_special_tokens([EOT])
    config = (
        {"bos_token": None, "eos_token": {"content": EOT}, "pad_token": "<|padding|>"}
        if with_config
        else None
    )
    return _write(directory, tk, config)


SAMPLES = [
    "Hello, world!",
    "  leading spaces\tand tabs\n\nand blank lines  ",
    "naïve café über 数据 専門家 😀🚀 never-seen-before: Ωμέγα ∑ 0x7f",
    "",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_trained_bpe_round_trips_any_text(demo_tokenizer: Tokenizer, text: str) -> None:
    ids = demo_tokenizer.encode(text)
    assert demo_tokenizer.decode(ids) == text
    assert all(0 <= i < demo_tokenizer.vocab_size for i in ids)


def test_documents_get_eos_and_no_bos(demo_tokenizer: Tokenizer) -> None:
    docs = demo_tokenizer.encode_documents(["the router", "shard"])
    assert demo_tokenizer.bos_id is None
    assert [d[-1] for d in docs] == [demo_tokenizer.eos_id] * 2
    assert docs[0][:-1] == demo_tokenizer.encode("the router")
    assert demo_tokenizer.encode_batch(["a b", "c"]) == [
        demo_tokenizer.encode("a b"),
        demo_tokenizer.encode("c"),
    ]


def test_special_token_strings_in_text_stay_text(demo_tokenizer: Tokenizer) -> None:
    text = "a page quoting <|endoftext|> in its body"
    ids = demo_tokenizer.encode_documents([text])[0]
    assert ids.count(demo_tokenizer.eos_id) == 1 and ids[-1] == demo_tokenizer.eos_id
    assert demo_tokenizer.decode(ids[:-1]) == text
    assert demo_tokenizer.eos_id in demo_tokenizer.encode(text, parse_special=True)
    assert demo_tokenizer.eos_id not in demo_tokenizer.encode(text)


def test_hash_survives_save_and_load_and_tracks_content(
    tmp_path: Path, demo_tokenizer: Tokenizer, texts
) -> None:
    loaded = Tokenizer.from_file(demo_tokenizer.save(tmp_path / "tok"))
    assert loaded.hash == demo_tokenizer.hash
    assert loaded.family == "demo"
    assert loaded.encode(SAMPLES[2]) == demo_tokenizer.encode(SAMPLES[2])
    other = train_bpe(texts(300, seed=123), vocab_size=300)  # fewer merges
    assert other.hash != demo_tokenizer.hash


def test_recorded_hash_is_reused_until_the_file_changes(
    tmp_path: Path, demo_tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = demo_tokenizer.save(tmp_path / "tok")
    with monkeypatch.context() as m:  # loading a saved tokenizer must not canonicalise again
        m.setattr(Tokenizer, "_content_hash", lambda self: pytest.fail("rehashed"))
        assert Tokenizer.from_file(path).hash == demo_tokenizer.hash
        worker = Tokenizer.from_str(
            demo_tokenizer.to_str(), demo_tokenizer.specials, "demo", demo_tokenizer.hash
        )
        assert worker.hash == demo_tokenizer.hash
    # an edited tokenizer.json no longer matches the record: rehashed, so the hash follows
    raw = json.loads((path / "tokenizer.json").read_text())
    raw["normalizer"] = {"type": "NFC"}
    (path / "tokenizer.json").write_text(json.dumps(raw))
    assert Tokenizer.from_file(path).hash != demo_tokenizer.hash
    # so does a named family whose special tokens differ from the recorded ones
    neox = neox_style(tmp_path / "neox", with_config=False)
    saved = Tokenizer.from_file(neox, "olmoe").save(neox)
    assert Tokenizer.from_file(saved, "dots").hash != Tokenizer.from_file(saved).hash


def test_encode_packed_equals_per_document_encoding(tmp_path: Path) -> None:
    hf = HFTokenizer.from_file(str(neox_style(tmp_path / "n", False) / "tokenizer.json"))
    for specials in (SpecialTokens(bos=None, eos=EOT), SpecialTokens(bos="<|padding|>", eos=EOT)):
        tk = Tokenizer(hf, specials)
        docs = tk.encode_documents(SAMPLES)
        for batch_size in (1, 2, len(SAMPLES), 1000):  # tokenizers is called batch by batch
            tokens, ends = tk.encode_packed(SAMPLES, batch_size=batch_size)
            assert tokens.dtype == np.uint32 and ends.dtype == np.int64
            assert tokens.tolist() == [t for d in docs for t in d]
            assert ends.tolist() == np.cumsum([len(d) for d in docs]).tolist()
    tokens, ends = tk.encode_packed([])
    assert len(tokens) == len(ends) == 0
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        tk.encode_packed(SAMPLES, batch_size=0)


def test_dots_layout_loads_with_no_bos_and_endoftext_eos(tmp_path: Path) -> None:
    tk = Tokenizer.from_file(qwen2_style(tmp_path / "dots"), family="dots")
    assert tk.bos_id is None
    # like 151643, just before the ChatML tags
    assert tk.eos_id == tk.hf.token_to_id(EOT) == tk.vocab_size - 3
    ids = tk.encode_documents([SAMPLES[2]])[0]
    assert ids[-1] == tk.eos_id
    assert tk.decode(ids[:-1]) == SAMPLES[2]


@pytest.mark.parametrize("with_config", [True, False])
def test_olmoe_layout_has_eos_last_and_pad_one(tmp_path: Path, with_config: bool) -> None:
    # with a tokenizer_config.json the special tokens are read from it; without, from the family
    path = neox_style(tmp_path / "olmoe", with_config) / "tokenizer.json"
    tk = Tokenizer.from_file(path, None if with_config else "olmoe")
    assert tk.eos_id == tk.vocab_size - 1  # like 50279, the last real id
    assert tk.pad_id == 1
    assert tk.hf.id_to_token(0) == "|||IP_ADDRESS|||"
    assert tk.bos_id is None
    assert tk.decode(tk.encode(SAMPLES[1])) == SAMPLES[1]


def test_named_family_wins_over_an_instruct_config(tmp_path: Path) -> None:
    path = qwen2_style(tmp_path / "dots")
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": None}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_file(path).eos_id == Tokenizer.from_file(path).hf.token_to_id(
        "<|im_end|>"
    )
    assert Tokenizer.from_file(path, "dots").eos_id == Tokenizer.from_file(path).hf.token_to_id(EOT)


def test_special_tokens_change_the_hash(tmp_path: Path) -> None:
    path = neox_style(tmp_path / "olmoe", with_config=False)
    assert Tokenizer.from_file(path, "olmoe").hash != Tokenizer.from_file(path, "dots").hash


def test_missing_special_token_is_a_clear_error(tmp_path: Path) -> None:
    tk = _byte_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), [])
    path = _write(tmp_path / "noeos", tk, None)
    with pytest.raises(ValueError, match="eos token '<\\|endoftext\\|>' is not in"):
        Tokenizer.from_file(path, "dots")
    with pytest.raises(ValueError, match="unknown tokenizer family"):
        Tokenizer.from_file(path, "llama")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "nowhere")


def test_train_bpe_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="must include the EOS"):
        train_bpe(["abc"], vocab_size=300, special_tokens=("<pad>",))
