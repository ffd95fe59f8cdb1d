"""Small deterministic LoRA adapters for the embedded model, in PEFT's format.

A multi-tenant pod serves one base model and several adapters, picked by the
request's `model`. No hub is reachable here, so the adapters are made locally,
like the model: rank-8 updates of every attention projection, seeded from the
adapter's name, written as PEFT writes them (adapter_config.json and
adapter_model.safetensors), which vLLM's LoRARequest loads. No `peft` needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .tiny_model import MODEL_NAME, cache_root, default_model_dir, ensure_default_model

LORA_RECIPE_VERSION = 1
RANK = 8
ALPHA = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def check_name(name: str) -> str:
    """Adapter names become `model` label values and paths: lower-case letters, digits, - and _."""
    if not name or len(name) > 40 or not set(name) <= NAME_CHARACTERS:
        raise ValueError(f"adapter name {name!r}: use 1-40 of a-z, 0-9, '-' and '_'")
    return name


def default_lora_dir(name: str) -> Path:
    return cache_root() / "loras" / f"{MODEL_NAME}-{check_name(name)}-r{LORA_RECIPE_VERSION}"


def is_built(adapter_dir: Path) -> bool:
    return (adapter_dir / CONFIG_FILE).is_file() and (adapter_dir / WEIGHTS_FILE).is_file()


def build_lora(name: str, out_dir: Path, model_dir: Path | None = None) -> Path:
    """Build adapter `name` for the embedded model into out_dir, atomically (a half-built one is never seen)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    check_name(name)
    model_dir = Path(model_dir) if model_dir else ensure_default_model()
    config = AutoConfig.from_pretrained(model_dir)
    head_dim = config.hidden_size // config.num_attention_heads
    out_features = {"q_proj": config.hidden_size, "k_proj": config.num_key_value_heads * head_dim,
                    "v_proj": config.num_key_value_heads * head_dim, "o_proj": config.hidden_size}
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for target in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            # Both factors non-zero (PEFT starts B at zero, a no-op): the adapter changes what is generated.
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, config.hidden_size, generator=generator) * 0.05
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features[target], RANK, generator=generator) * 0.05
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(model_dir),
        "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "inference_mode": True,
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(staging / WEIGHTS_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_lora(name: str) -> Path:
    """Adapter `name`'s directory, building it on first use."""
    adapter_dir = default_lora_dir(name)
    if not is_built(adapter_dir):
        build_lora(name, adapter_dir, default_model_dir() if (default_model_dir() / "config.json").is_file() else None)
    return adapter_dir
