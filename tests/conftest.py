"""Shared fixtures: a private cache per test session and tiny random models built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SDISTS = os.environ.get("QUANTSCOPE_TEST_SDISTS", "")  # the Makefile's source packages
TOOLS = os.environ.get("QUANTSCOPE_TOOLS") or str(Path.home() / ".cache" / "quantscope" / "tools")

# the tiny tests' evaluation windows: 300 tokens of the tiny text in windows of 64, stride 32
TINY_WINDOWS = ["--tokens", "300", "--context", "64", "--stride", "32"]
TIMING = ("tps", "_s", "peak_")  # metrics measured anew each time, never equal


def tiny_run(model: Path, text: Path, configs: str, *more: str) -> list[str]:
    """``quantscope run``'s arguments for a quick run of the tiny model on the tiny text."""
    return [
        "run",
        "--model",
        str(model),
        "--text",
        str(text),
        "--configs",
        configs,
        *TINY_WINDOWS,
        "--speed-reps",
        "1",
        "--max-new-tokens",
        "3",
        *more,
    ]


def stored_accuracy(db: Path) -> dict[str, dict[str, float]]:
    """Every accuracy metric of every result in a results database (its integrity checked,
    each row with its per-token values), by config."""
    import json
    import sqlite3

    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT config, body FROM results").fetchall()
        values = dict(con.execute("SELECT key, length(body) FROM token_values").fetchall())
    out = {}
    for config, body in rows:
        result = json.loads(body)
        assert values.get(result["key"]), f"{config}: a row without its per-token values"
        out[config] = {
            k: v for k, v in result["metrics"].items() if not any(t in k for t in TIMING)
        }
    return out


def needs_tool(tool: object) -> None:
    """Skip, saying why, when a tool environment was not built (``make tools`` builds it;
    tests read packages from no index, so they cannot build it themselves)."""
    from quantscope import toolenv

    assert isinstance(tool, toolenv.Tool)
    if toolenv.built(tool) is None:
        pytest.skip(f"the {tool.name} environment is not built in {TOOLS} (make tools builds it)")


def offline_pip(mp: pytest.MonkeyPatch) -> None:
    """pip with no index: it finds packages only in the Makefile's download folder."""
    mp.setenv("PIP_NO_INDEX", "1")
    if SDISTS:
        mp.setenv("PIP_FIND_LINKS", SDISTS)


def needs_llama_sdist() -> None:
    """Skip, saying why, when llama-cpp-python's source package was not downloaded."""
    if not (SDISTS and list(Path(SDISTS).glob("*.tar.gz"))):
        pytest.skip("llama-cpp-python's source package is not downloaded (make test does)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets an empty cache and no network: the hub is offline, and pip reads
    packages only from the folder the Makefile downloaded them to (``QUANTSCOPE_TEST_SDISTS``:
    llama-cpp-python's source, which holds llama.cpp's converter)."""
    monkeypatch.setenv("QUANTSCOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("QUANTSCOPE_TOOLS", TOOLS)  # built by make tools, shared
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline_pip(monkeypatch)


def build_tokenizer(folder: Path) -> None:
    """A small byte-level BPE tokenizer trained on the bundled training text (offline, <1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from quantscope.data import bundled_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([bundled_text("train")[:200_000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(folder)


def build_tiny_model(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama with hidden size 64 (bitsandbytes block size) saved as safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=1,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so quantization matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    build_tokenizer(folder)
    return folder


def build_tiny_smollm(folder: Path, seed: int = 0) -> Path:
    """The tiny random Llama with the bundled SmolLM2 tokenizer (49,152 tokens): one that
    llama.cpp's converter recognizes (it refuses pre-tokenizers it does not know)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantscope import models
    from quantscope.config import model_spec

    spec = model_spec(None)
    tokenizer = models.load_tokenizer(models.resolve(spec), spec)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_cpp_converter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama.cpp's converter: $QUANTSCOPE_LLAMA_CPP, else fetched by pip as users do (from
    the Makefile's download of llama-cpp-python's source: no index, no network)."""
    from quantscope.backends import gguf_files

    found = os.environ.get(gguf_files.CONVERTER_ENV)
    if found:
        return Path(found)
    needs_llama_sdist()
    with pytest.MonkeyPatch.context() as mp:
        offline_pip(mp)
        return gguf_files.fetch_converter(tmp_path_factory.mktemp("llama.cpp"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random model folder (config.json, safetensors, tokenizer)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text file of about 3,000 tiny-tokenizer tokens taken from the bundled eval text."""
    from quantscope.data import bundled_text

    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(bundled_text("eval")[:9000], encoding="utf-8")
    return path
