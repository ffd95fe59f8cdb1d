"""Admission and tokenising, in-process on the real server code and the model's real tokenizer (no vLLM
engine: neither step needs one). A full server answers 429 before it tokenises anything; tokenising a
long prompt runs off the event loop, so /health answers meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from engine.backend import VllmBackend
from engine.metrics import ServerMetrics
from engine.server import EngineState, build_app
from engine.settings import EngineSettings, add_engine_arguments
from tests.conftest import run_async

LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 60_000  # ~2.6 MB: most of a second to tokenise


def state_with_real_tokenizer() -> tuple[EngineState, list[int]]:
    """A ready engine state whose backend has the embedded model's tokenizer, counting its calls."""
    from transformers import AutoTokenizer

    from engine.tiny_model import MODEL_NAME, ensure_default_model

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser, {})
    settings = EngineSettings.from_args(parser.parse_args(
        ["--max-num-seqs", "2", "--max-waiting-requests", "1", "--max-body-bytes", str(8 * 2**20)]))
    model_dir = str(ensure_default_model())
    backend = VllmBackend(settings, model_dir, MODEL_NAME)
    backend.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    backend.vocab_size = len(backend.tokenizer)
    calls: list[int] = []
    tokenize = backend.prompt_token_ids
    backend.prompt_token_ids = lambda request: calls.append(1) or tokenize(request)  # type: ignore[method-assign]
    state = EngineState(settings=settings, served_model_name=MODEL_NAME,
                        metrics=ServerMetrics(CollectorRegistry(), max_waiting_requests=1))
    state.backend = backend
    state.set_phase("ready")
    state.generations_idle.set()
    return state, calls


@run_async
async def test_a_full_server_answers_429_before_it_tokenises():
    state, calls = state_with_real_tokenizer()
    state.active_sequences = state.settings.max_num_seqs + state.settings.max_waiting_requests  # all admitted
    async with TestServer(build_app(state)) as server, aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(server.make_url("/v1/completions"), json={"prompt": LONG_PROMPT}) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "queue_full"
        print(f"\n429 for a {len(LONG_PROMPT) / 1e6:.1f} MB prompt in {(time.monotonic() - started) * 1000:.0f} ms")
    assert calls == [], "the prompt was tokenised although the server was full"
    assert state.active_sequences == 3 and state.active_generations == 0  # nothing taken, nothing given back


@run_async
async def test_tokenising_a_long_prompt_leaves_the_event_loop_free():
    state, calls = state_with_real_tokenizer()
    backend = state.backend
    began = time.monotonic()
    backend.prompt_token_ids(_completion(LONG_PROMPT))
    tokenise_s = time.monotonic() - began
    assert tokenise_s > 0.3, f"the prompt tokenises in {tokenise_s:.2f} s: too fast to show anything"
    async with TestServer(build_app(state)) as server, aiohttp.ClientSession() as session:
        async def generate() -> int:
            async with session.post(server.make_url("/v1/completions"), json={"prompt": LONG_PROMPT}) as response:
                return response.status

        request = asyncio.create_task(generate())
        while len(calls) < 2:  # the server's own call has begun
            await asyncio.sleep(0.005)
        health = []
        while not request.done():
            started = time.monotonic()
            async with session.get(server.make_url("/health")) as response:
                assert response.status == 200
            health.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
        assert await request == 400  # longer than the context, found after tokenising
    print(f"\ntokenising took {tokenise_s:.2f} s; /health meanwhile: {len(health)} answers, "
          f"slowest {max(health) * 1000:.0f} ms")
    # On the event loop, /health would wait out the whole tokenising; off it, a small share of it at
    # worst (the tokenizer takes the GIL at times; on a busy 2-core machine a pause here is ~0.15 s).
    assert len(health) >= 5 and max(health) < tokenise_s / 4
    assert state.active_sequences == 0 and state.active_generations == 0  # the admission was given back


def _completion(prompt: str):
    from engine.protocol import parse_generation_request
    from engine.tiny_model import MODEL_NAME

    return parse_generation_request({"prompt": prompt}, "completion", MODEL_NAME)
