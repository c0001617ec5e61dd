"""Sequence log-probs: response tokens only, equal to a token-by-token sum, unchanged by padding."""

import numpy as np
import pytest
import torch

from comal.llm import logprobs
from comal.llm.logprobs import Encoded, batched_logps, collate, encode, sequence_logps
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer


def test_encode_puts_the_response_after_the_prompt():
    tokenizer = tiny_tokenizer()
    encoded = encode(tokenizer, "say hello", [5, 6, tokenizer.eos_token_id])
    assert encoded.ids[0] == tokenizer.bos_token_id
    assert encoded.ids[encoded.response_start:] == (5, 6, tokenizer.eos_token_id)


def test_sequence_logp_is_the_sum_over_response_tokens_only():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    encoded = encode(tokenizer, "say hello world", [7, 8, 9])
    with torch.no_grad():
        logits = model(torch.tensor([encoded.ids])).logits[0]
    by_hand = sum(torch.log_softmax(logits[t - 1], -1)[encoded.ids[t]].item()
                  for t in range(encoded.response_start, len(encoded.ids)))
    assert abs(batched_logps(model, [encoded], tokenizer.pad_token_id)[0] - by_hand) < 1e-4


def test_padding_and_batching_do_not_change_log_probs():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    sequences = [encode(tokenizer, "say", [5]), encode(tokenizer, "please write hello world", [6, 7, 8, 9]),
                 Encoded((1, 5, 6), 1)]
    together = batched_logps(model, sequences, tokenizer.pad_token_id, batch_size=3)
    alone = [batched_logps(model, [s], tokenizer.pad_token_id)[0] for s in sequences]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_gradients_flow_to_the_policy():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer).train()
    batch = collate([encode(tokenizer, "say", [5, 6])], tokenizer.pad_token_id)
    sequence_logps(model, batch).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_response_only_logits_give_the_full_softmax_values_and_gradients(chunk, monkeypatch):
    """Logits for the response columns only, a chunk of positions at a time and recomputed in the
    backward pass, change neither the log-probs nor their gradients."""
    tokenizer = tiny_tokenizer()
    if chunk is not None:  # a budget of `chunk` positions of 2 rows
        monkeypatch.setattr(logprobs, "LOGIT_BUDGET", chunk * 4 * 2 * len(tokenizer))
    sequences = [encode(tokenizer, "say", [5]), encode(tokenizer, "please write hello world", [6, 7, 8, 9])]
    lean, full = tiny_causal_lm(tokenizer).train(), tiny_causal_lm(tokenizer).train()
    values = sequence_logps(lean, collate(sequences, tokenizer.pad_token_id))
    values.sum().backward()
    by_hand = []
    for sequence in sequences:
        logits = full(torch.tensor([sequence.ids])).logits[0]
        steps = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(sequence.ids[1:])[:, None])[:, 0]
        by_hand.append(steps[sequence.response_start - 1:].sum())
    torch.testing.assert_close(values, torch.stack(by_hand), atol=1e-5, rtol=1e-5)
    torch.stack(by_hand).sum().backward()
    for (name, a), b in zip(lean.named_parameters(), full.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_responses_sharing_their_prompt_in_one_row_give_the_values_and_gradients_of_separate_rows(attention):
    """A prompt forwarded once for several of its responses (a 4D block mask, positions as if each
    response were alone) changes neither the log-probs nor their gradients."""
    tokenizer = tiny_tokenizer()
    sequences = [encode(tokenizer, "please write hello world", ids) for ids in ([5], [6, 7, 8, 9], [10, 11])]
    sequences += [encode(tokenizer, "say", ids) for ids in ([12, 13, 14], [15])] + [encode(tokenizer, "a b", [16, 17])]
    packed, separate = (tiny_causal_lm(tokenizer).train() for _ in range(2))
    for model in (packed, separate):
        model.config._attn_implementation = attention
    together = sequence_logps(packed, collate(sequences, tokenizer.pad_token_id, rows=[[0, 1, 2], [3, 4], [5]]))
    alone = sequence_logps(separate, collate(sequences, tokenizer.pad_token_id))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    (together * torch.arange(1.0, 7.0)).sum().backward()
    (alone * torch.arange(1.0, 7.0)).sum().backward()
    for (name, a), b in zip(packed.named_parameters(), separate.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_prompt_is_shared_only_where_the_cost_model_says_it_saves():
    """Rows of m responses behind one prompt cost ``per_token · L + per_pair · L²`` each: a long
    prompt with short responses goes into one row, a short prompt with long responses into a row
    per response; without a cost every sequence has its own row."""
    cost = logprobs.PackingCost(per_token=100.0, per_pair=1.0)
    long_prompt = [Encoded(tuple(range(1, 61)) + (70 + k,) * 5, 60) for k in range(4)]  # 60 + 4 × 5 = 80 tokens
    assert cost(80) < 4 * cost(65)
    assert logprobs.shared_prompt_rows(long_prompt, cost) == [[0, 1, 2, 3]]
    short_prompt = [Encoded((1, 2) + (70 + k,) * 150, 2) for k in range(3)]  # one row: 452 tokens, three: 152 each
    assert cost(452) > 3 * cost(152) and 2 * cost(302) > 3 * cost(152)
    assert logprobs.shared_prompt_rows(short_prompt, cost) == [[0], [1], [2]]
    assert logprobs.shared_prompt_rows(long_prompt + short_prompt, None) == [[i] for i in range(7)]
    assert logprobs.shared_prompt_rows(short_prompt + long_prompt, cost) == [[0], [1], [2], [3, 4, 5, 6]]


def test_batched_log_probs_group_a_prompts_sequences_and_keep_their_order():
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    sequences = [encode(tokenizer, prompt, ids) for ids in ([5, 6], [7]) for prompt in ("say", "hello world", "a")]
    shared = batched_logps(model, sequences, tokenizer.pad_token_id, batch_size=4)
    alone = [batched_logps(model, [s], tokenizer.pad_token_id)[0] for s in sequences]
    np.testing.assert_allclose(shared, alone, atol=1e-5)
    assert logprobs.shared_prompt_rows(sequences[:2] + sequences[3:5], logprobs.PackingCost.of(model)) == [[0, 2], [1, 3]]
