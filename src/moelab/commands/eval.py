"""`moelab eval perplexity CKPT --data SHARDS [--tokenizer DIR]`: held-out loss, ppl, bits/byte.

CKPT is an HF directory, a moelab checkpoint or a run directory (its latest). Bits per byte need
the tokenizer the shards were made with: ``--tokenizer`` when given, else a tokenizer.json in
the checkpoint or run directory; its hash must match the shards' ``meta.json``. Without one the
command still reports loss and perplexity and says why bits per byte is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _byte_lengths(args: argparse.Namespace, shards_hash: str):
    from moelab.eval.perplexity import token_byte_lengths
    from moelab.infer.loading import find_tokenizer_dir
    from moelab.tokens.tokenizer import Tokenizer

    try:
        tok = Tokenizer.from_file(find_tokenizer_dir(args.ckpt, args.tokenizer))
    except FileNotFoundError as err:
        return None, f"no bits per byte: {err}"
    if tok.hash != shards_hash:
        raise ValueError(
            f"tokenizer {tok.hash} is not the one the shards were made with ({shards_hash})"
        )
    return token_byte_lengths(tok), None


def _training_seq_len(ckpt: str) -> int | None:
    """``batch.seq_len`` of the training config saved with a moelab checkpoint, if any."""
    import yaml

    from moelab.checkpoint.layout import resolve_model_path

    kind, path = resolve_model_path(ckpt)
    config = path / "config.yaml"
    if kind != "moelab" or not config.is_file():
        return None
    value = ((yaml.safe_load(config.read_text()) or {}).get("batch") or {}).get("seq_len")
    return value if isinstance(value, int) and value > 0 else None


def _perplexity(args: argparse.Namespace) -> int:
    from moelab.checkpoint.layout import load_model
    from moelab.eval.perplexity import evaluate_perplexity
    from moelab.tokens.shards import ShardError, ShardReader

    try:
        model = load_model(args.ckpt, device=args.device)
        reader = ShardReader(args.data, vocab_size=model.config.vocab_size)
        table, note = _byte_lengths(args, reader.meta.tokenizer_hash)
    except (ValueError, FileNotFoundError, ShardError) as err:
        print(f"moelab eval: {err}", file=sys.stderr)
        return 2
    if note and not args.json:
        print(note, file=sys.stderr)
    seq_len = args.seq_len or _training_seq_len(args.ckpt) or 512
    seq_len = min(seq_len, model.config.max_position_embeddings)
    result = evaluate_perplexity(
        model,
        reader,
        seq_len=seq_len,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        byte_lengths=table,
        log=None if args.json else lambda m: print(f"  {m}", file=sys.stderr),
    )
    record = {"ckpt": str(args.ckpt), "data": str(args.data), "seq_len": seq_len}
    record.update(result.to_dict())
    if args.unigram_from:
        from moelab.eval.perplexity import unigram_counts, unigram_perplexity

        counts = unigram_counts(args.unigram_from, model.config.vocab_size)
        base = unigram_perplexity(counts, reader, max_tokens=args.max_tokens, byte_lengths=table)
        record["unigram"] = {"counts_from": str(args.unigram_from)} | base.to_dict()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    bpb = f"{result.bits_per_byte:.4f}" if result.bits_per_byte is not None else "n/a"
    print(
        f"tokens {result.tokens:,}  loss {result.loss:.4f}  perplexity {result.perplexity:.3f}  "
        f"bits/byte {bpb}  ({result.tokens_per_s:,.0f} tok/s)"
    )
    if "unigram" in record:
        base = record["unigram"]
        print(
            f"unigram baseline: loss {base['loss']:.4f}  perplexity {base['perplexity']:.3f}  "
            f"(model/baseline perplexity {result.perplexity / base['perplexity']:.3f})"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="evaluate a model (held-out perplexity)")
    sub = ev.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    p = sub.add_parser("perplexity", help="loss, perplexity and bits per byte on token shards")
    p.add_argument("ckpt", help="HF directory, moelab checkpoint or run directory")
    p.add_argument("--data", required=True, help="a token shard folder (e.g. tokens/validation)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its folder (bits/byte)")
    p.add_argument(
        "--seq-len", type=int, default=None, help="context per window (default: training's, or 512)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N")
    p.add_argument(
        "--unigram-from", default=None, help="also score an add-one unigram fitted on these shards"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_perplexity)
    ev.set_defaults(func=lambda _args: ev.print_help() or 2)
