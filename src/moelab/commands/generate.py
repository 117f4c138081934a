"""`moelab generate CKPT --prompt TEXT [...]`: print completions (or a chat reply) from a checkpoint.

CKPT is an HF directory, a moelab checkpoint directory or a run directory (its latest). Several
``--prompt`` are completed together in one batch. ``--chat`` wraps each prompt as a user turn in
the model's chat template and stops on the family's end-of-turn token; ``--stream`` prints text
as it is generated (one prompt).
"""

from __future__ import annotations

import argparse
import sys

_TEMPLATE_ROOM = 256
"""Cache slots kept for what the chat template adds around a prompt (and a BOS)."""


def _run(args: argparse.Namespace) -> int:
    from moelab.infer.loading import load_generator
    from moelab.infer.sampling import SamplingParams

    try:
        params = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            presence_penalty=args.presence_penalty,
            frequency_penalty=args.frequency_penalty,
            seed=args.seed,
        )
        # A byte-level BPE token is at least one byte, so the cache row needs no more than the
        # prompt's bytes (+ room for a chat template) + the new tokens, not the whole context.
        longest = max(len(p.encode("utf-8")) for p in args.prompt)
        gen = load_generator(
            args.ckpt,
            tokenizer=args.tokenizer,
            device=args.device,
            dtype=args.dtype,
            max_batch=max(1, len(args.prompt)),
            max_len=longest + _TEMPLATE_ROOM + args.max_new_tokens,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"moelab generate: {err}", file=sys.stderr)
        return 2
    if args.chat:
        prompts = [gen.chat_ids([{"role": "user", "content": p}]) for p in args.prompt]
    else:
        prompts = [gen.prompt_ids(p) for p in args.prompt]
    if args.stream:
        if len(prompts) != 1:
            print("moelab generate: --stream takes one --prompt", file=sys.stderr)
            return 2
        for delta in gen.stream(prompts[0], params, stop=args.stop, chat=args.chat):
            print(delta, end="", flush=True)
        print()
        return 0
    for i, done in enumerate(gen.complete(prompts, params, stop=args.stop, chat=args.chat)):
        if len(prompts) > 1:
            print(f"--- [{i}] {done.finish_reason}, {len(done.token_ids)} tokens")
        print(done.text if args.chat else args.prompt[i] + done.text)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="complete prompts with a trained or exported model")
    p.add_argument("ckpt", help="HF directory, moelab checkpoint or run directory")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--chat", action="store_true", help="apply the chat template (user turn)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's, -2..2")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's, -2..2")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_run)
