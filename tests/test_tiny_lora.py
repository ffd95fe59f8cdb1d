"""The embedded LoRA adapters: PEFT's layout, shapes from the model's own config, deterministic bytes."""

from __future__ import annotations

import json

import pytest

from slo_sidecar.engine.tiny_lora import CONFIG_FILE, RANK, TARGETS, WEIGHTS_FILE, build_lora, check_name
from slo_sidecar.engine.tiny_model import ensure_default_model


def test_an_adapter_has_peft_layout_and_shapes_from_the_models_config(tmp_path):
    from safetensors import safe_open

    model_dir = ensure_default_model()
    model = json.loads((model_dir / "config.json").read_text())
    adapter = build_lora("medical", tmp_path / "medical", model_dir)
    config = json.loads((adapter / CONFIG_FILE).read_text())
    assert (config["peft_type"], config["r"], sorted(config["target_modules"])) == ("LORA", RANK, sorted(TARGETS))
    head_dim = model["hidden_size"] // model["num_attention_heads"]
    out = {"q_proj": model["hidden_size"], "o_proj": model["hidden_size"],
           "k_proj": model["num_key_value_heads"] * head_dim, "v_proj": model["num_key_value_heads"] * head_dim}
    with safe_open(str(adapter / WEIGHTS_FILE), "pt") as weights:
        keys = set(weights.keys())
        assert len(keys) == 2 * len(TARGETS) * model["num_hidden_layers"]
        for layer in range(model["num_hidden_layers"]):
            for target in TARGETS:
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
                assert list(weights.get_tensor(prefix + ".lora_A.weight").shape) == [RANK, model["hidden_size"]]
                assert list(weights.get_tensor(prefix + ".lora_B.weight").shape) == [out[target], RANK]
                assert weights.get_tensor(prefix + ".lora_B.weight").abs().sum() > 0  # not PEFT's no-op start


def test_an_adapter_is_the_same_bytes_every_build_and_differs_by_name(tmp_path):
    model_dir = ensure_default_model()
    first = build_lora("legal", tmp_path / "a", model_dir)
    again = build_lora("legal", tmp_path / "b", model_dir)
    other = build_lora("finance", tmp_path / "c", model_dir)
    assert (first / WEIGHTS_FILE).read_bytes() == (again / WEIGHTS_FILE).read_bytes()
    assert (first / WEIGHTS_FILE).read_bytes() != (other / WEIGHTS_FILE).read_bytes()


@pytest.mark.parametrize("name", ["", "Medical", "a b", "../x", "x" * 41])
def test_adapter_names_are_safe_label_values_and_paths(name):
    with pytest.raises(ValueError):
        check_name(name)
