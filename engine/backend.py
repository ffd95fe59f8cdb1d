"""The one place that talks to vLLM: builds AsyncLLM, tokenizes, generates, aborts.

AsyncLLM runs vLLM's engine core in child processes; this module keeps the API
process's side of it. vLLM is imported only when the engine loads, so the rest
of the package (and the tests of pure logic) never pays for that import.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .protocol import ApiError, GenerationRequest, invalid
from .settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceDelta:
    """What one step of generation added to one choice."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None


@dataclass(frozen=True)
class GenerationStep:
    choices: list[ChoiceDelta]
    finished: bool
    metrics: Any  # vLLM's RequestStateStats: per-request timestamps, used by tracing
    cached_tokens: int | None  # prompt tokens served from the prefix cache


@dataclass
class GenerationTally:
    """What a request's generation produced so far: for usage, and for its trace."""

    completion_tokens: int = 0
    prompt_tokens: int | None = None  # once the prompt is tokenised
    sequences: int = 1  # the request's n: completion_tokens are summed over its choices
    finish_reasons: dict[int, str] = field(default_factory=dict)
    metrics: Any = None
    cached_tokens: int | None = None
    error: ApiError | None = None  # how it ended, when it failed after its response had started
    first_token_at: float | None = None  # time.monotonic() when the server had the first token to send

    def add(self, step: GenerationStep) -> None:
        tokens = sum(delta.num_tokens for delta in step.choices)
        if tokens and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        for delta in step.choices:
            self.completion_tokens += delta.num_tokens
            if delta.finish_reason:
                self.finish_reasons[delta.index] = delta.finish_reason
        self.metrics = step.metrics or self.metrics
        if step.cached_tokens is not None:
            self.cached_tokens = step.cached_tokens


class VllmBackend:
    def __init__(self, settings: EngineSettings, model_dir: str, served_model_name: str):
        self.settings = settings
        self.model_dir = model_dir
        self.served_model_name = served_model_name
        self.engine: Any = None
        self.tokenizer: Any = None
        self.vocab_size = 0
        self.max_model_len = settings.max_model_len
        # Tokenising a long prompt takes milliseconds to seconds: off the event loop, so probes and
        # /metrics answer meanwhile; one thread, as vLLM's server does (a Hugging Face tokenizer is
        # not safe to share between threads).
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    def load(self) -> None:
        """Start vLLM (blocking, ~20 s for the tiny model on CPU): call it from a thread."""
        # vLLM's CPU backend sizes its KV cache from this variable (whole GiB), not
        # from kv_cache_memory_bytes; it must be set before vLLM is imported.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(self.settings.kv_cache_gib))))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        eager = self.settings.enforce_eager if self.settings.enforce_eager is not None else on_cpu
        engine_args = AsyncEngineArgs(
            model=self.model_dir,
            served_model_name=[self.served_model_name],
            max_model_len=self.settings.max_model_len,
            max_num_seqs=self.settings.max_num_seqs,
            dtype=self.settings.dtype,
            enforce_eager=eager,
            disable_log_stats=False,  # vLLM's vllm:* Prometheus metrics need stats on
            kv_cache_memory_bytes=None if on_cpu else int(self.settings.kv_cache_gib * 2**30),
            enable_lora=self.settings.enable_lora,
            max_loras=self.settings.max_loras,
            max_lora_rank=self.settings.max_lora_rank,
        )
        self.engine = AsyncLLM.from_engine_args(engine_args)
        self.tokenizer = self.engine.get_tokenizer()
        self.vocab_size = len(self.tokenizer)
        self.max_model_len = self.engine.model_config.max_model_len
        log.info("vLLM engine ready: model %s as %r, max_model_len %d, %s",
                 self.model_dir, self.served_model_name, self.max_model_len, "CPU" if on_cpu else "GPU")

    @property
    def dead(self) -> bool:
        return self.engine is not None and self.engine.errored

    async def tokenize(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids, worked out on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, self.prompt_token_ids,
                                                                request)

    def prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            bad = next((t for t in request.prompt_token_ids if t >= self.vocab_size), None)
            if bad is not None:
                raise invalid("prompt", f"token id {bad} is out of the vocabulary (size {self.vocab_size})")
            return request.prompt_token_ids
        if request.kind == "completion":
            return self.tokenizer.encode(request.prompt)
        try:
            text = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template may reject a conversation (say, roles out of order)
            raise invalid("messages", f"the model's chat template rejected the conversation: {exc}") from None
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def generate(self, request: GenerationRequest, token_ids: list[int], max_tokens: int,
                       request_id: str) -> AsyncIterator[GenerationStep]:
        """Yield generation steps; closing the iterator early aborts the vLLM request."""
        from vllm import SamplingParams
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        params = SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=max_tokens,
            stop=request.stop or None,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
        )
        finished = False
        try:
            async for output in self.engine.generate(tokens_input(token_ids), params, request_id,
                                                     lora_request=self.lora_request(request.model)):
                finished = output.finished
                yield GenerationStep(
                    [ChoiceDelta(o.index, o.text, len(o.token_ids), o.finish_reason) for o in output.outputs],
                    output.finished,
                    output.metrics,
                    output.num_cached_tokens,
                )
        except EngineDeadError:
            raise ApiError(503, "the inference engine is not running", code="engine_dead",
                           error_type="server_error", reason="engine_error") from None
        except EngineGenerateError as exc:
            log.error("request %s failed in the engine: %r", request_id, exc.__cause__)
            raise ApiError(500, "the inference engine failed this request", code="engine_error",
                           error_type="server_error", reason="engine_error") from None
        except ValueError as exc:  # vLLM's own input validation (VLLMValidationError)
            raise invalid("prompt", str(exc)) from None
        finally:
            if not finished:
                await self.engine.abort(request_id)

    def lora_request(self, model: str) -> Any:
        """vLLM's LoRARequest for an adapter's name; None for the base model. Ids are stable: 1, 2, ..."""
        for index, module in enumerate(self.settings.lora_modules, start=1):
            if module.name == model:
                from vllm.lora.request import LoRARequest

                return LoRARequest(module.name, index, module.path)
        return None

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.shutdown(timeout=timeout_s)
