"""An exactly measurable testbed: a real transformer policy on an enumerable response space.

Here: its words and the limits of its shape, which the demos check before importing any model code."""

import math

PROMPT_WORDS = ("hello", "world", "please", "write", "say", "which", "answer", "instruction")
CONTENT_WORDS = ("a", "b", "c", "d", "e", "f", "g", "h")
MAX_RESPONSES = 4096  # responses per prompt the testbed enumerates: its preference is prompts × n × n floats


def check_testbed_shape(tokens: int, length: int, prompts: int) -> None:
    """Refuse a testbed that cannot be built: too few or many tokens or prompts, or more than
    :data:`MAX_RESPONSES` responses (``tokens ** length``)."""
    if not 2 <= tokens <= len(CONTENT_WORDS):
        raise ValueError(f"--tokens: the testbed takes 2–{len(CONTENT_WORDS)} tokens, got {tokens}")
    if not 1 <= prompts <= len(PROMPT_WORDS):
        raise ValueError(f"--prompts: the testbed takes 1–{len(PROMPT_WORDS)} prompts, got {prompts}")
    if length < 1 or length * math.log(tokens) > math.log(MAX_RESPONSES) + 1e-9:
        raise ValueError(f"--length: {tokens} tokens and length {length} give {tokens}**{length} responses; the testbed "
                         f"enumerates 1 to {MAX_RESPONSES:,} (a prompts × n × n preference matrix)")
