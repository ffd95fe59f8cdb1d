"""Prompt log-probabilities are refused on a server whose LoRA may cover lm_head.

vLLM 0.32 computes the logits of prompt tokens with the LoRA mapping of the batch's sequences (one entry per
request), not of its prompt tokens: beside an lm_head LoRA, `prompt_logprobs` come out wrong, and on the CPU
build the engine core dies with an einsum shape error as soon as such a request is batched with others
(vllm-project/vllm#16668, #51594; a request we refuse costs less than a pod). vLLM wraps lm_head in a LoRA layer
when `--lora-target-modules` is unset (every supported module, lm_head included) or names it. Pure: the
middleware asks these two questions.
"""

from __future__ import annotations

from typing import Any, Iterable

LM_HEAD = "lm_head"
PROMPT_LOGPROBS_REFUSAL = (
    "prompt log-probabilities (prompt_logprobs, or echo with logprobs) are refused on this server: its LoRA may "
    "cover lm_head (--lora-target-modules unset or naming lm_head), where vLLM computes them wrongly and its "
    "engine core can crash (vllm-project/vllm#16668); start vLLM with --lora-target-modules naming your "
    "adapters' modules, without lm_head")


def lm_head_may_carry_lora(lora_config: Any) -> bool:
    """Whether vLLM wraps lm_head in a LoRA layer: LoRA is on and its target modules are unset or name it."""
    if lora_config is None:
        return False
    targets: Iterable[str] | None = getattr(lora_config, "target_modules", None)
    return targets is None or LM_HEAD in targets


def asks_prompt_logprobs(body: Any, chat: bool) -> bool:
    """Whether vLLM computes the prompt's log-probabilities for this request body, as its request models decide
    (`to_sampling_params`): `prompt_logprobs` set, or `echo` with, on completions, `logprobs` (on chat, echo
    alone asks: its `top_logprobs` is never None there)."""
    if not isinstance(body, dict):
        return False
    if body.get("prompt_logprobs") is not None:
        return True
    if not body.get("echo"):
        return False
    return chat or body.get("logprobs") is not None
