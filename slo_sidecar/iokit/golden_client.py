"""Scores a golden set against a live engine over HTTP (the maths and the formats: spec/golden.py).

Per item, once: the prompt's token ids (with the model's special tokens, as a completion prompt gets them) and
the continuation's (without), read from vLLM's completions endpoint; then one teacher-forced completion per
probe. The token ids are kept for later rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import aiohttp

from slo_sidecar.spec.golden import GoldenError, GoldenItem, GoldenSet, continuation_score, teacher_forcing_body


# vLLM (0.32) cannot write a NaN or infinite log-probability into JSON, and answers 400 with the json module's
# message: the logits were not finite, which scores as NaN (a bad probe), not as a request we got wrong.
NON_FINITE = "Out of range float values are not JSON compliant"


class _NonFinite(Exception):
    pass


@dataclass(frozen=True)
class TokenizedItem:
    prompt_ids: list[int]
    continuation_ids: list[int]


class GoldenClient:
    """One engine, one golden set. Raises GoldenError for an answer that cannot be scored, and aiohttp's
    errors for an engine that does not answer (availability's business, not correctness's)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, golden: GoldenSet,
                 headers: dict[str, str] | None = None, timeout_s: float = 30.0):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.golden = golden
        self.headers = headers or {}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.model: str | None = None
        self._tokenized: list[TokenizedItem] | None = None

    async def _post(self, path: str, body: dict) -> dict:
        async with self.session.post(self.base_url + path, json=body, headers=self.headers,
                                     timeout=self.timeout) as response:
            answer = await response.json(content_type=None)
            if response.status == 400 and NON_FINITE in str(answer):
                raise _NonFinite()
            if response.status != 200:
                raise GoldenError(f"{path} answered {response.status}: {str(answer)[:300]}")
            return answer

    async def served_models(self) -> tuple[str, list[str]]:
        """(the base model, the LoRA adapters) /v1/models lists now (an adapter is a model with a parent)."""
        async with self.session.get(self.base_url + "/v1/models", headers=self.headers,
                                    timeout=self.timeout) as response:
            answer = await response.json(content_type=None)
        try:
            models = [(str(entry["id"]), entry.get("parent")) for entry in answer["data"]]
            base = next(model for model, parent in models if parent is None)
        except (KeyError, TypeError, AttributeError, StopIteration):
            raise GoldenError(f"/v1/models answered no base model: {str(answer)[:300]}") from None
        self.model = base
        return base, [model for model, parent in models if parent is not None]

    async def served_model(self) -> str:
        if self.model is None:
            await self.served_models()
        assert self.model is not None
        return self.model

    async def _token_ids(self, text: str, special_tokens: bool) -> list[int]:
        """The text's token ids, as vLLM's completions endpoint tokenizes a prompt (`return_token_ids`). Not
        vLLM's /tokenize: the engine would grow a latency histogram for that endpoint (16 series a pod)."""
        body = {"model": await self.served_model(), "prompt": text, "max_tokens": 1, "temperature": 0.0,
                "add_special_tokens": special_tokens, "return_token_ids": True}
        answer = await self._post("/v1/completions", body)
        try:
            return [int(token) for token in answer["choices"][0]["prompt_token_ids"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise GoldenError(f"/v1/completions answered no prompt_token_ids: {str(answer)[:300]}") from None

    async def _tokenize(self, item: GoldenItem) -> TokenizedItem:
        prompt = await self._token_ids(item.prompt, special_tokens=True)
        continuation = await self._token_ids(item.continuation, special_tokens=False)
        if not continuation:
            raise GoldenError(f"{self.golden.source}: continuation {item.continuation!r} has no tokens")
        return TokenizedItem(prompt, continuation)

    async def score(self, index: int) -> float:
        """One item's score: its continuation's mean log-probability (NaN if the engine's logits were)."""
        if self._tokenized is None:
            self._tokenized = [await self._tokenize(item) for item in self.golden.items]
        item = self._tokenized[index]
        body = teacher_forcing_body(await self.served_model(), item.prompt_ids, item.continuation_ids)
        try:
            answer = await self._post("/v1/completions", body)
        except _NonFinite:
            return math.nan
        return continuation_score(answer, len(item.prompt_ids), item.continuation_ids)

    async def score_all(self) -> list[float]:
        return [await self.score(index) for index in range(len(self.golden.items))]
