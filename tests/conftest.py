"""Helpers shared by the tests that run the pipeline from files, as a user would."""

import json
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from comal.llm.logprobs import encode
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer


def comal(*args) -> tuple[int, str, str]:
    """``comal ARGS`` in this process, as the console script runs it (usage errors included): the
    exit code, stdout and stderr."""
    import sys

    from typer.testing import CliRunner

    from comal.cli import run_cli

    with CliRunner().isolation() as (out, err, _):
        code = run_cli([str(arg) for arg in args])
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def save_tiny_policy(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama and its word-level tokenizer as a Hugging Face folder (``model.path`` of a config)."""
    tokenizer = tiny_tokenizer()
    tiny_causal_lm(tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_prompts(path: Path, prompts) -> Path:
    """A ``.jsonl`` prompt file with one ``{"prompt": ...}`` row per prompt."""
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def nucleus_distribution(model, tokenizer, prompt: str, temperature: float, top_p: float) -> np.ndarray:
    """The first response token's distribution: softmax(z / T) on the top-p nucleus (transformers'
    rule: the smallest set of most likely tokens with mass ≥ top_p), renormalised."""
    with torch.no_grad():
        logits = model(torch.tensor([encode(tokenizer, prompt, ()).ids])).logits[0, -1].double() / temperature
    probabilities = torch.softmax(logits, -1)
    ranked = probabilities.sort(descending=True)
    probabilities[ranked.indices[(ranked.values.cumsum(0) - ranked.values) >= top_p]] = 0
    return (probabilities / probabilities.sum()).numpy()


def first_token_test(first_tokens, probabilities: np.ndarray) -> tuple[int, float]:
    """Draws outside the support, and the χ² p-value of the draws against ``probabilities`` (tokens
    expected fewer than 5 times pooled into one cell)."""
    counts = np.bincount(first_tokens, minlength=len(probabilities))
    expected = probabilities * len(first_tokens)
    kept = expected >= 5
    observed, expected = np.append(counts[kept], counts[~kept].sum()), np.append(expected[kept], expected[~kept].sum())
    return int(counts[probabilities == 0].sum()), scipy.stats.chisquare(observed[expected > 0], expected[expected > 0]).pvalue
