"""Sampling: k responses per prompt, reproducible by seed, long prompts truncated or skipped."""

import pytest
import torch

from comal.llm.logprobs import encode
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


def test_shared_prompt_cache_draws_what_generate_draws():
    """Each prompt is read once for its k samples; the draws are generate's own (same seed, same tokens)."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    config = SamplingConfig(samples_per_prompt=3, max_new_tokens=8, batch_size=3, seed=4)
    drawn = sample(model, tokenizer, PROMPTS, config)
    rows = sorted([encode(tokenizer, prompt, ()).ids for prompt in PROMPTS], key=len)  # sample() batches by length
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([(pad,) * (width - len(ids)) + ids for ids in rows])
    torch.manual_seed(config.seed)
    output = model.generate(input_ids=input_ids, attention_mask=(input_ids != pad).long(), do_sample=True,
                            temperature=config.temperature, top_p=config.top_p, max_new_tokens=8,
                            num_return_sequences=3, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    expected = {}
    for row, ids in enumerate(rows):
        tokens = output[row * 3:(row + 1) * 3, width:].tolist()
        expected[ids] = [tuple(t[:t.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in t else t)
                         for t in tokens]
    assert [expected[encode(tokenizer, prompt, ()).ids] for prompt in PROMPTS] == drawn.response_ids


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
