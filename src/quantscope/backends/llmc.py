"""llm-compressor's recipes as configs: ``llmc-w8a8``, ``llmc-w4a16``, ``llmc-awq``, ``llmc-fp8``.

Each is the recipe llm-compressor's own examples use for that scheme, calibrated on the
training text like ``gptq`` (``samples`` × ``seqlen`` token rows, cut by
``gptq.calibration``), run by ``oneshot`` in llm-compressor's own environment
(``quantscope.toolenv``: its pins clash with ours) and saved as a compressed-tensors
checkpoint in the cache, once, under the cache's lock. The checkpoint is then measured like
any ``checkpoint`` config (``backends.checkpoint``), and ``quantize s`` is what ``oneshot``
took.

- ``w8a8``: SmoothQuant (strength ``smoothing``), then GPTQ to INT8 weights per channel with
  INT8 activations per token, dynamic (llm-compressor's ``W8A8`` preset);
- ``w4a16``: GPTQ to INT4 symmetric weights in groups of ``group``;
- ``awq``: AWQ's activation-aware scales, then INT4 asymmetric weights in groups of ``group``
  (``W4A16_ASYM``; llm-compressor 0.14 spells it as two modifiers);
- ``fp8``: FP8 (E4M3) weights per channel with dynamic per-token FP8 activations
  (``FP8_DYNAMIC``); no calibration data.

>>> from quantscope.config import parse_config
>>> print(recipe(parse_config("llmc-w4a16[group=64]"), ["lm_head"]))
default_stage:
  default_modifiers:
    GPTQModifier:
      ignore: [lm_head]
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 4, type: int, symmetric: true, strategy: group, group_size: 64}
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantscope import toolenv
from quantscope.backends.checkpoint import CheckpointBackend
from quantscope.backends.gptq import calibration, plan
from quantscope.cache import cache_dir, made
from quantscope.config import Gptq, Llmc, LlmcScheme, ModelSpec, QuantConfig
from quantscope.errors import UserError
from quantscope.models import ModelFiles, linear_shapes
from quantscope.provenance import digest

TIMEOUT_S = 6 * 3600.0  # a calibration past this is stuck, not slow


def recipe(config: Llmc, kept: list[str]) -> str:
    """llm-compressor's recipe (YAML) for ``config``, keeping the linears named in ``kept``
    in float: the one place a recipe is spelled (the job runs it, the snippet shows it)."""
    names = [n if n == "lm_head" else f"'re:^{re.escape(n)}$'" for n in kept]
    ignore = "[" + ", ".join(names) + "]"
    if config.scheme in (LlmcScheme.W4A16, LlmcScheme.AWQ):
        sym = "true" if config.scheme is LlmcScheme.W4A16 else "false"
        how = f"strategy: group, group_size: {config.group}"
        if not config.group:
            how = "strategy: channel"
        groups = [
            "      config_groups:",
            "        group_0:",
            "          targets: [Linear]",
            f"          weights: {{num_bits: 4, type: int, symmetric: {sym}, {how}}}",
        ]
        if config.scheme is LlmcScheme.W4A16:
            body = ["    GPTQModifier:", f"      ignore: {ignore}", *groups]
        else:  # 0.14's API: AWQ's scale search, then the quantization it searched for
            body = ["    AWQModifier: {}", "    QuantizationModifier:", f"      ignore: {ignore}"]
            body += groups
    else:
        preset = "W8A8" if config.scheme is LlmcScheme.W8A8 else "FP8_DYNAMIC"
        modifier = "GPTQModifier" if config.scheme is LlmcScheme.W8A8 else "QuantizationModifier"
        body = [
            f"    {modifier}:",
            f"      ignore: {ignore}",
            "      targets: [Linear]",
            f"      scheme: {preset}",
        ]
        if config.scheme is LlmcScheme.W8A8:
            smooth = f"      smoothing_strength: {config.smoothing}"
            body = ["    SmoothQuantModifier:", smooth, *body]
    return "\n".join(["default_stage:", "  default_modifiers:", *body])


def calibrated(config: Llmc) -> bool:
    """Whether the recipe needs calibration text (FP8 dynamic does not)."""
    return config.scheme is not LlmcScheme.FP8


def make(files: ModelFiles, spec: ModelSpec, config: Llmc) -> tuple[Path, dict[str, Any]]:
    """The checkpoint's folder in the cache (made now, or found) and what making it took."""
    weight_only = config.scheme in (LlmcScheme.W4A16, LlmcScheme.AWQ)
    as_gptq = Gptq(
        group=config.group if weight_only else 0,
        include=config.include,
        skip=config.skip,
    )
    chosen, _rules = plan(files, spec, as_gptq)  # the group fits every linear, or a sentence
    kept = sorted(set(linear_shapes(files, spec)) - set(chosen))
    rows, source = calibration(files, spec, config) if calibrated(config) else ([], "none")
    text = recipe(config, kept)
    tool = toolenv.LLMCOMPRESSOR
    base = replace(config, lora="", label="")
    key = digest(files.fingerprint, base.name, text, rows, tool.packages)
    folder = cache_dir() / "llmc" / f"{files.fingerprint}-{key}"

    def build(tmp: Path) -> dict[str, Any]:
        job = {
            "model": str(files.folder),
            "recipe": text,
            "rows": [r["input_ids"] for r in rows],
            "out": str(tmp),
            "dtype": "float32",
            "trust_remote_code": spec.trust_remote_code,
        }
        done = toolenv.run(tool, "llmcompressor_job", job, timeout=TIMEOUT_S)
        versions = done["versions"]
        made_with = f"llmcompressor {versions['llmcompressor']}"
        made_with += f" (compressed-tensors {versions['compressed-tensors']}"
        made_with += f", transformers {versions['transformers']})"
        note = f"made by {made_with}; calibration {source}"
        return {"quantize_s": done["quantize_s"], "note": note, "recipe": text}

    return folder, made(folder, build)


class LlmcBackend(CheckpointBackend):
    name = "llm-compressor"

    def available(self, config: QuantConfig, device: str) -> str | None:
        if importlib.util.find_spec("compressed_tensors") is None:
            return (
                "compressed-tensors is not installed (it reads the checkpoint); "
                "pip install 'quantscope[checkpoints]'."
            )
        if importlib.util.find_spec("ensurepip") is None:
            return "this Python cannot make virtual environments (no ensurepip) for llm-compressor."
        return None

    def validate(self, files: ModelFiles, spec: ModelSpec, config: QuantConfig) -> None:
        return None  # made from the baseline itself

    def folder(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Path, dict[str, Any] | None]:
        assert isinstance(config, Llmc)
        if config.lora:
            raise UserError(f"{config.display}: +lora= is not supported on llm-compressor configs.")
        return make(files, spec, config)


BACKEND = LlmcBackend()
