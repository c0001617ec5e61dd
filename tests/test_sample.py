"""Sampling: k responses per prompt, reproducible by seed, long prompts truncated or skipped."""

import pytest

from comal.llm.sample import SamplingConfig, sample
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer

PROMPTS = ["say hello", "please write a b c", "which is better"]


def test_k_samples_per_prompt_reproducible_by_seed():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    config = SamplingConfig(samples_per_prompt=3, max_new_tokens=6, batch_size=2, seed=1)
    first, again = sample(model, tokenizer, PROMPTS, config), sample(model, tokenizer, PROMPTS, config)
    assert first.prompts == PROMPTS
    assert all(len(r) == 3 for r in first.response_ids)
    assert all(1 <= len(ids) <= 6 for r in first.response_ids for ids in r)
    assert first.response_ids == again.response_ids and first.texts == again.texts
    other = sample(model, tokenizer, PROMPTS, SamplingConfig(samples_per_prompt=3, max_new_tokens=6, seed=2))
    assert other.response_ids != first.response_ids


def test_eos_ends_a_response():
    tokenizer = tiny_tokenizer()
    samples = sample(tiny_causal_lm(tokenizer), tokenizer, PROMPTS, SamplingConfig(max_new_tokens=40, seed=0))
    for responses in samples.response_ids:
        for ids in responses:
            assert tokenizer.eos_token_id not in ids[:-1]


@pytest.mark.parametrize("policy, kept, truncated, skipped", [("truncate", 2, 1, 0), ("skip", 1, 0, 1)])
def test_long_prompts_are_counted(policy, kept, truncated, skipped):
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    model.config.max_position_embeddings = 24
    long_prompt = " ".join(["hello world"] * 20)
    samples = sample(model, tokenizer, ["say hello", long_prompt],
                     SamplingConfig(samples_per_prompt=2, max_new_tokens=8, long_prompts=policy))
    assert (len(samples.prompts), samples.truncated, samples.skipped) == (kept, truncated, skipped)


def test_bad_sampling_settings():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        SamplingConfig(samples_per_prompt=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)


def test_vllm_backend_without_vllm_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    from comal.llm.sample import sample_with_vllm

    with pytest.raises(ValueError, match="vllm is not installed"):
        sample_with_vllm("model", tiny_tokenizer(), ["say hello"], SamplingConfig(backend="vllm"))
