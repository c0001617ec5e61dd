"""Helpers shared by the tests that run the pipeline from files, as a user would."""

import json
from pathlib import Path

from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer


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
