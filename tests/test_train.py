"""Training stage on a tiny model: the sampled loss falls and the fitted margins move to the target."""

import pytest

from comal.llm.logprobs import batched_logps, encode
from comal.llm.train import TrainConfig, TrainRow, train
from comal.rules import make_rule
from comal.games import paper_3x3
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer


def _rows(tokenizer, model, step, pointwise=False):
    prompts = ["say hello", "please write", "which is better", "say a b"]
    rows = []
    for prompt in prompts:
        chosen, rejected = encode(tokenizer, prompt, [5, 6, 2]), encode(tokenizer, prompt, [7, 2])
        logps = batched_logps(model, [chosen, rejected], tokenizer.pad_token_id)
        anchors = [{name: float(value) for name in step.anchor} for value in logps]
        if pointwise:
            rows.append(TrainRow(chosen, anchors[0], 0.1))
            rows.append(TrainRow(rejected, anchors[1], -0.1))
        else:
            rows.append(TrainRow(chosen, anchors[0], 0.5, rejected, anchors[1]))
    return rows


@pytest.mark.parametrize("name", ["comal", "sppo"])
def test_training_lowers_the_loss(tmp_path, name):
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    rule = make_rule(name, paper_3x3(), **({"inner": "inpo", "eta": 2.0, "tau": 0.1} if name == "comal" else {"eta": 2.0}))
    step = rule.prox_steps()[0]
    rows = _rows(tokenizer, model, step, pointwise=rule.pointwise)
    config = TrainConfig(epochs=15, learning_rate=1e-2, batch_size=4, warmup_ratio=0.0)
    metrics = train(model, rows, step, config, pad_id=tokenizer.pad_token_id, log_path=tmp_path / "m.jsonl")
    assert metrics[-1]["loss"] < 0.2 * metrics[0]["loss"]
    assert (tmp_path / "m.jsonl").read_text().count("\n") == len(metrics)
    if not rule.pointwise:
        assert metrics[-1]["pair_accuracy"] == 1.0
        assert metrics[-1]["margin"] == pytest.approx(step.eta * 0.5, abs=0.3)


def test_no_rows_is_a_clear_error():
    tokenizer = tiny_tokenizer()
    step = make_rule("inpo", paper_3x3()).prox_steps()[0]
    with pytest.raises(ValueError, match="no training rows"):
        train(tiny_causal_lm(tokenizer), [], step, TrainConfig(), pad_id=0)


def _fresh_losses(config, rows_of=lambda rows: rows):
    """Losses of training a fresh tiny model on the COMAL/INPO step over ``rows_of(the rows)``."""
    tokenizer = tiny_tokenizer()
    step = make_rule("comal", paper_3x3(), inner="inpo", eta=2.0, tau=0.1).prox_steps()[0]
    model = tiny_causal_lm(tokenizer)
    rows = rows_of(_rows(tokenizer, model, step))
    return [m["loss"] for m in train(model, rows, step, config, pad_id=tokenizer.pad_token_id)]


def test_activation_checkpointing_changes_memory_not_results():
    results = [_fresh_losses(TrainConfig(epochs=3, learning_rate=1e-2, batch_size=2, warmup_ratio=0.0,
                                         gradient_checkpointing=checkpointing))
               for checkpointing in (False, True)]
    assert results[0] == pytest.approx(results[1], rel=1e-4)


def test_sharing_prompts_changes_speed_not_results():
    """A pair's prompt forwarded once for both responses (packed rows) trains the same model."""
    from comal.llm.logprobs import PackingCost, shared_prompt_rows

    tokenizer = tiny_tokenizer()
    step = make_rule("inpo", paper_3x3()).prox_steps()[0]
    rows = _rows(tokenizer, tiny_causal_lm(tokenizer), step)
    assert shared_prompt_rows([rows[0].first, rows[0].second], PackingCost.of(tiny_causal_lm(tokenizer))) == [[0, 1]]
    results = [_fresh_losses(TrainConfig(epochs=3, learning_rate=1e-2, batch_size=2, warmup_ratio=0.0,
                                         share_prompts=share))
               for share in (False, True)]
    assert results[0] == pytest.approx(results[1], rel=1e-4)


def test_metrics_reach_tensorboard(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)
    step = make_rule("inpo", paper_3x3()).prox_steps()[0]
    train(model, _rows(tokenizer, model, step), step, TrainConfig(epochs=1, report_to=["tensorboard"]),
          pad_id=tokenizer.pad_token_id, log_path=tmp_path / "metrics.jsonl")
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_a_tracker_that_is_not_installed_is_a_clear_error(monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ValueError, match=r"training.report_to: wandb is not installed; `pip install wandb`"):
        TrainConfig(report_to=["wandb"])  # refused with the config, before any run folder is written


def test_a_weighted_row_trains_like_its_copies():
    from dataclasses import replace

    config = TrainConfig(epochs=4, learning_rate=1e-2, batch_size=64, warmup_ratio=0.0)  # one batch an epoch
    weighted = _fresh_losses(config, lambda rows: [replace(rows[0], weight=3.0), *rows[1:]])
    copied = _fresh_losses(config, lambda rows: [rows[0], rows[0], *rows])
    assert weighted == pytest.approx(copied, rel=1e-5)  # the same steps


def test_each_epoch_keeps_a_prompts_rows_together_in_a_fresh_order():
    import torch

    from comal.llm.train import PromptGroupedOrder

    tokenizer = tiny_tokenizer()
    responses = [[5, 2], [6, 2], [7, 2], [8, 2]]
    rows = [TrainRow(encode(tokenizer, prompt, responses[i]), {}, 0.5, encode(tokenizer, prompt, responses[j]), {})
            for prompt in ["say hello", "please write", "which is better"] for i in range(4) for j in range(i)]
    order = PromptGroupedOrder(rows, torch.Generator().manual_seed(0))
    epochs = [list(order) for _ in range(3)]
    prompt_of = [row.first.ids[:row.first.response_start] for row in rows]
    for epoch in epochs:
        assert sorted(epoch) == list(range(len(rows)))
        runs = [prompt_of[i] for n, i in enumerate(epoch) if n == 0 or prompt_of[i] != prompt_of[epoch[n - 1]]]
        assert len(runs) == 3  # every prompt's six rows are consecutive
    assert epochs[0] != epochs[1] != epochs[2]
