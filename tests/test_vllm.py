"""``sampling.backend: vllm`` against a real vLLM (its CPU build here: ``make vllm`` puts it in
.venv-vllm, beside the project's environment, as it pins its own torch and transformers). The
samples are drawn there by tests/vllm_sampling.py and checked here against the policy itself.
Skipped without a vLLM: set COMAL_VLLM_PYTHON to a Python that has it (`make test` does when
.venv-vllm exists), or install vllm into this environment."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comal.llm.tiny import tiny_tokenizer
from conftest import first_token_test, nucleus_distribution

HERE = Path(__file__).parent


def vllm_python() -> str | None:
    named = os.environ.get("COMAL_VLLM_PYTHON")
    if named:
        return named if os.access(named, os.X_OK) else None
    return sys.executable if importlib.util.find_spec("vllm") else None


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM: `make vllm` builds .venv-vllm (or set COMAL_VLLM_PYTHON to a Python with vllm)")
    out = tmp_path_factory.mktemp("vllm")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}
    done = subprocess.run([python, str(HERE / "vllm_sampling.py"), str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "samples.json").read_text())


def test_vllm_writes_the_sample_stage_format(drawn):
    _, calls = drawn
    tokenizer = tiny_tokenizer()
    samples = calls["all"]
    assert samples["prompts"] == ["the cat sat", "a dog ran far", "birds sing at dawn"]
    for responses, texts in zip(samples["response_ids"], samples["texts"]):
        assert len(responses) == 4
        for ids, text in zip(responses, texts):
            assert 1 <= len(ids) <= 6 and text == tokenizer.decode(ids, skip_special_tokens=True)
            eos = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id]
            assert eos in ([], [len(ids) - 1]), "a response ends at its first EOS"
            assert len(ids) == 6 or eos, "a response cut short must have stopped at EOS"


def test_vllm_draws_a_prompts_samples_from_its_own_seed(drawn):
    """The same prompt gives the same samples in another call, among other prompts, in another order."""
    _, calls = drawn
    first, second = calls["all"], calls["reordered"]
    assert second["response_ids"][1] == first["response_ids"][2]
    assert second["response_ids"][2] == first["response_ids"][0]
    assert second["truncated"] == 1 and second["skipped"] == 0  # cut from the left to fit 64 − 6 tokens


def test_vllm_samples_the_policy(drawn):
    """4,000 first tokens against the policy's tempered top-p distribution (χ², tokens expected ≥ 5 times)."""
    from transformers import AutoModelForCausalLM

    out, calls = drawn
    model = AutoModelForCausalLM.from_pretrained(out / "policy").eval()
    probabilities = nucleus_distribution(model, tiny_tokenizer(), "the cat sat", 0.8, 0.9)
    first_tokens = [response[0] for response in calls["first_tokens"]["response_ids"][0]]
    assert (probabilities * len(first_tokens) >= 5).sum() >= 3, "the test needs a distribution that is not one token"
    outside, pvalue = first_token_test(first_tokens, probabilities)
    assert outside == 0, "a token outside the nucleus was drawn"
    assert pvalue > 1e-3
