"""Supervised fine-tuning: chat JSONL → packed rows → cross-entropy on assistant tokens only.

The loss of a step is the mean over every trained (assistant) token of the step, not a mean
of per-micro-batch means: ``prepare_step`` counts the step's trained tokens (summed over the
data-parallel ranks) and each micro batch is scaled by that count, so a micro batch with more
assistant tokens weighs more, as it would in one big batch on one device.

Everything else (optimizer, schedule, accumulation, balance losses, expert-bias update,
checkpoints, exact resume, metrics.jsonl) is the pretraining Trainer's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from moelab.infer.chat import ChatTemplate
from moelab.posttrain.common import chat_setup, load_records, pad_id
from moelab.posttrain.config import SFTConfig
from moelab.posttrain.data import RecordError, check_conversation
from moelab.posttrain.packing import IGNORE, Example, PackedBatch, PackedLoader
from moelab.posttrain.render import encode_chat
from moelab.tokens.tokenizer import Tokenizer
from moelab.train.objective import Forward, LoaderObjective, ObjectiveLoss


def sft_example(obj: Any, tokenizer: Tokenizer, template: ChatTemplate, max_tokens: int) -> Example:
    """One JSONL record ``{"messages": [...]}`` as inputs and masked targets (RecordError if bad)."""
    if not isinstance(obj, dict) or "messages" not in obj:
        raise RecordError('a record must be an object with "messages"')
    messages = check_conversation(obj["messages"])
    enc = encode_chat(tokenizer, template, messages, max_tokens=max_tokens)
    ids = np.asarray(enc.ids, dtype=np.int64)
    targets = np.where(np.asarray(enc.trained[1:]), ids[1:], IGNORE)
    return Example(ids[:-1], targets)


class SFTObjective(LoaderObjective):
    """Packed conversations; loss = mean cross-entropy over the step's assistant tokens."""

    def __init__(self, loader: PackedLoader, dist=None):
        self.data, self.dist = loader, dist

    def prepare_step(self, batches: list[PackedBatch]) -> list[PackedBatch]:
        """Scale so that the trainer's 1/accum and the ranks' gradient mean give Σ nll / Σ tokens."""
        total, ranks = float(sum(b.trained_tokens for b in batches)), 1
        if self.dist is not None and self.dist.enabled:
            count = torch.tensor([total], dtype=torch.float64, device=self.dist.device)
            total, ranks = self.dist.sum_(count).item(), self.dist.dp_size
        for b in batches:
            b.loss_scale = len(batches) * ranks / total
        return batches

    def loss(self, forward: Forward, batch: PackedBatch) -> ObjectiveLoss:
        out = forward(batch.inputs, positions=batch.positions, document_ids=batch.document_ids)
        targets = batch.targets.to(out.logits.device)
        summed = F.cross_entropy(
            out.logits.reshape(-1, out.logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        scale = batch.loss_scale or 1.0 / batch.trained_tokens
        metrics = {"trained_frac": batch.trained_tokens / batch.targets.numel()}
        return ObjectiveLoss(summed * scale, out, metrics)


def build_sft(cfg: SFTConfig, trainer) -> SFTObjective:
    """The objective factory the Trainer calls (after the model, before resuming)."""
    tokenizer, template = chat_setup(cfg, write=trainer.dist.is_rank0)
    loaded = load_records(
        cfg, trainer, lambda obj: sft_example(obj, tokenizer, template, cfg.batch.seq_len + 1)
    )
    for example, line in zip(loaded.records, loaded.lines, strict=True):
        example.line = line
    trained = sum(int((e.targets != IGNORE).sum()) for e in loaded.records)
    trainer.log(
        f"sft data: {len(loaded.records)} conversations, {trained:,} assistant tokens "
        f"({len(loaded.problems)} skipped), template {template.name}"
    )
    loader = PackedLoader(
        loaded.records,
        cfg.batch.seq_len,
        cfg.batch.micro_batch_size,
        seed=cfg.data.seed,
        rank=trainer.dist.dp_rank,
        world_size=trainer.dist.dp_size,
        pad_id=pad_id(tokenizer),
        fingerprint=loaded.fingerprint,
    )
    return SFTObjective(loader, trainer.dist)


def train_sft(
    cfg: SFTConfig, resume: str | None = None, log=print, stop_at_step: int | None = None
) -> dict[str, Any]:
    from moelab.train.trainer import Trainer

    trainer = Trainer(cfg, resume=resume, log=log, objective=lambda t: build_sft(cfg, t))
    return trainer.run(stop_at_step=stop_at_step)
