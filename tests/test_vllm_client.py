"""The vLLM engine's client side against stand-in servers (stdlib HTTP, no vllm needed): parsing,
balancing over several servers, retries with backoff, the failure limit, version checks, and an
owned server that dies while starting. The real server is exercised by tests/test_vllm_engine.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from unipo.rollout.base import SamplingParams
from unipo.rollout.vllm import RolloutError, VLLMEngine
from unipo.rollout.vllm_server import ServerError, VLLMServer, free_port

EOS = 2


class FakeVLLM:
    """/v1/completions answers each prompt with n rows [last + 1 + j, EOS] (log-probs −0.5 each; the
    last prompt's rows hit max_tokens instead: [last + 1 + j] only, finish_reason "length")."""

    def __init__(self, fail_first: int = 0, version: str = "default") -> None:
        self.fail_first, self.version = fail_first, version
        self.calls: dict[str, int] = {}
        self.bodies: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                fake.calls[self.path] = fake.calls.get(self.path, 0) + 1
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": "fake"}]})
                if self.path == "/weight_info":
                    return self._send(200, {"weight_version": fake.version})
                return self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                path = self.path.split("?")[0]
                fake.calls[path] = fake.calls.get(path, 0) + 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}")
                if path == "/update_weight_version":
                    fake.version = body["new_version"]
                    return self._send(200, {"success": True})
                if path in ("/collective_rpc", "/reset_prefix_cache"):
                    return self._send(200, {"results": [None]})
                if path != "/v1/completions":
                    return self._send(404, {"detail": "Not Found"})
                if fake.fail_first > 0:
                    fake.fail_first -= 1
                    return self._send(500, {"error": {"message": "EngineCore encountered an issue"}})
                fake.bodies.append(body)
                choices = []
                for i, p in enumerate(body["prompt"]):
                    for j in range(body["n"]):
                        last = i == len(body["prompt"]) - 1
                        ids = [p[-1] + 1 + j] + ([] if last else [EOS])
                        choices.append({"index": i * body["n"] + j, "token_ids": ids, "prompt_token_ids": p,
                                        "finish_reason": "length" if last else "stop",
                                        "logprobs": {"token_logprobs": [-0.5] * len(ids)}})  # fmt: skip
                return self._send(200, {"choices": choices[::-1]})  # any order: the engine sorts by index

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fakes():
    made: list[FakeVLLM] = []

    def make(**kw) -> FakeVLLM:
        made.append(FakeVLLM(**kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _engine(tiny, urls, **kw) -> VLLMEngine:
    _, tok = tiny
    return VLLMEngine(tok, [EOS], urls=urls, backoff_s=0.01, **kw)


def test_rows_are_parsed_in_order_and_balanced_over_servers(tiny, fakes):
    a, b = fakes(), fakes()
    engine = _engine(tiny, [a.url, b.url], max_batch=4)  # n = 2 → 2 prompts per request
    engine.update_weights(Path("/nonexistent/dir"), 3)  # a directory: reload_weights + version on both
    prompts = [[10], [20, 21], [30], [40]]
    gen = engine.generate(prompts, 2, SamplingParams(max_new_tokens=4, temperature=0.5, top_k=5))
    assert len(a.bodies) == 1 and len(b.bodies) == 1  # two requests, one per server
    assert a.bodies[0]["prompt"] == [[10], [20, 21]] and b.bodies[0]["prompt"] == [[30], [40]]
    body = a.bodies[0]
    assert (body["temperature"], body["top_k"], body["top_p"], body["logprobs"]) == (0.5, 5, 1.0, 0)
    assert body["return_token_ids"] and body["stop_token_ids"] == [EOS]
    # row = prompt·n + j; a second-chunk "last" prompt ran out of tokens in each request
    assert gen.completion_ids[:, 0].tolist() == [11, 12, 22, 23, 31, 32, 41, 42]
    assert gen.completion_mask.sum(1).tolist() == [2, 2, 1, 1, 2, 2, 1, 1]
    assert gen.truncated.tolist() == [False, False, True, True, False, False, True, True]
    assert gen.logprobs[gen.completion_mask.bool()].eq(-0.5).all() and gen.logprobs[0, 1] == -0.5
    assert gen.weight_version.tolist() == [3] * 8
    assert gen.prompt_ids.shape == (8, 2) and gen.prompt_mask[0].tolist() == [0, 1]  # left-padded
    assert a.calls["/collective_rpc"] == 1 and b.calls["/collective_rpc"] == 1 and a.version == "3"


def test_a_failed_request_is_retried(tiny, fakes):
    f = fakes(fail_first=2)
    engine = _engine(tiny, [f.url], max_failures=3)
    engine.update_weights(Path("/x"), 0)
    gen = engine.generate([[5]], 1, SamplingParams(max_new_tokens=2))
    assert f.calls["/v1/completions"] == 3 and gen.completion_ids.shape[0] == 1


def test_the_run_stops_after_max_failures(tiny, fakes):
    f = fakes(fail_first=10)
    engine = _engine(tiny, [f.url], max_failures=2)
    engine.update_weights(Path("/x"), 0)
    with pytest.raises(RolloutError, match=r"generation failed 2 times in a row \(rollout.max_failures=2\).*"
                                           r"HTTP 500.*EngineCore"):  # fmt: skip
        engine.generate([[5]], 1, SamplingParams(max_new_tokens=2))
    dead = _engine(tiny, [f"http://127.0.0.1:{free_port()}"], max_failures=2)  # nothing listens there
    with pytest.raises(RolloutError, match=r"weight sync failed 2 times.*Connection"):
        dead.update_weights(Path("/x"), 0)


def test_versions_are_verified_before_sampling(tiny, fakes):
    f = fakes()
    engine = _engine(tiny, [f.url], max_failures=2)
    with pytest.raises(RolloutError, match="no known weight version"):
        engine.generate([[5]], 1, SamplingParams())  # a given server: unknown weights until a sync
    engine.update_weights(Path("/x"), 4)
    f.version = "default"  # the server restarted: its weights are the checkpoint's again
    gen = engine.generate([[5]], 1, SamplingParams(max_new_tokens=2))
    assert f.calls["/collective_rpc"] == 2 and f.version == "4"  # re-synced from the last directory
    assert gen.weight_version.tolist() == [4]
    engine.last_sync = None
    f.version = "7"
    with pytest.raises(RolloutError, match=r"reports weight version '7', the trainer's is 4"):
        engine.generate([[5]], 1, SamplingParams(max_new_tokens=2))


def test_a_sync_the_server_does_not_take_stops_the_run(tiny, fakes):
    # the stand-in samples with log-prob −0.5 per token: a trainer that agrees passes, one that does
    # not (a stale LM head, say) stops the run at the sync
    f = fakes()
    agree = _engine(tiny, [f.url], verify=lambda g: torch.full_like(g.logprobs, -0.5), verify_tolerance=0.1)
    agree.update_weights(Path("/x"), 1)
    assert agree.check_sync() == 0.0
    stale = _engine(tiny, [f.url], verify=lambda g: torch.full_like(g.logprobs, -3.0), verify_tolerance=0.1)
    with pytest.raises(RolloutError, match=r"differ from the trainer's by 2\.500 nats .* not sampling"):
        stale.update_weights(Path("/x"), 2)


def test_hapo_token_temperature_is_refused(tiny, fakes):
    engine = _engine(tiny, [fakes().url])
    engine.update_weights(Path("/x"), 0)
    params = SamplingParams(token_temperature=lambda h: torch.ones_like(h))
    with pytest.raises(ValueError, match=r"use rollout.engine=hf"):
        engine.generate([[5]], 1, params)


def test_an_owned_server_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    log = tmp_path / "vllm-server.log"
    server = VLLMServer(["python3", "-c", "print('CUDA out of memory'); raise SystemExit(3)"], log)
    with pytest.raises(ServerError, match=r"(?s)exited with code 3 while starting.*CUDA out of memory"):
        server.start()
    assert not server.alive()
    missing = VLLMServer(["/nonexistent/vllm", "serve"], log)
    with pytest.raises(ServerError, match="make setup-vllm"):
        missing.start()


def test_the_factory_builds_an_owned_engine_that_serves_a_tied_model_untied(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from unipo.config import load_config
    from unipo.models import load_model
    from unipo.rollout.factory import make_engine

    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "rollout.engine=vllm", "rollout.vllm.enforce_eager=true",
        "rollout.vllm.command=[/opt/vllm/bin/vllm, serve]",
    ])  # fmt: skip
    model, tok = load_model(tiny_model_dir, dtype="float32")
    engine = make_engine(cfg, model, tok, run_dir=lambda: tmp_path)
    assert engine.owned and engine.version == 0 and engine.untied_head  # a tied checkpoint, a CPU trainer
    assert engine.argv == ["/opt/vllm/bin/vllm", "serve", str(tiny_model_dir)]
    args = engine.serve_args
    assert args[args.index("--logprobs-mode") + 1] == "processed_logprobs" and "--enforce-eager" in args
    assert args[args.index("--dtype") + 1] == "float32"
    served = engine.prepare()  # what start() serves instead of model.path
    assert json.loads((served / "config.json").read_text())["tie_word_embeddings"] is False
    weights = load_file(str(served / "model.safetensors"))
    torch.testing.assert_close(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    assert (served / "tokenizer.json").exists()
    given = make_engine(cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"url": ["http://h:1"]})}),
                        model, tok)  # fmt: skip
    assert not given.owned and given.version is None and not given.untied_head


def test_processes_share_servers_and_each_server_is_synced_by_one(tiny, fakes):
    # two training processes on the same two given servers: rank 0 syncs them (syncs=True), rank 1
    # only waits at the barrier (after_sync) and then samples from both, starting at its own server
    a, b = fakes(), fakes()
    waited: list[str] = []
    rank0 = _engine(tiny, [a.url, b.url], max_batch=1, after_sync=lambda: waited.append("r0"))
    rank1 = _engine(tiny, [a.url, b.url], max_batch=1, syncs=False, first_server=1,
                    after_sync=lambda: waited.append("r1"))  # fmt: skip
    assert rank0.targets == [a.url, b.url] and rank1.targets == []
    rank0.update_weights(Path("/x"), 5)
    rank1.update_weights(iter(()), 5)  # writes nothing, reloads nothing
    assert a.calls["/collective_rpc"] == 1 and b.calls["/collective_rpc"] == 1 and waited == ["r0", "r1"]
    gen = rank1.generate([[10], [20], [30]], 1, SamplingParams(max_new_tokens=2))
    assert [len(a.bodies), len(b.bodies)] == [1, 2]  # chunks to b, a, b: rank 1 starts at server 1
    assert b.bodies[0]["prompt"] == [[10]] and a.bodies[0]["prompt"] == [[20]]
    assert gen.weight_version.tolist() == [5, 5, 5]
    a.version = "4"  # a server another process syncs reports other weights: no re-sync from here
    with pytest.raises(RolloutError, match=r"reports weight version '4'.*another process syncs it"):
        rank1.generate([[10]], 1, SamplingParams(max_new_tokens=2))


def test_a_process_without_servers_of_its_own_learns_every_url(tiny, fakes):
    # colocated servers: this process starts none (num_servers=0), the gather gives the others'
    a, b = fakes(), fakes()
    _, tok = tiny
    engine = VLLMEngine(tok, [EOS], model_path="/m", num_servers=0, initial_version=None,
                        gather_urls=lambda mine: [*mine, a.url, b.url], backoff_s=0.01)  # fmt: skip
    engine.update_weights(iter(()), 1)
    assert engine.owned and engine.servers == [] and engine.urls == [a.url, b.url]
    assert engine.targets == [] and "/collective_rpc" not in a.calls and engine.version == 1
    with pytest.raises(ValueError, match="num_servers must be at least 1"):
        VLLMEngine(tok, [EOS], model_path="/m", num_servers=0)  # alone, it would have no server


def test_colocated_servers_are_spread_over_processes(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from unipo.config import ConfigError, load_config
    from unipo.models import load_model
    from unipo.rollout.factory import make_engine, server_owner

    # ⌊i·W/S⌋: 2 servers on 4 processes → ranks 0 and 2; 3 servers on 2 → ranks 0, 0, 1
    assert [server_owner(i, 2, 4) for i in range(2)] == [0, 2]
    assert [server_owner(i, 3, 2) for i in range(3)] == [0, 0, 1]
    assert [server_owner(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "rollout.engine=vllm", "rollout.num_servers=2",
                             "rollout.vllm.command=[/opt/vllm/bin/vllm, serve]"])  # fmt: skip
    model, tok = load_model(tiny_model_dir, dtype="float32")
    engines = []
    for rank in range(4):
        dist = SimpleNamespace(enabled=True, world=4, rank=rank, barrier=lambda: None,
                               all_gather_object=lambda x: [x])  # fmt: skip
        engines.append(make_engine(cfg, model, tok, run_dir=lambda: tmp_path, dist=dist))
    assert [e.num_servers for e in engines] == [1, 0, 1, 0]
    assert all(e.version is None for e in engines)  # a first sync at step 0, on every process
    assert [e._next for e in engines] == [0, 1, 2, 3]
    assert engines[2].prepare().name == "vllm_model-rank2"  # each owner its own untied copy
    assert engines[2]._resolve(engines[2]._sync_dir) == tmp_path / "vllm_weights" / "rank2"
    with pytest.raises(ConfigError, match=r"num_servers=2 counts the vLLM servers .*hf starts none"):
        load_config(None, ["rollout.num_servers=2"])
    with pytest.raises(ConfigError, match=r"placement=split .*\(train\.launcher=ray\)"):
        load_config(None, ["rollout.engine=vllm", "rollout.vllm.placement=split"])
    load_config(None, ["rollout.engine=vllm", "rollout.vllm.placement=split", "train.launcher=ray"])


def test_split_servers_get_bundles_of_their_own():
    from types import SimpleNamespace

    from unipo.launch import worker_cpus
    from unipo.rollout.ray_servers import server_bundles, split_overrides

    assert server_bundles(2, 4, 1, use_gpu=True) == [{"CPU": 4.0, "GPU": 1.0}] * 2
    assert server_bundles(1, 2, 1, use_gpu=False) == [{"CPU": 2.0}]  # CPU trainers: CPU servers
    assert split_overrides(["http://10.0.0.2:8000", "http://10.0.0.3:8001"], untied=True) == [
        "rollout.url=[http://10.0.0.2:8000,http://10.0.0.3:8001]", "rollout.vllm.untie_embeddings=true",
    ]  # fmt: skip

    def cfg(placement: str, servers: int, url=None):
        vllm = SimpleNamespace(placement=placement, server_cpus=2)
        rollout = SimpleNamespace(engine="vllm", url=url, num_servers=servers, vllm=vllm)
        return SimpleNamespace(rollout=rollout)

    # a colocated worker's bundle holds its servers' CPUs too: 3 servers on 2 workers → ⌈3/2⌉ = 2 each
    assert worker_cpus(cfg("colocate", 3), 2) == 1 + 2 * 2
    assert worker_cpus(cfg("split", 3), 2) == 1 and worker_cpus(cfg("colocate", 1, url=["u"]), 2) == 1
    assert worker_cpus(None, 2) == 1
