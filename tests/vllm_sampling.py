"""Run by tests/test_vllm.py in a Python that has vLLM (``make vllm`` builds one): samples a tiny
policy through ``sampling.backend: vllm`` and writes what the test checks as JSON.

    python tests/vllm_sampling.py OUT_DIR
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from comal.llm.sample import SamplingConfig, sample_with_vllm
from comal.llm.tiny import tiny_config, tiny_tokenizer

PROMPTS = ["the cat sat", "a dog ran far", "birds sing at dawn"]
LONG_PROMPT = " ".join(["the cat sat on a mat"] * 20)  # more than max_model_len − max_new_tokens tokens
ENGINE = {"enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 64}


def main(out: Path) -> None:
    tokenizer = tiny_tokenizer()
    # vLLM's CPU attention takes head sizes of 32 and up (the suite's tiny model has 8); weights drawn
    # wide (initializer_range 0.5) so that the next-token distribution is far from uniform
    torch.manual_seed(1)  # a seed whose first-token nucleus holds 4 tokens at T = 0.8, top-p 0.9
    model = LlamaForCausalLM(tiny_config(tokenizer, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                                         initializer_range=0.5))
    model.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    settings = SamplingConfig(samples_per_prompt=4, max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3,
                              backend="vllm", vllm=ENGINE)
    calls = {"all": sample_with_vllm(out / "policy", tokenizer, PROMPTS, settings),
             "reordered": sample_with_vllm(out / "policy", tokenizer, [LONG_PROMPT, PROMPTS[2], PROMPTS[0]], settings),
             "first_tokens": sample_with_vllm(out / "policy", tokenizer, PROMPTS[:1],
                                              settings.model_copy(update={"samples_per_prompt": 4000,
                                                                          "max_new_tokens": 1}))}
    (out / "samples.json").write_text(json.dumps({name: dataclasses.asdict(samples) for name, samples in calls.items()}))


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which re-imports this file
    main(Path(sys.argv[1]))
