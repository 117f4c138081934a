"""The transformers backend behind the same interface, on a tiny random local model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moelab.classify.base import TransformersClassifier, load_classifier
from moelab.tokens.tokenizer import EOT, train_bpe

transformers = pytest.importorskip("transformers")


def _tiny_model(directory: Path) -> Path:
    import torch

    torch.manual_seed(0)
    tok = train_bpe(["a tiny corpus for a tiny model"] * 20, 300, special_tokens=(EOT, "<pad>"))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok.hf, pad_token="<pad>", eos_token=EOT
    )
    fast.save_pretrained(str(directory))
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.hf.token_to_id("<pad>"),
        id2label={0: "low", 1: "high"},
        label2id={"low": 0, "high": 1},
    )
    transformers.BertForSequenceClassification(config).save_pretrained(str(directory))
    return directory


def test_local_sequence_classifier_loads_and_batches(tmp_path: Path) -> None:
    model = load_classifier(_tiny_model(tmp_path / "m"), batch_size=2, max_length=32)
    assert isinstance(model, TransformersClassifier)
    assert model.labels == ["low", "high"]
    texts = ["a tiny", "a tiny corpus for a tiny model", "model", "for a", "corpus corpus"]
    proba = model.predict_proba(texts)
    assert proba.shape == (5, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    model.batch_size = 8  # padding differs per batch; the mask must make it irrelevant
    np.testing.assert_allclose(model.predict_proba(texts), proba, atol=1e-5)
