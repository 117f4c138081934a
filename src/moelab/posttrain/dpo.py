"""Direct Preference Optimization on the Trainer, against a frozen reference.

Per pair, with summed response log-probs π (policy) and ρ (reference):
``loss = −log σ(β·((π_c − ρ_c) − (π_r − ρ_r)))`` (Rafailov et al. 2023). The implicit rewards
``β(π − ρ)`` give the logged metrics: ``reward_chosen``, ``reward_rejected``, their mean
difference ``reward_margin``, ``reward_accuracy`` (share of pairs whose chosen reward is
strictly higher), and the mean ``logp_chosen``/``logp_rejected`` of the policy.

The reference is the initial weights (``init_from``, else the seeded random init), in eval
mode with gradients off and outside the optimizer, so nothing can change it. With
``dpo.reference: precomputed`` its log-probs are computed once for every pair, kept in
``reference_logps.pt`` in the run directory (reused on resume when data, weights and
settings match), and the copy is freed; every data-parallel rank computes the whole table. The
balance losses and the expert-bias update use the policy's routing of chosen and rejected
rows, padding tokens included (the DPO loss never sees them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moelab.model.transformer import MoETransformer, build_model
from moelab.posttrain.common import chat_setup, load_records, pad_id
from moelab.posttrain.config import DPOConfig
from moelab.posttrain.packing import IGNORE
from moelab.posttrain.pairs import PairBatch, PairLoader, dpo_pair
from moelab.train.objective import Forward, LoaderObjective, ObjectiveLoss

REFERENCE_FILE = "reference_logps.pt"


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R,) summed log-probs of the non-ignored targets of each row, in fp32."""
    R, T, V = logits.shape
    nll = F.cross_entropy(
        logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    return -nll.view(R, T).sum(dim=1)


def dpo_loss(
    policy_c: torch.Tensor,
    policy_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over pairs and its metrics (see the module docstring)."""
    reward_c = beta * (policy_c - ref_c)
    reward_r = beta * (policy_r - ref_r)
    loss = -F.logsigmoid(reward_c - reward_r).mean()
    with torch.no_grad():
        metrics = {
            "reward_chosen": reward_c.mean().item(),
            "reward_rejected": reward_r.mean().item(),
            "reward_margin": (reward_c - reward_r).mean().item(),
            "reward_accuracy": (reward_c > reward_r).float().mean().item(),
            "logp_chosen": policy_c.mean().item(),
            "logp_rejected": policy_r.mean().item(),
        }
    return loss, metrics


class DPOObjective(LoaderObjective):
    def __init__(
        self,
        data: PairLoader,
        beta: float,
        reference: MoETransformer | None = None,
        table: torch.Tensor | None = None,
    ):
        if (reference is None) == (table is None):
            raise ValueError("give exactly one of a reference model or a precomputed table")
        self.data, self.beta, self.reference, self.table = data, beta, reference, table

    def reference_logps(self, forward: Forward, batch: PairBatch) -> torch.Tensor:
        """(2B,) reference log-probs of the batch's chosen then rejected rows."""
        if self.table is not None:
            picked = self.table[batch.index]
            return torch.cat([picked[:, 0], picked[:, 1]])
        with torch.no_grad():
            out = forward(batch.inputs, model=self.reference)
            return sequence_logps(out.logits, batch.targets.to(out.logits.device))

    def loss(self, forward: Forward, batch: PairBatch) -> ObjectiveLoss:
        out = forward(batch.inputs)
        policy = sequence_logps(out.logits, batch.targets.to(out.logits.device))
        ref = self.reference_logps(forward, batch).to(policy.device)
        B = batch.index.numel()
        loss, metrics = dpo_loss(policy[:B], policy[B:], ref[:B], ref[B:], self.beta)
        return ObjectiveLoss(loss, out, metrics)


def reference_model(cfg: DPOConfig, device: torch.device) -> MoETransformer:
    """The initial weights, frozen: eval mode, no gradients, in no optimizer."""
    model = build_model(cfg.model, device=device, seed=cfg.seed)
    if cfg.init_from:
        from moelab.checkpoint.layout import load_model

        source = load_model(cfg.init_from, dtype=torch.float32, device=device)
        model.load_state_dict(source.state_dict(), strict=True)
    return model.eval().requires_grad_(False)


def precompute_reference(
    objective: DPOObjective,
    forward: Forward,
    key: dict[str, Any],
    path: Path,
    log=print,
    save: bool = True,
) -> torch.Tensor:
    """(N, 2) reference log-probs of every pair, from ``path`` when its key matches."""
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved.get("key") == key:
            log(f"reference log-probs from {path}")
            return saved["logps"]
    data, chunk = objective.data, objective.data.batch_size
    table = torch.empty(len(data.pairs), 2, dtype=torch.float32)
    for start in range(0, len(data.pairs), chunk):
        indices = list(range(start, min(start + chunk, len(data.pairs))))
        logps = objective.reference_logps(forward, data.make_batch(indices)).float().cpu()
        table[indices, 0], table[indices, 1] = logps[: len(indices)], logps[len(indices) :]
    if save:
        tmp = path.with_suffix(".tmp")
        torch.save({"key": key, "logps": table}, tmp)
        tmp.replace(path)
        log(f"reference log-probs of {len(data.pairs)} pairs written to {path}")
    return table


def build_dpo(cfg: DPOConfig, trainer) -> DPOObjective:
    """The objective factory the Trainer calls (after the model, before resuming)."""
    tokenizer, template = chat_setup(cfg, write=trainer.dist.is_rank0)
    loaded = load_records(
        cfg, trainer, lambda obj: dpo_pair(obj, tokenizer, template, cfg.batch.seq_len + 1)
    )
    for i, pair in enumerate(loaded.records):
        pair.index = i
    trainer.log(
        f"dpo data: {len(loaded.records)} pairs ({len(loaded.problems)} skipped), "
        f"template {template.name}, β={cfg.dpo.beta}, reference={cfg.dpo.reference}"
    )
    data = PairLoader(
        loaded.records,
        cfg.batch.micro_batch_size,
        seed=cfg.data.seed,
        rank=trainer.dist.dp_rank,
        world_size=trainer.dist.dp_size,
        pad_id=pad_id(tokenizer),
        fingerprint=loaded.fingerprint,
    )
    objective = DPOObjective(data, cfg.dpo.beta, reference=reference_model(cfg, trainer.device))
    if cfg.dpo.reference == "precomputed":
        key = {
            "data": loaded.fingerprint,
            "init_from": cfg.init_from,
            "seed": cfg.seed,
            "model": cfg.model.to_dict(),
            "seq_len": cfg.batch.seq_len,
            "precision": cfg.precision,
            "template": template.name,
        }
        path = trainer.out_dir / REFERENCE_FILE
        objective.table = precompute_reference(
            objective, trainer.forward, key, path, trainer.log, save=trainer.dist.is_rank0
        )
        objective.reference = None
    return objective


def train_dpo(
    cfg: DPOConfig, resume: str | None = None, log=print, stop_at_step: int | None = None
) -> dict[str, Any]:
    from moelab.train.trainer import Trainer

    trainer = Trainer(cfg, resume=resume, log=log, objective=lambda t: build_dpo(cfg, t))
    return trainer.run(stop_at_step=stop_at_step)
