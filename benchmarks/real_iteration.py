"""Per-stage time of one iteration of the real-model example on this machine.

Runs ``configs/smollm2-ultrafeedback.yaml`` (SmolLM2-135M-Instruct as policy and judge; ``make
smollm2`` prepares it) for one iteration in a fresh run folder, with the evaluation left out, and
times every stage through the pipeline's progress hook (items counted, seconds, rate). The target
of issue 9 is ≤ 5 minutes for the whole iteration on 2 otherwise idle cores.

    python benchmarks/real_iteration.py [--config configs/smollm2-ultrafeedback.yaml] [--iterations 1]

Saves ``benchmarks/results/real_iteration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from comal.llm.config import load_config
from comal.llm.loop import open_run

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "real_iteration.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "smollm2-ultrafeedback.yaml")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = load_config(args.config, {"iterations": args.iterations})
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"prompts": None})})
    stages = []

    @contextmanager
    def timed(description: str, total: int):
        counted, started = [], time.perf_counter()
        yield counted.append
        seconds = time.perf_counter() - started
        stages.append({"stage": description, "items": sum(counted), "total": total, "seconds": round(seconds, 2),
                       "per_second": round(sum(counted) / seconds, 3) if seconds else None})
        print(f"{description}: {sum(counted)}/{total} in {seconds:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run = open_run(config, Path(folder) / "run", bar=timed, progress=lambda message: print(message, flush=True))
        opened = time.perf_counter() - started
        run.run()
        total = time.perf_counter() - started
        quality = run.judge_quality()
    result = {"config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
              "iterations": args.iterations, "machine": platform.processor() or platform.machine(),
              "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(), "open_seconds": round(opened, 1),
              "total_seconds": round(total, 1), "stages": stages, "judge_quality": quality}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.iterations} iteration(s) in {total / 60:.1f} min (opening the run {opened:.0f} s); saved {args.out}")


if __name__ == "__main__":
    main()
