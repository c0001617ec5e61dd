"""Training throughput and peak memory: comal's INPO/COMAL step against TRL's DPOTrainer with
``loss_type="ipo"`` (holding a reference model, and with precomputed reference log-probs), on the
same model, data and batch; comal with and without activation checkpointing, which TRL's
DPOConfig turns on by default, and with checkpointing but without forwarding a prompt once for
the responses that share it (``training.share_prompts: false``), to show what that saves. Each
variant runs in its own process so peak memory is its own, counted from before any model is built
(the weights, and TRL's reference copy, included). Every cost is timed on both sides: comal's
encoding of the rows and its anchors' log-probs; TRL's trainer construction, which tokenises the
dataset and (TRL ≥ 1.1) precomputes the reference log-probs there, before ``train()``. Two data shapes: ``pairs`` (every row its own two responses,
as hard rows) and ``shared`` (k = 4 responses a prompt and all 6 pairs among them, as COMAL's soft
rows train: comal forwards each distinct response once a batch, TRL each pair's two). At two
sizes: a 4-layer Llama with hidden size 256, and SmolLM2-135M's architecture (randomly initialised
from its configuration: 30 layers, hidden 576, a 49,152-token vocabulary). Also sampling and
judging throughput (sequences/s) at batch sizes 1, 8, 32 at the small size. Prints and saves JSON.

A CPU virtual machine's speed drifts by up to a quarter over minutes, so with ``--repeats R`` every
size and shape runs R rounds of all five variants, each round starting one variant later (in round
r the variants run in the order rotated by r), and the saved ratio of each pairing is the median of
its R per-round ratios (each round's ratios are saved as well).

    python benchmarks/train_step.py                  # needs trl (a benchmark-only extra)
    python benchmarks/train_step.py --sizes tiny --shapes pairs --pairs 32
    python benchmarks/train_step.py --repeats 3      # benchmarks/results/train_step.json (31 minutes on 2 cores)
    python benchmarks/train_step.py --repeats 3 --precision bf16 --out benchmarks/results/train_step_gpu_bf16.json  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from comal.llm.tiny import WORDS, tiny_config, tiny_tokenizer

VARIANTS = ("comal", "comal-checkpointing", "comal-checkpointing-unshared", "trl-reference-model", "trl-precomputed")
COMAL_VARIANTS = VARIANTS[:3]
SIZES = {  # LlamaConfig fields over tiny_config's
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5),
}


def peak_memory_mb(baseline_kb: int) -> float:
    """Peak memory of the training part: CUDA's allocator where there is one, else the growth of RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024


SHAPES = {"pairs": 2, "shared": 4}  # responses a prompt


def make_data(pairs: int, prompt_words: int, response_words: int, shape: str = "pairs", seed: int = 0) -> list[dict]:
    """``pairs`` preference rows; each prompt's k responses (``SHAPES``) paired in all k(k−1)/2 ways."""
    rng = np.random.default_rng(seed)
    words = [w for w in WORDS if w.isalpha()]
    text = lambda k: " ".join(rng.choice(words, size=k))
    rows = []
    while len(rows) < pairs:
        prompt, responses = text(prompt_words), [text(response_words) for _ in range(SHAPES[shape])]
        rows += [{"prompt": prompt, "chosen": responses[i], "rejected": responses[j]}
                 for i in range(len(responses)) for j in range(i + 1, len(responses))]
    return rows[:pairs]


def build_model(tokenizer, size: str):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(tokenizer, **SIZES[size]))


def run_comal(args, tokenizer, data, checkpointing: bool, share_prompts: bool = True) -> dict:
    from comal.llm.logprobs import encode
    from comal.llm.stages import distinct_logps
    from comal.llm.train import TrainConfig, TrainRow, train
    from comal.rules import make_rule

    import accelerate  # noqa: F401  (imported before the baseline, as TRL's variants import it with trl)
    import transformers.optimization  # noqa: F401

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(tokenizer, args.size)
    step = make_rule("comal", 1.0, inner="inpo", eta=args.eta, tau=args.tau_eta_ratio / args.eta).prox_steps()[0]
    start = time.perf_counter()
    encode_text = lambda prompt, text: encode(tokenizer, prompt, tokenizer(text, add_special_tokens=False)["input_ids"]
                                             + [tokenizer.eos_token_id])
    firsts = [encode_text(row["prompt"], row["chosen"]) for row in data]
    seconds = [encode_text(row["prompt"], row["rejected"]) for row in data]
    # anchors: log-probs of π_t and μ (both the start model here), once per distinct response
    logps = distinct_logps(model, firsts + seconds, tokenizer.pad_token_id, args.batch, share_prompts=share_prompts)
    anchor_first, anchor_second = [logps[f] for f in firsts], [logps[s] for s in seconds]
    anchors_seconds = time.perf_counter() - start
    rows = [TrainRow(f, {"current": a, "reference": a}, 0.5, s, {"current": b, "reference": b})
            for f, s, a, b in zip(firsts, seconds, anchor_first, anchor_second)]
    start = time.perf_counter()
    train(model, rows, step, TrainConfig(epochs=1, batch_size=args.batch, learning_rate=1e-5, warmup_ratio=0.0,
                                          mixed_precision=args.precision, gradient_checkpointing=checkpointing,
                                          share_prompts=share_prompts),
          pad_id=tokenizer.pad_token_id)
    train_seconds = time.perf_counter() - start
    tokens = sum(len(f.ids) + len(s.ids) for f, s in zip(firsts, seconds))
    return {"train_s": train_seconds, "anchors_s": anchors_seconds, "tokens": tokens,
            "peak_memory_mb": peak_memory_mb(baseline)}


def run_trl(args, tokenizer, data, precompute: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(tokenizer, args.size)
    reference = None if precompute else build_model(tokenizer, args.size)
    start = time.perf_counter()  # construction tokenises and, with precompute, computes the reference log-probs
    config = DPOConfig(output_dir="/tmp/comal-trl-bench", loss_type="ipo", beta=1.0 / args.eta,
                       per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=1e-5,
                       precompute_ref_log_probs=precompute, report_to=[], use_cpu=not torch.cuda.is_available(),
                       bf16=args.precision == "bf16", logging_steps=10_000, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=Dataset.from_list(data),
                         processing_class=tokenizer)
    setup_seconds = time.perf_counter() - start
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer(row["prompt"] + " " + row[side])["input_ids"]) + 1
                 for row in data for side in ("chosen", "rejected"))
    return {"train_s": seconds, "setup_s": setup_seconds, "tokens": tokens, "peak_memory_mb": peak_memory_mb(baseline)}


def throughput(args, tokenizer) -> dict:
    """Sequences per second for sampling (``generate``) and for the LLM judge, at batch sizes 1, 8, 32."""
    from comal.llm.judge import LLMJudge
    from comal.llm.sample import SamplingConfig, sample

    model = build_model(tokenizer, args.size).eval()
    judge = LLMJudge(model, tokenizer, min_mass=0.0)
    data = make_data(32, 16, args.response_words)
    prompts = [row["prompt"] for row in data]
    results = {}
    for batch in (1, 8, 32):
        start = time.perf_counter()
        sample(model, tokenizer, prompts[:max(batch, 8)],
               SamplingConfig(samples_per_prompt=1, batch_size=batch, max_new_tokens=args.response_words))
        sampled = max(batch, 8) / (time.perf_counter() - start)
        judge.batch_size = batch
        start = time.perf_counter()
        judge.prefer(prompts, [row["chosen"] for row in data], [row["rejected"] for row in data])
        judged = len(data) / (time.perf_counter() - start)
        results[batch] = {"sample_sequences_per_s": sampled, "judge_pairs_per_s": judged}
    return results


def compare(results: dict) -> dict:
    """comal against TRL in every pairing: throughput (comal's anchors counted in its time) and peak memory."""
    rate = lambda r: r["tokens"] / (r["train_s"] + r.get("anchors_s", 0.0))
    return {f"{mine} vs {peer}": {"throughput": rate(results[mine]) / rate(results[peer]),
                                  "peak_memory": results[mine]["peak_memory_mb"] / results[peer]["peak_memory_mb"]}
            for mine in COMAL_VARIANTS for peer in ("trl-reference-model", "trl-precomputed")}


def median_ratios(rounds: list[dict]) -> dict:
    """Each pairing's median over rounds of its per-round ratios (:func:`compare` of each round)."""
    per_round = [compare(results) for results in rounds]
    return {pairing: {metric: statistics.median(r[pairing][metric] for r in per_round) for metric in ratio}
            for pairing, ratio in per_round[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS + ("throughput",), help="run one variant (internal)")
    parser.add_argument("--size", choices=list(SIZES), default="tiny", help="the model of one variant (internal)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--shape", choices=list(SHAPES), default="pairs", help="the data of one variant (internal)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--response-words", type=int, default=48)
    parser.add_argument("--eta", type=float, default=10.0)
    parser.add_argument("--tau-eta-ratio", type=float, default=1 / 3)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all variants, in rotated order")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no",
                        help="bf16: mixed precision training on both sides (anchors stay float32, as comal run computes them)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json")
    args = parser.parse_args()
    tokenizer = tiny_tokenizer()
    if args.variant is not None:
        data = make_data(args.pairs, 16, args.response_words, args.shape)
        result = {"comal": lambda: run_comal(args, tokenizer, data, checkpointing=False),
                  "comal-checkpointing": lambda: run_comal(args, tokenizer, data, checkpointing=True),
                  "comal-checkpointing-unshared": lambda: run_comal(args, tokenizer, data, checkpointing=True,
                                                                    share_prompts=False),
                  "trl-reference-model": lambda: run_trl(args, tokenizer, data, precompute=False),
                  "trl-precomputed": lambda: run_trl(args, tokenizer, data, precompute=True),
                  "throughput": lambda: throughput(args, tokenizer)}[args.variant]()
        print(json.dumps(result))
        return
    sizes = {}
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("variant", "out", "size", "sizes", "shape", "shapes", "repeats")]
    run = lambda variant, size, shape: json.loads(subprocess.run(
        [sys.executable, __file__, "--variant", variant, "--size", size, "--shape", shape, *passthrough],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    for size in args.sizes:
        sizes[size] = {"model": SIZES[size], "shapes": {}}
        for shape in args.shapes:
            rounds = []
            for round_number in range(args.repeats):
                results = {}
                turn = round_number % len(VARIANTS)
                for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                    r = results[variant] = run(variant, size, shape)
                    print(f"{size} {shape} round {round_number} {variant:>20}: "
                          f"{r['tokens'] / (r['train_s'] + r.get('anchors_s', 0)):8.0f} tokens/s, "
                          f"peak memory {r['peak_memory_mb']:7.1f} MB", flush=True)
                rounds.append({variant: results[variant] for variant in VARIANTS})
            ratios = median_ratios(rounds)
            for pairing, ratio in ratios.items():
                print(f"{size} {shape} {pairing}: throughput {ratio['throughput']:.2f}×, "
                      f"peak memory {ratio['peak_memory']:.2f}×" + (" (medians)" if args.repeats > 1 else ""))
            sizes[size]["shapes"][shape] = {"results": rounds[0], "ratios": ratios} if args.repeats == 1 else \
                {"rounds": rounds, "ratios_per_round": [compare(results) for results in rounds], "ratios": ratios}
        if size == "tiny":
            sizes[size]["throughput"] = run("throughput", size, "pairs")
            for batch, row in sizes[size]["throughput"].items():
                print(f"batch {batch:>2}: sampling {row['sample_sequences_per_s']:.1f} sequences/s, "
                      f"judging {row['judge_pairs_per_s']:.1f} pairs/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()
                                                 if k not in ("out", "variant", "size", "shape")},
                                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                                    "sizes": sizes}, indent=1, default=str))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
