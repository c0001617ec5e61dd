"""The constrained policy: its exact distribution sums to one and matches sampling frequencies."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from comal.llm.logprobs import Encoded, batched_logps
from comal.llm.tiny import tiny_config, tiny_tokenizer
from comal.testbed.space import ConstrainedLlama, ResponseSpace, exact_distribution


def constrained_model(length=3, seed=0, words=("a", "b", "c", "d")):
    tokenizer = tiny_tokenizer()
    tokens = tuple(tokenizer.convert_tokens_to_ids(list(words)))
    space = ResponseSpace(tokens, length, tokenizer.eos_token_id, prompt_length=2)
    config = tiny_config(tokenizer)
    config.response_space = {"tokens": list(tokens), "length": length, "eos": tokenizer.eos_token_id,
                             "prompt_length": 2}
    torch.manual_seed(seed)
    return ConstrainedLlama(config).eval(), tokenizer, space


def test_space_indexes_every_response_once():
    _, _, space = constrained_model()
    responses = space.responses()
    assert responses.shape == (64, 4)
    assert [space.index(r) for r in responses] == list(range(64))
    assert space.index(list(responses[5][:-1])) is None  # no EOS
    assert space.index([0, 0, 0, space.eos]) is None  # tokens outside the space


def test_exact_distribution_matches_sampling_frequencies():
    model, tokenizer, space = constrained_model()
    with torch.no_grad():
        model.lm_head.weight *= 40  # a peaked, far from uniform policy, so the test can tell them apart
    prompt = [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("hello")]
    exact = exact_distribution(model, prompt)
    assert exact.sum() == pytest.approx(1.0, abs=1e-6)
    assert exact.max() > 3 / space.size  # peaked: a uniform policy would pass too easily
    torch.manual_seed(1)
    with torch.no_grad():
        drawn = model.generate(torch.tensor([prompt]).expand(20_000, -1), do_sample=True, max_new_tokens=4,
                               top_k=0, top_p=1.0, temperature=1.0, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=space.eos)[:, 2:]
    indices = [space.index(row) for row in drawn.tolist()]
    assert None not in indices  # every sample lies in the space
    counts = np.bincount(indices, minlength=space.size)
    assert chisquare(counts, exact / exact.sum() * len(indices)).pvalue > 1e-3


def test_training_log_probs_are_the_exact_distribution():
    """The pipeline's sequence log-probs (logits for the response columns only) read the constrained policy."""
    model, tokenizer, space = constrained_model()
    prompt = [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("say")]
    responses = space.responses()[[0, 7, 63]]
    logps = batched_logps(model, [Encoded(tuple(prompt) + tuple(r.tolist()), 2) for r in responses],
                          tokenizer.pad_token_id)
    np.testing.assert_allclose(np.exp(logps), exact_distribution(model, prompt)[[0, 7, 63]], rtol=1e-4)


def test_constrained_model_saves_and_reloads(tmp_path):
    model, tokenizer, _ = constrained_model()
    prompt = [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("say")]
    model.save_pretrained(tmp_path)
    again = ConstrainedLlama.from_pretrained(tmp_path)
    np.testing.assert_allclose(exact_distribution(again, prompt), exact_distribution(model, prompt), atol=1e-6)


def test_a_few_thousand_responses_are_enumerated_in_batches():
    model, tokenizer, space = constrained_model(length=4, words=tuple("abcdefgh"))
    assert space.size == 4096
    prompt = [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("say")]
    exact = exact_distribution(model, prompt, batch_size=500)  # 9 batches, the last one short
    assert exact.shape == (4096,) and exact.sum() == pytest.approx(1.0, abs=1e-6)
    # the response with index i is the base-8 digits of i: check one against its sequence log-prob
    ids = torch.tensor([prompt + space.responses()[1234].tolist()])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, 1:-1].double().log_softmax(-1)
    by_hand = logits.gather(-1, ids[0, 2:, None])[:, 0].sum().exp().item()
    assert exact[1234] == pytest.approx(by_hand, rel=1e-6)
