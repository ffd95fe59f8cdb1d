"""The guard's two questions, each against vLLM's own answer: its request models decide whether a body asks
for the prompt's log-probabilities (`to_sampling_params().prompt_logprobs`), its LoRA manager whether lm_head
gets a LoRA layer."""

import itertools
from types import SimpleNamespace

import pytest

from slo_sidecar.engine.prompt_logprobs_guard import asks_prompt_logprobs, lm_head_may_carry_lora

# Each field that decides it, absent or with values of each kind vLLM accepts.
ABSENT = object()
FIELDS = {"prompt_logprobs": [ABSENT, None, 0, 1, 5], "echo": [ABSENT, None, False, True],
          "logprobs": [ABSENT, None, 0, 2], "top_logprobs": [ABSENT, None, 0, 3]}


def body_of(choice: dict) -> dict:
    return {field: value for field, value in choice.items() if value is not ABSENT}


def vllm_asks(body: dict, chat: bool) -> bool | None:
    """vLLM's own decision, from its request model (the reference parser); None where vLLM refuses the body
    (a 400 before anything is computed)."""
    from pydantic import ValidationError

    try:
        return _vllm_asks(body, chat)
    except ValidationError:
        return None


def _vllm_asks(body: dict, chat: bool) -> bool:
    if chat:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        if "logprobs" in body:  # chat's logprobs is a flag; top_logprobs needs it on
            body = {**body, "logprobs": bool(body["logprobs"])}
        if body.get("top_logprobs") and not body.get("logprobs"):
            body = {**body, "logprobs": True}
        request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **body)
        return request.to_sampling_params(1, {}).prompt_logprobs is not None
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    body = {field: value for field, value in body.items() if field != "top_logprobs"}
    return CompletionRequest(model="m", prompt="hi", **body).to_sampling_params(1).prompt_logprobs is not None


@pytest.mark.parametrize("chat", [False, True])
def test_asks_prompt_logprobs_as_vllm_decides(chat):
    """Every combination of the deciding fields (absent, None, each kind of value), on both endpoints."""
    answers = []
    for values in itertools.product(*FIELDS.values()):
        body = body_of(dict(zip(FIELDS, values)))
        if not chat:
            body.pop("top_logprobs", None)  # not a completions field
        expected = vllm_asks(body, chat)
        if expected is not None:
            assert asks_prompt_logprobs(body, chat) == expected, body
            answers.append(expected)
    assert answers.count(True) > 10 and answers.count(False) > 10  # both answers were put to the test


@pytest.mark.parametrize("body", [None, [], "prompt_logprobs", 3])
def test_a_body_that_is_no_object_asks_nothing(body):
    assert not asks_prompt_logprobs(body, chat=False)


def test_lm_head_carries_lora_exactly_when_vllm_wraps_it():
    """vLLM's LoRA manager wraps every supported module (lm_head is one, Llama's `embedding_modules`) when
    target_modules is unset, else only the named ones."""
    from vllm.config.lora import LoRAConfig

    assert not lm_head_may_carry_lora(None)
    assert lm_head_may_carry_lora(LoRAConfig())
    assert lm_head_may_carry_lora(LoRAConfig(target_modules=["q_proj", "lm_head"]))
    assert not lm_head_may_carry_lora(LoRAConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert lm_head_may_carry_lora(SimpleNamespace())  # a config without the field: the unset default
