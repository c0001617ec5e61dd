"""Sampling: k responses per prompt, reproducible by seed, long prompts truncated or skipped."""

import pytest
from transformers import LogitsProcessorList

from comal.llm.logprobs import encode, left_padded
from comal.llm.sample import SamplingConfig, SeededPrompts, prompt_seed, sample
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer
from conftest import first_token_test, nucleus_distribution

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


def test_a_prompts_samples_do_not_depend_on_the_batch_or_the_other_prompts():
    """Per-prompt seeds: what the processes of a sharded run draw is what one process draws."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    config = SamplingConfig(samples_per_prompt=3, max_new_tokens=8, batch_size=2, seed=4)
    together = sample(model, tokenizer, PROMPTS, config)
    assert sample(model, tokenizer, PROMPTS[::-1], config.model_copy(update={"batch_size": 3})).response_ids \
        == together.response_ids[::-1]
    assert [sample(model, tokenizer, [prompt], config).response_ids[0] for prompt in PROMPTS] == together.response_ids


def test_shared_prompt_cache_draws_what_generate_draws():
    """Each prompt is read once for its k samples; the tokens are those of one generate call on the
    whole rows with the same per-prompt streams."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    config = SamplingConfig(samples_per_prompt=3, max_new_tokens=8, batch_size=3, seed=4)
    drawn = sample(model, tokenizer, PROMPTS, config)
    order = sorted(PROMPTS, key=lambda prompt: len(encode(tokenizer, prompt, ()).ids))  # sample() batches by length
    input_ids, attention = left_padded([encode(tokenizer, prompt, ()).ids for prompt in order], tokenizer.pad_token_id)
    rows = SeededPrompts([prompt_seed(4, prompt) for prompt in order], 3, config.temperature, config.top_p)
    output = model.generate(input_ids=input_ids.repeat_interleave(3, 0), attention_mask=attention.repeat_interleave(3, 0),
                            do_sample=False, max_new_tokens=8, logits_processor=LogitsProcessorList([rows]),
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    eos = tokenizer.eos_token_id
    tokens = [t[:t.index(eos) + 1] if eos in t else t for t in output[:, input_ids.shape[1]:].tolist()]
    expected = {prompt: [tuple(t) for t in tokens[3 * n:3 * n + 3]] for n, prompt in enumerate(order)}
    assert [expected[prompt] for prompt in PROMPTS] == drawn.response_ids


@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_draws_follow_the_tempered_nucleus_distribution(top_p):
    """The Gumbel-max draws of the first token match softmax(z / T) on the top-p nucleus (χ² test)."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    config = SamplingConfig(samples_per_prompt=4000, max_new_tokens=1, temperature=0.7, top_p=top_p, seed=3)
    drawn = sample(model, tokenizer, ["say hello"], config).response_ids[0]
    outside, pvalue = first_token_test([ids[0] for ids in drawn],
                                       nucleus_distribution(model, tokenizer, "say hello", 0.7, top_p))
    assert outside == 0
    assert pvalue > 1e-3


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
