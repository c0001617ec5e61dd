"""The README's real-model example, run as written, and what it shows.

Runs ``configs/smollm2-ultrafeedback.yaml`` (SmolLM2-135M-Instruct aligned with COMAL, judged by
itself; ``make smollm2`` prepares it) into ``runs/smollm2-ultrafeedback``, the folder ``comal run``
uses (a finished or interrupted run there is resumed, not redone), then records per iteration the
win rate of π_{t+1} against the start on the held-out prompts (both orders, each order alone, the
95% bootstrap interval), the response lengths, the judge-quality figures of every judge stage, and
the final checkpoint's greedy answers to a few questions after a plain ``from_pretrained``.

    python benchmarks/real_example.py [--config configs/smollm2-ultrafeedback.yaml]

Saves ``benchmarks/results/smollm2_ultrafeedback.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from comal.llm.config import load_config
from comal.llm.loop import open_run

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "smollm2_ultrafeedback.json"
QUESTIONS = ("What is the capital of France?", "Give me one tip for sleeping better.",
             "Write a haiku about the sea.")


def greedy_answers(checkpoint: Path) -> dict[str, str]:
    """The checkpoint's greedy answers, loaded as a user would: plain ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    answers = {}
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model.generate(**ids, max_new_tokens=48, do_sample=False)
        answers[question] = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-ultrafeedback.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = load_config(args.config)
    folder = ROOT / "runs" / args.config.stem
    started = time.perf_counter()
    run = open_run(config, folder, progress=lambda message: print(message, flush=True))
    run.run()
    seconds = time.perf_counter() - started
    final = run.policy(config.iterations)
    result = {"config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
              "run_folder": str(folder.relative_to(ROOT)), "seconds_this_call": round(seconds, 1),
              "evaluations": run.evaluations(), "judge_quality": run.judge_quality(),
              "final_checkpoint": str(final.relative_to(ROOT)),
              "greedy_answers": {"start": greedy_answers(run.folder.start), "final": greedy_answers(final)}}
    args.out.write_text(json.dumps(result, indent=1))
    last = result["evaluations"][-1]
    low, high = last["vs_start"]["ci95"]
    print(f"final vs start: {last['win_rate_vs_start']:.3f} [{low:.3f}, {high:.3f}] on {last['prompts']} prompts "
          f"(listed first {last['vs_start']['listed_first']:.3f}, second {last['vs_start']['listed_second']:.3f}); "
          f"saved {args.out}")


if __name__ == "__main__":
    main()
