"""What forwarding a prompt once for its responses saves, on real chat prompts with a real model.

SmolLM2-135M-Instruct (``make smollm2``) with its chat template, UltraFeedback prompts from
``data/`` (a seeded draw among those of at most ``--max-prompt-tokens`` tokens), k responses a
prompt of ``--response-tokens`` tokens each (random token ids: the cost does not depend on what they
say), ``--batch`` sequences a batch, as training takes them (a prompt's responses together). For
k = 2, 4, 8 it times the anchors' log-probs (``batched_logps``, no gradients) and a training
forward and backward pass over the same batches, with ``share_prompts`` on and off, alternating
which goes first, and reports the medians and the decoder tokens each forwards (padding included).
Prints and saves JSON.

    python benchmarks/shared_prompts.py            # benchmarks/results/shared_prompts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def draw_sequences(tokenizer, prompts: list[str], k: int, response_tokens: int, seed: int):
    from comal.llm.logprobs import encode

    rng = np.random.default_rng(seed)
    return [encode(tokenizer, prompt, list(rng.integers(0, tokenizer.vocab_size, response_tokens))
                   + [tokenizer.eos_token_id]) for prompt in prompts for _ in range(k)]


def time_pass(model, sequences, pad_id: int, batch: int, share: bool, backward: bool) -> tuple[float, int]:
    """Seconds for all batches, and the decoder tokens (rows × width) they forwarded."""
    from comal.llm.logprobs import PackingCost, batched_logps, collate, sequence_logps, shared_prompt_rows

    cost = PackingCost.of(model) if share else None
    batches = [sequences[i:i + batch] for i in range(0, len(sequences), batch)]
    collated = [collate(part, pad_id, rows=shared_prompt_rows(part, cost)) for part in batches]
    tokens = sum(b["input_ids"].numel() for b in collated)
    start = time.perf_counter()
    if backward:
        for b in collated:
            sequence_logps(model, b).sum().backward()
        model.zero_grad(set_to_none=True)
    else:
        batched_logps(model, sequences, pad_id, batch, share_prompts=share)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--response-tokens", type=int, default=96)
    parser.add_argument("--responses", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shared_prompts.json")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"error: no model at {args.model}; run `make smollm2` first, or pass --model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from comal.llm.logprobs import conversation_text, with_pad_token

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(args.model))
    pad_id = tokenizer.pad_token_id
    lines = (ROOT / "data" / "ultrafeedback_prompts_test.jsonl").read_text().splitlines()
    order = np.random.default_rng(args.seed).permutation(len(lines))
    length = lambda text: len(tokenizer(conversation_text(tokenizer, text), add_special_tokens=False)["input_ids"])
    prompts = []
    for index in order:
        text = json.loads(lines[index])["prompt"]
        if length(text) <= args.max_prompt_tokens:
            prompts.append(text)
        if len(prompts) == args.prompts:
            break
    prompt_tokens = [length(p) for p in prompts]
    print(f"{len(prompts)} prompts of {prompt_tokens} tokens (chat template included), "
          f"responses of {args.response_tokens + 1} tokens, batch {args.batch}", flush=True)
    results = {}
    for k in args.responses:
        sequences = draw_sequences(tokenizer, prompts, k, args.response_tokens, args.seed)
        row = {}
        for kind, backward in (("anchors", False), ("training", True)):
            seconds = {True: [], False: []}
            tokens = {}
            for repeat in range(args.repeats):
                for share in ((True, False) if repeat % 2 == 0 else (False, True)):
                    model.train(backward)
                    with torch.set_grad_enabled(backward):
                        elapsed, tokens[share] = time_pass(model, sequences, pad_id, args.batch, share, backward)
                    seconds[share].append(elapsed)
            shared, unshared = statistics.median(seconds[True]), statistics.median(seconds[False])
            row[kind] = {"shared_s": seconds[True], "unshared_s": seconds[False], "shared_tokens": tokens[True],
                         "unshared_tokens": tokens[False], "speedup": unshared / shared}
            print(f"k = {k}, {kind:>8}: shared {shared:6.1f} s ({tokens[True]:,} decoder tokens), "
                  f"unshared {unshared:6.1f} s ({tokens[False]:,}): {unshared / shared:.2f}×", flush=True)
        results[k] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "prompt_tokens": prompt_tokens, "results": results}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
