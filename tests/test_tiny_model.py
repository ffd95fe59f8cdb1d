"""The embedded model builds deterministically into a loadable Hugging Face directory."""

from __future__ import annotations

import json

import pytest

from slo_sidecar.engine import tiny_model


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return tiny_model.build_model(root / "a"), tiny_model.build_model(root / "b")


def test_builds_are_byte_for_byte_identical(two_builds):
    first, second = two_builds
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", tiny_model.MARKER_FILE} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_model_is_a_tiny_llama(two_builds):
    config = json.loads((two_builds[0] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 128, 2048)


def test_tokenizer_round_trips_and_has_a_chat_template(two_builds):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(two_builds[0])
    text = "Observability for LLM pods: queue depth, TTFT, burn rates."
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < 0.6 * len(text.encode()), "BPE merges should compress ordinary text"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_concurrent_first_builds_keep_the_first(tmp_path):
    target = tmp_path / "model"
    tiny_model.build_model(target)
    marker = (target / tiny_model.MARKER_FILE).stat().st_ino
    tiny_model.build_model(target, replace=False)  # lost the race: must not disturb the winner
    assert (target / tiny_model.MARKER_FILE).stat().st_ino == marker
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no staging directory left behind"


def test_cache_location_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SLO_SIDECAR_CACHE", str(tmp_path))
    assert tiny_model.default_model_dir().parent == tmp_path / "models"
    monkeypatch.delenv("SLO_SIDECAR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiny_model.default_model_dir().parent == tmp_path / "xdg" / "slo-sidecar" / "models"
