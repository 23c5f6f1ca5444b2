"""Multi-turn episodes through the vLLM engine (``rollout.engine=vllm``) against a stand-in server (stdlib
HTTP, no vllm needed): every turn's context goes out as token ids, all live episodes of a turn in one
request (the first turn of a group as one prompt × n), and the trajectory (ids, loss mask, turn index,
sampler log-probs, weight version) is the one the in-process scripted engine gives. The same rollout
against a real ``vllm serve``: tests/test_envs_vllm_real.py (marker ``vllm``)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from unipo.envs import Calculator, EnvRollout, EpisodeLimits, ToolEpisode
from unipo.envs.scripted import ScriptedEngine
from unipo.models.tiny import build_tokenizer
from unipo.rollout.base import SamplingParams
from unipo.rollout.vllm import VLLMEngine

LOGP = -0.25


class CalculatorServer:
    """/v1/completions whose "model" is the calculator's oracle of the decoded prompt ids: the
    continuation's ids up to and including EOS or the first stop string (as vLLM returns them), cut at
    max_tokens (finish_reason "length"), log-prob ``LOGP`` per token."""

    def __init__(self, tok) -> None:
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send({"data": [{"id": "calc"}]} if self.path == "/v1/models" else {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}")
                if self.path.split("?")[0] != "/v1/completions":
                    return self._send({"success": True, "results": [None]})  # weight reload / version
                server.bodies.append(body)
                choices = []
                for i, p in enumerate(body["prompt"]):
                    want = tok(Calculator.oracle(tok.decode(p)), add_special_tokens=False)["input_ids"]
                    out, finish = [], "length"
                    for t in want[: body["max_tokens"]]:
                        out.append(t)
                        text = tok.decode(out)
                        if t in body["stop_token_ids"] or any(text.endswith(s) for s in body["stop"]):
                            finish = "stop"
                            break
                    for j in range(body["n"]):
                        choices.append({"index": i * body["n"] + j, "token_ids": out, "prompt_token_ids": p,
                                        "finish_reason": finish,
                                        "logprobs": {"token_logprobs": [LOGP] * len(out)}})  # fmt: skip
                return self._send({"choices": choices})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tok():
    return build_tokenizer()


@pytest.fixture
def server(tok):
    s = CalculatorServer(tok)
    yield s
    s.close()


def test_episodes_over_a_vllm_server_keep_token_ids_and_batch_turns(tok, server):
    engine = VLLMEngine(tok, [tok.eos_token_id], urls=[server.url], backoff_s=0.01)
    engine.update_weights(Path("/nonexistent/dir"), 5)  # a disk sync: the server reloads, version 5
    examples = [Calculator.problem(37, 48, 15), Calculator.problem(21, 13, 4)]
    prompts = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in examples]
    rollout = EnvRollout(lambda: ToolEpisode(Calculator()), tok, EpisodeLimits(4, 64))
    sampling = SamplingParams(max_new_tokens=12)
    gen = rollout(engine, examples, prompts, 2, sampling)
    ref = rollout(ScriptedEngine(tok, Calculator.oracle, logprob=LOGP), examples, prompts, 2, sampling)

    # three turns: the first as 2 prompts × n = 2, then the 4 live episodes in one request each turn
    assert [(len(b["prompt"]), b["n"]) for b in server.bodies] == [(2, 2), (4, 1), (4, 1)]
    assert server.bodies[0]["prompt"] == prompts and server.bodies[0]["stop"] == ["]"]
    for k, body in enumerate(server.bodies[1:], start=1):  # each context = prompt + every token so far
        for row, sent in enumerate(body["prompt"]):
            assert sent == gen.trajectories[row].context_before(k)
    for a, b in zip(gen.trajectories, ref.trajectories, strict=True):
        assert (a.ids, a.loss_mask, a.turn_index) == (b.ids, b.loss_mask, b.turn_index)
        assert a.reward == 1.0 and a.tool_calls == 2 and a.end == "answer"
    assert tok.decode(gen.trajectories[2].ids) == "[21*13]=273\n[273+4]=277\n277</s>"
    assert torch.equal(gen.completion_mask, ref.completion_mask)
    # the sampler's log-probs on the model's tokens only, and the version that sampled every turn
    assert torch.equal(gen.logprobs, LOGP * gen.completion_mask)
    assert gen.weight_version.tolist() == [5, 5, 5, 5]


def test_a_trajectory_carries_the_oldest_version_of_its_turns(tok):
    engine = ScriptedEngine(tok, Calculator.oracle)
    engine.update_weights((), 3)
    first = engine.generate  # the first turn samples with version 3, the later ones with 4

    def generate(prompts, n, params):
        gen = first(prompts, n, params)
        engine.version = 4
        return gen

    engine.generate = generate
    ex = Calculator.problem(37, 48, 15)
    gen = EnvRollout(lambda: ToolEpisode(Calculator()), tok, EpisodeLimits(4, 64))(
        engine, [ex], [tok(ex["question"], add_special_tokens=False)["input_ids"]], 1,
        SamplingParams(max_new_tokens=12),
    )  # fmt: skip
    assert gen.trajectories[0].num_turns == 3 and gen.weight_version.tolist() == [3]
