"""Conversations → token ids plus which tokens are trained (the assistant turns).

The whole conversation is rendered with the family's chat template and tokenized at once, as
inference and transformers' ``apply_chat_template`` do, so training ids are exactly the ids the
model sees when served. Assistant spans are found in the text by rendering prefixes: turn ``i``
spans from the end of ``render(messages[:i], add_generation_prompt=True)`` to the end of
``render(messages[:i + 1])``. So the span is the reply and what the template closes it with
(dots ``<|endofresponse|>``, Tülu ``<|endoftext|>``), never the role header; a token is
trained when it starts inside a span. A template that is not prefix-stable (the text of
earlier turns changes when a turn is added) is refused, since spans would be wrong.

What this module does not know: files, batches or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moelab.infer.chat import ChatTemplate, Message
from moelab.posttrain.data import RecordError
from moelab.tokens.tokenizer import Tokenizer


@dataclass
class EncodedChat:
    ids: list[int]
    trained: list[bool]
    """Per token: part of an assistant turn at or after ``train_from``."""

    @property
    def num_trained(self) -> int:
        return sum(self.trained)


def assistant_spans(
    template: ChatTemplate, messages: Sequence[Message], train_from: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn ≥ train_from."""
    text = template.render(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < train_from:
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        upto = template.render(messages[: i + 1], add_generation_prompt=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"chat template {template.name!r} is not prefix-stable at turn {i}: rendering "
                "more turns changes earlier text, so assistant tokens cannot be located"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def encode_chat(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[Message],
    train_from: int = 0,
    max_tokens: int | None = None,
) -> EncodedChat:
    """Ids of the rendered chat and the trained mask; RecordError if too long or nothing trained."""
    text, spans = assistant_spans(template, messages, train_from)
    ids, starts = tokenizer.encode_chat(text)
    trained = [any(a <= s < b for a, b in spans) for s in starts]
    if max_tokens is not None and len(ids) > max_tokens:
        raise RecordError(
            f"{len(ids)} tokens, more than the {max_tokens} a row holds (batch.seq_len + 1); "
            "records are never truncated"
        )
    if not any(trained[1:]):
        raise RecordError("no assistant token to train on")
    return EncodedChat(ids, trained)
