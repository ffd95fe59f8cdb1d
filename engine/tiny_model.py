"""The embedded default model: a tiny random-weight Llama built on this machine.

No model hub is reachable where this project runs, so the engine's default model
is made locally: a byte-level BPE tokenizer trained on the docstrings of the
Python standard library, and a two-layer Llama with seeded random weights. It
produces nonsense, fast, which is all an observability demo and a test suite
need: real vLLM scheduling, real prefill and decode, real metrics.

The build is deterministic (fixed seed, fixed corpus for a given Python version)
and cached: the cache key carries the recipe version and the Python version, so
a changed recipe never reuses a stale model.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

MODEL_NAME = "tiny-llama"
RECIPE_VERSION = 1
SEED = 1234
VOCAB_SIZE = 2048
MAX_POSITIONS = 2048

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
MARKER_FILE = "slo_sidecar_model.json"

# A fixed list keeps the corpus stable for a given Python version.
CORPUS_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message",
    "enum", "fractions", "functools", "gzip", "heapq", "http.client", "http.server",
    "inspect", "ipaddress", "itertools", "json", "logging", "pathlib", "pickle", "queue",
    "random", "re", "sched", "secrets", "shutil", "socket", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "typing",
    "unittest", "urllib.parse", "uuid", "zipfile",
)

# A plain role-tagged format; the BOS token opens every conversation.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def cache_root() -> Path:
    """Where built models live: $SLO_SIDECAR_CACHE, else the XDG user cache."""
    explicit = os.environ.get("SLO_SIDECAR_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "slo-sidecar"


def default_model_dir() -> Path:
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / "models" / f"{MODEL_NAME}-r{RECIPE_VERSION}-{py}"


def is_built(model_dir: Path) -> bool:
    return (model_dir / MARKER_FILE).is_file()


def training_corpus() -> list[str]:
    """Text the tokenizer learns from: the Zen of Python and stdlib docstrings."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # noqa: F401  (prints the Zen on import)
    texts = [codecs.decode(this.s, "rot13")]
    with warnings.catch_warnings():  # deprecated members warn when touched; their docs are still text
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name in CORPUS_MODULES:
            texts.extend(_module_docs(module_name))
    return texts


def _module_docs(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    texts = [module.__doc__] if module.__doc__ else []
    for name in sorted(vars(module)):
        if not name.startswith("_"):
            doc = inspect.getdoc(getattr(module, name))
            if doc:
                texts.append(doc)
    return texts


def build_tokenizer():
    """Train a byte-level BPE tokenizer and wrap it for transformers and vLLM."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD, *ROLE_TOKENS]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(out_dir: Path, replace: bool = True) -> Path:
    """Build the model into out_dir, atomically: a half-built model is never visible.

    With replace=False, a complete model that another process finished first wins
    and this build is discarded, so concurrent first starts cannot clash.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(staging)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=MAX_POSITIONS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            torch_dtype="float32",
        )
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
        model.save_pretrained(staging, safe_serialization=True)
        marker = {
            "name": MODEL_NAME,
            "recipe_version": RECIPE_VERSION,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "seed": SEED,
            "sha256": _file_hashes(staging),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if replace and out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if replace or not is_built(out_dir):
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_default_model() -> Path:
    """The default model's directory, building it on first use."""
    model_dir = default_model_dir()
    if not is_built(model_dir):
        build_model(model_dir, replace=False)
    return model_dir


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MARKER_FILE
    }
