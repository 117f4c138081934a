"""moelab as a model of the lm-evaluation-harness: ``--model moelab --model_args pretrained=CKPT``.

Importing this module registers ``MoelabLM`` under the name ``moelab`` (lm-eval comes with the
``eval`` extra). lm-eval's own ``lm_eval`` command does not import third-party models, so run it
through this module, which registers the model and then hands over to lm-eval's CLI::

    python -m moelab.eval.lm_eval --model moelab --model_args pretrained=runs/demo/train_tiny-dots \\
        --tasks hellaswag --batch_size 8

The three request kinds, as lm-eval's HF model defines them:

* ``loglikelihood(context, continuation)``: log p(continuation | context) summed over the
  continuation's tokens, and whether greedy decoding would produce exactly those tokens.
  Trailing spaces of the context move to the continuation before encoding (byte-level BPE
  attaches a space to the next word); an empty context is replaced by the EOS token. Inputs
  longer than the context window keep their last ``max_length`` tokens.
* ``loglikelihood_rolling(text)``: the log-likelihood of the whole text, first token conditioned
  on EOS, in consecutive windows of ``max_length`` predicted tokens.
* ``generate_until(context, {until, max_gen_toks, ...})``: greedy decoding on the inference engine
  (KV cache, batched), stopped at the first ``until`` string, which is not returned.

What this module does not know: tasks, prompts or metrics; those belong to lm-eval.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from moelab.common.deps import require
from moelab.infer.loading import load_generator
from moelab.infer.sampling import SamplingParams

_lm_api = require("lm_eval.api.model", "eval", "lm-eval")
_registry = require("lm_eval.api.registry", "eval", "lm-eval")


@_registry.register_model("moelab")
class MoelabLM(_lm_api.LM):
    """An lm-eval model over a moelab checkpoint, run directory or HF directory."""

    def __init__(
        self,
        pretrained: str | Path,
        tokenizer: str | Path | None = None,
        device: str | None = "cpu",
        dtype: str | None = None,
        batch_size: int | str | None = 8,
        max_length: int | None = None,
        **_ignored,
    ):
        super().__init__()
        if not device or (device.startswith("cuda") and not torch.cuda.is_available()):
            device = "cpu"  # lm-eval's CLI asks for cuda:0 unless told otherwise
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.gen = load_generator(
            pretrained, tokenizer=tokenizer, device=device, dtype=dtype, max_batch=self.batch_size
        )
        self.model = self.gen.engine.model
        self.tok = self.gen.tokenizer
        context = self.model.config.max_position_embeddings
        self.max_length = min(int(max_length or context), context)
        eos = self.tok.eos_id if self.tok.eos_id is not None else self.gen.base_stop_ids[0]
        self.prefix_id = int(eos)

    # -- scoring ------------------------------------------------------------------------------
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self.tok.encode(context) if context else [self.prefix_id]
        return ctx, self.tok.encode(continuation)

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, greedy?) for (context ids, continuation ids) pairs."""
        rows = []
        for ctx, cont in pairs:
            full = (ctx + cont)[-(self.max_length + 1) :]
            n = min(len(cont), len(full) - 1)
            rows.append((full[:-1], full[len(full) - n :], n))
        T = max(len(inp) for inp, _, _ in rows)
        device = next(self.model.parameters()).device
        batch = torch.zeros(len(rows), T, dtype=torch.long, device=device)
        for i, (inp, _, _) in enumerate(rows):
            batch[i, : len(inp)] = torch.tensor(inp)  # right padding: causal, so harmless
        logprobs = F.log_softmax(self.model(batch).logits.float(), dim=-1)
        out = []
        for i, (inp, target, n) in enumerate(rows):
            if n == 0:
                out.append((0.0, True))
                continue
            lp = logprobs[i, len(inp) - n : len(inp)]
            want = torch.tensor(target, device=device)
            total = float(lp.gather(1, want[:, None]).sum())
            out.append((total, bool((lp.argmax(-1) == want).all())))
        return out

    def _batched(self, items: list) -> Iterator[list]:
        for i in range(0, len(items), self.batch_size):
            yield items[i : i + self.batch_size]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for chunk in self._batched(order):
            for i, res in zip(chunk, self._score([pairs[i] for i in chunk]), strict=True):
                results[i] = res
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for req in requests:
            ids = self.tok.encode(req.args[0])
            windows, start = [], 0
            while start < len(ids):
                cont = ids[start : start + self.max_length]
                ctx = ids[max(0, start - 1) : start] if start else [self.prefix_id]
                windows.append((ctx, cont))
                start += len(cont)
            out.append(sum(s for chunk in self._batched(windows) for s, _ in self._score(chunk)))
        return out

    # -- generation ---------------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        results: list[str] = [""] * len(requests)
        for chunk in self._batched(list(enumerate(requests))):
            groups: dict[tuple, list[int]] = {}
            for i, req in chunk:
                kwargs = req.args[1] or {}
                until = kwargs.get("until") or []
                until = (until,) if isinstance(until, str) else tuple(until)
                groups.setdefault((until, int(kwargs.get("max_gen_toks", 256))), []).append(i)
            for (until, max_new), idx in groups.items():
                prompts = [self._prompt(requests[i].args[0], max_new) for i in idx]
                params = SamplingParams(max_new_tokens=max_new, temperature=0.0)
                done = self.gen.complete(prompts, params, stop=list(until))
                for i, completion in zip(idx, done, strict=True):
                    results[i] = completion.text
        return results

    def _prompt(self, context: str, max_new: int) -> list[int]:
        ids = self.gen.prompt_ids(context) or [self.prefix_id]
        return ids[-max(1, self.max_length - max_new) :]


def main() -> None:
    """Register the model, then run lm-eval's command line (``python -m moelab.eval.lm_eval``)."""
    cli = require("lm_eval.__main__", "eval", "lm-eval")
    sys.argv[0] = "lm_eval"
    cli.cli_evaluate()


if __name__ == "__main__":
    main()
