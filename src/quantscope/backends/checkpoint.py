"""Quantized checkpoints as configs (``checkpoint[path=FOLDER|HUB-ID,revision=REV]``, or a
folder's path alone): what people publish and deploy — compressed-tensors (llm-compressor's
W8A8, W4A16, AWQ, FP8), GPTQ and AWQ, FP8, bitsandbytes, HQQ, torchao.

A checkpoint is loaded by its own ``from_pretrained`` (transformers reads its
``quantization_config`` and calls the format's library), after checking, before anything
loads, that it is the baseline model quantized: same architecture and shapes, same tokenizer
vocabulary (:func:`check_same_model`). A folder without a ``quantization_config`` is measured
as a float checkpoint, with a note.

What a format does here is said in the result's library string. compressed-tensors in
transformers decompresses every quantized linear to float at the first forward pass (a hook
on the model), so what is held and computed with is float: the weights MB is what is held,
and the note gives the checkpoint's size on disk. Where the scheme quantizes activations
(W8A8, FP8 dynamic), compressed-tensors' own quantize-dequantize of the inputs is switched on
(``set_forward_quantized``), so the numerics are the scheme's, computed in float.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantscope.backends import Backend, Quantized, from_pretrained, missing, package_version
from quantscope.config import Checkpoint, ModelKind, ModelSpec, QuantConfig
from quantscope.errors import Unavailable, UserError
from quantscope.models import ModelFiles, download, torch_dtype, weight_files

# quant_method of a config.json → (module that must import, quantscope extra installing it)
LIBRARIES: dict[str, tuple[str, str]] = {
    "compressed-tensors": ("compressed_tensors", "checkpoints"),
    "gptq": ("optimum.gptq", "checkpoints,gptq"),
    "awq": ("gptqmodel", "gptq"),
    "bitsandbytes": ("bitsandbytes", "bnb"),
    "hqq": ("hqq", "hqq"),
    "torchao": ("torchao", "torchao"),
    "fp8": ("torch", ""),
}
SHAPES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def folder_of(config: Checkpoint, spec: ModelSpec) -> Path:
    """The checkpoint's local folder (a hub id is downloaded once, safetensors only unless
    the run allows pickle)."""
    if not config.path:
        raise UserError("checkpoint needs path=FOLDER or a hub id: checkpoint[path=org/name].")
    if config.local:
        return Path(config.path)
    hub = replace(spec, source=config.path, revision=config.revision or None, kind=ModelKind.HUB)
    return download(hub)


def quantization(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's ``quantization_config``, or None for a float checkpoint."""
    found = _config(folder).get("quantization_config")
    return dict(found) if isinstance(found, dict) else None


def method(folder: Path) -> str:
    """The checkpoint's quantization method (``compressed-tensors``, ``gptq``, ...) or
    ``float``."""
    found = quantization(folder)
    return str(found.get("quant_method", "unknown")) if found else "float"


def _config(folder: Path) -> dict[str, Any]:
    try:
        body = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"'{folder}' has no readable config.json; pass a model folder.") from None
    return body if isinstance(body, dict) else {}


def check_same_model(base: Path, folder: Path, name: str, base_name: str) -> None:
    """Raise one sentence unless ``folder`` holds the model of ``base`` (architecture,
    shapes, tokenizer vocabulary); nothing is loaded but the configs and tokenizers."""
    ours, theirs = _config(base), _config(folder)
    keys = [("architectures", "architecture"), ("model_type", "model type")]
    keys += [(k, k) for k in SHAPES]
    for key, said in keys:
        if key in ours and key in theirs and ours[key] != theirs[key]:
            raise UserError(
                f"'{name}' is not a checkpoint of {base_name}: its {said} is "
                f"{_plain(theirs[key])}, the baseline's {_plain(ours[key])}; give a checkpoint "
                "of the baseline, or measure it against its own base with --model."
            )
    vocab = _vocab(folder)
    if vocab is not None and vocab != _vocab(base):
        raise UserError(
            f"'{name}' is not a checkpoint of {base_name}: its tokenizer's vocabulary differs "
            "from the baseline's, so their probabilities cannot be compared token by token."
        )


def _plain(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _vocab(folder: Path) -> dict[str, int] | None:
    """The tokenizer's vocabulary, or None when the folder has no tokenizer files."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return dict(AutoTokenizer.from_pretrained(str(folder)).get_vocab())
    except (OSError, ValueError):
        return None


def disk_mb(folder: Path) -> float:
    """Megabytes of the checkpoint's weight files."""
    return sum(p.stat().st_size for p in weight_files(folder, safetensors_only=False)) / 2**20


class CheckpointBackend(Backend):
    name = "checkpoint"
    quantizes_while_loading = True  # made elsewhere: quantize s is not ours to count

    def available(self, config: QuantConfig, device: str) -> str | None:
        assert isinstance(config, Checkpoint)
        if not config.path:
            return "needs path=FOLDER or a hub id (checkpoint[path=org/name])."
        if not config.local:
            return None  # known once downloaded (load says what is missing)
        return self._needs(Path(config.path))

    def _needs(self, folder: Path) -> str | None:
        kind = method(folder)
        if kind == "float":
            return None
        if kind not in LIBRARIES:
            known = ", ".join(LIBRARIES)
            return f"its quantization_config names '{kind}'; quantscope reads {known}."
        module, extra = LIBRARIES[kind]
        return missing(module, extra) if module != "torch" else None

    def folder(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Path, dict[str, Any] | None]:
        """The checkpoint folder, and what making it took when quantscope made it."""
        assert isinstance(config, Checkpoint)
        return folder_of(config, spec), None

    def validate(self, files: ModelFiles, spec: ModelSpec, config: QuantConfig) -> None:
        assert isinstance(config, Checkpoint)
        folder = folder_of(config, spec)
        check_same_model(files.folder, folder, config.display, files.name)

    def load_model(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Any, float]:
        folder, made_info = self.folder(files, spec, config, device)
        reason = self._needs(folder)
        if reason:
            raise Unavailable(config.name, reason)
        kind = method(folder)
        if kind == "compressed-tensors":
            patch_packed_zero_points()
        dtype = getattr(config, "dtype", None) or spec.dtype
        model, seconds = from_pretrained(
            ModelFiles(folder, config.display, str(folder), ModelKind.LOCAL_DIR, ""),
            spec,
            device,
            dtype=torch_dtype(dtype),
        )
        if kind == "compressed-tensors":
            start = time.perf_counter()
            decompress(model)
            seconds += time.perf_counter() - start
        model.quantscope_checkpoint = (folder, kind, made_info)
        return model, seconds

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        """Made elsewhere: find the quantized linears and say what the format does here."""
        folder, kind, made_info = model.quantscope_checkpoint
        modules = quantized_modules(model)
        readers = {
            "compressed-tensors": "compressed-tensors",
            "gptq": "gptqmodel",
            "awq": "gptqmodel",
        }
        read = (
            f" read by {readers[kind]} {package_version(readers[kind])}" if kind in readers else ""
        )
        notes = [f"{kind} checkpoint, {disk_mb(folder):.0f} MB on disk{read}"]
        if kind == "float":
            notes = [f"no quantization_config: measured as a float checkpoint ({notes[0]})"]
        elif kind == "compressed-tensors":
            fmt = (quantization(folder) or {}).get("format", "?")
            notes.append(f"{fmt}, decompressed to float at load")
            if activations_quantized(model):
                notes.append("activations quantize-dequantized as the scheme says")
        if made_info:
            notes.append(str(made_info.get("note", "")))

        def state() -> dict[str, list[Any]]:  # what each holds beside its weight
            return {
                n: [t for name, t in _tensors(m) if name not in ("weight", "bias")]
                for n, m in modules.items()
            }

        quantized = {n: int(m.in_features * m.out_features) for n, m in modules.items()}
        made_s = float(made_info["quantize_s"]) if made_info else None
        return Quantized(quantized, state, made_s=made_s, note="; ".join(p for p in notes if p))

    def library(self) -> str:
        """Said by the note :meth:`quantize` writes (the format, who made it, what it does)."""
        return ""

    def emulate(self, config: QuantConfig) -> None:
        return None


def _tensors(module: Any) -> list[tuple[str, Any]]:
    return [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]


def quantized_modules(model: Any) -> dict[str, Any]:
    """The linears a checkpoint quantized: compressed-tensors ones carry a scheme; other
    formats replace ``nn.Linear`` by their own layer (bitsandbytes subclasses it)."""
    import torch

    found = {}
    for name, module in model.named_modules():
        if not (hasattr(module, "in_features") and hasattr(module, "out_features")):
            continue
        scheme = getattr(module, "quantization_scheme", None)
        if (scheme is not None and getattr(scheme, "weights", None) is not None) or (
            type(module) is not torch.nn.Linear
            and any(t.dtype in (torch.int8, torch.int32, torch.uint8) for _, t in _tensors(module))
        ):
            found[name] = module
    if not found:  # a float checkpoint: every linear but the head, as cast
        found = {
            n: m
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"
        }
    return found


def decompress(model: Any) -> None:
    """Run compressed-tensors' decompression now, as loading does: it hooks the whole model's
    first forward pass, which a pass that calls the inner model (as quantscope's scoring
    does, to stop before the head) would never trigger. One token through the model."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))


def activations_quantized(model: Any) -> bool:
    """Switch on compressed-tensors' quantize-dequantize of the inputs of every linear whose
    scheme quantizes activations; whether there was any."""
    any_ = False
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None and scheme.input_activations is not None:
            from compressed_tensors.quantization.lifecycle.forward import set_forward_quantized

            set_forward_quantized(module)
            any_ = True
    return any_


def patch_packed_zero_points() -> None:
    """Let transformers 5.25 load asymmetric pack-quantized checkpoints (llm-compressor's AWQ).

    transformers now builds the compressed layout on the meta device before reading the
    file; compressed-tensors 0.19/0.20's ``PackedQuantizationCompressor.compress`` then packs
    the weight but leaves the zero point in its unpacked shape (out × groups), while the
    checkpoint holds it packed eight to an int32 (out / 8 × groups): loading fails with "size
    mismatch" on every ``weight_zero_point``. This gives the meta zero point the packed shape
    the checkpoint has; decompression then unpacks it as it always did. Idempotent."""
    import torch
    from compressed_tensors.compressors.pack_quantized import base as packed

    compressor = packed.PackedQuantizationCompressor
    if getattr(compressor, "_quantscope_patched", False):
        return
    original = compressor.compress.__func__

    def compress(cls: Any, state_dict: Any, scheme: Any) -> Any:
        out = original(cls, state_dict, scheme)
        weight, zero = state_dict.get("weight"), out.get("weight_zero_point")
        args = scheme.weights
        if (
            weight is not None
            and weight.device.type == "meta"
            and zero is not None
            and zero.shape[0] == weight.shape[0]  # unpacked (a fixed library packs it)
            and not args.symmetric
            and args.strategy in packed.PACK_ZP_STRATS
        ):
            rows = math.ceil(zero.shape[0] * args.num_bits / 32)
            out["weight_zero_point"] = torch.empty(
                (rows, *zero.shape[1:]), dtype=torch.int32, device="meta"
            )
        return out

    compressor.compress = classmethod(compress)
    compressor._quantscope_patched = True


BACKEND = CheckpointBackend()
