"""One generation request seen twice, joined by its request id: vLLM's HTTP server (our ASGI middleware:
status, arrival, the first token the client got, the last byte) and vLLM's engine (our stat-logger plugin:
each finished sequence's queue, prefill and decode times and its tokens).

Pure bookkeeping, no vLLM and no I/O: the middleware and the plugin call it from the API server's event
loop, the only thread either runs on. A request is judged once both views are in, or, when the engine's
never comes (a failed request, a client that went away), on its HTTP outcome alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .slo_judge import RequestLatencies

# The engine reports a request finished in the same pass that hands its last output to the server, except
# when vLLM first awaits an abort (a stop string) or yields between output chunks: then the response can be
# sent first. A finished response waits this long for the engine's view before it is judged without it.
ENGINE_VIEW_GRACE_S = 2.0


@dataclass(frozen=True)
class EngineView:
    """What vLLM's FinishedRequestStats says of one finished sequence (times in seconds)."""

    queued_s: float
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    generation_tokens: int
    preemptions: int
    cached_tokens: int
    finished_at: float  # time.monotonic() when the plugin received it
    finish_reason: str = "stop"


@dataclass
class PendingRequest:
    """A generation request in flight, as the middleware knows it."""

    request_id: str
    tenant: str
    started_at: float  # time.monotonic() at arrival
    prompts: int  # a batched completion's prompts, else 1
    n: int  # sequences per prompt
    streamed: bool
    chat: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)  # the GenAI request attributes its body set
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # for its GenAI span (a LoRA cold start)
    server_span: Any = None  # the middleware's SERVER span, when tracing
    probe: bool = False  # the sidecar's: served and traced, never counted
    first_token_at: float | None = None  # the first token-bearing chunk sent (streams only)
    finished_at: float | None = None  # the last byte sent
    status: int | None = None
    engine: list[EngineView] = field(default_factory=list)
    judged: bool = False

    @property
    def sequences(self) -> int:
        """vLLM reports one FinishedRequestStats per sequence: n for each prompt."""
        return self.prompts * self.n

    def complete(self) -> bool:
        return self.finished_at is not None and len(self.engine) >= self.sequences

    def generation_tokens(self) -> int:
        return sum(view.generation_tokens for view in self.engine)

    def prompt_tokens(self) -> int:
        """Each prompt once, though each of its n sequences reports it."""
        return sum(view.prompt_tokens for view in self.engine) // self.n

    def latencies(self) -> RequestLatencies | None:
        """The client's latencies: from arrival to the first token (the first chunk that carried one, or for
        an answer sent whole, when the engine had it) and to the last byte; None for a failed request."""
        if self.status != 200 or self.finished_at is None:
            return None
        e2e = self.finished_at - self.started_at
        first = self.first_token_at
        if first is None and self.engine:
            # The engine's first token: its decode ended with the last token, no later than the reply left.
            first = min(min(view.finished_at, self.finished_at) - view.decode_s for view in self.engine)
        ttft = None if first is None else max(0.0, first - self.started_at)
        tokens = self.generation_tokens() / max(1, len(self.engine))
        tpot = None if ttft is None else ((e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0)
        queue = max((view.queued_s for view in self.engine), default=None)
        return RequestLatencies(ttft, tpot, e2e, queue)


Judge = Callable[[PendingRequest], None]


class RequestJoin:
    """In-flight generation requests by id; each handed to `judge` once, when both views are in (or the
    engine's is not coming)."""

    def __init__(self, judge: Judge, clock: Callable[[], float] = time.monotonic):
        self.judge = judge
        self.clock = clock
        self.pending: dict[str, deque[PendingRequest]] = {}
        self.waiting: deque[PendingRequest] = deque()  # finished responses awaiting the engine's view
        self.unmatched = 0  # engine reports for no request in flight (not ours: another route, or late)

    def start(self, request: PendingRequest) -> None:
        self.pending.setdefault(request.request_id, deque()).append(request)

    def http_finished(self, request: PendingRequest, status: int) -> None:
        request.status, request.finished_at = status, self.clock()
        if status != 200 or request.complete():
            self._judge(request)
        else:
            self.waiting.append(request)
        self.expire()

    def engine_finished(self, engine_id: str, view: EngineView) -> None:
        queue = self.pending.get(request_id_of(engine_id))
        request = next((each for each in queue or () if len(each.engine) < each.sequences and not each.judged),
                       None)
        if request is None:
            self.unmatched += 1
            return
        request.engine.append(view)
        if request.complete():
            self._judge(request)
        self.expire()

    def expire(self) -> None:
        """Judge the responses that waited their grace for the engine's view without it."""
        deadline = self.clock() - ENGINE_VIEW_GRACE_S
        while self.waiting and (self.waiting[0].judged or self.waiting[0].finished_at <= deadline):
            self._judge(self.waiting.popleft())

    def _judge(self, request: PendingRequest) -> None:
        if request.judged:
            return
        request.judged = True
        queue = self.pending[request.request_id]
        queue.remove(request)
        if not queue:
            del self.pending[request.request_id]
        self.judge(request)


def request_id_of(engine_id: str) -> str:
    """The X-Request-Id a request came with, from the id vLLM's engine reports: `cmpl-{id}-{prompt}` for a
    completion (one per prompt of a batch), `chatcmpl-{id}` for a chat completion."""
    if engine_id.startswith("chatcmpl-"):
        return engine_id.removeprefix("chatcmpl-")
    if engine_id.startswith("cmpl-"):
        return engine_id.removeprefix("cmpl-").rsplit("-", 1)[0]
    return engine_id


def shape_of(body: Any, chat: bool) -> tuple[int, int]:
    """(prompts, n) of a request body: vLLM runs n sequences for each prompt of a batched completion.
    Anything vLLM would refuse reads (1, 1): its request fails, and no engine view is awaited."""
    n = body.get("n", 1) if isinstance(body, dict) else 1
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    prompt = body.get("prompt") if isinstance(body, dict) and not chat else None
    batch = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return batch, n
