"""LoRA adapters (peft) on top of any loaded config: ``bnb-nf4+lora=PATH``.

peft injects its LoRA layers into the loaded model in place (each adapted linear becomes a
LoRA layer holding the original as ``base_layer``), so the model keeps its class, its forward
and its generate. peft is imported only here, inside functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantscope.backends import LoadedModel, missing
from quantscope.config import QuantConfig
from quantscope.errors import Unavailable, UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check(config: QuantConfig) -> None:
    """Raise :class:`Unavailable` when peft, which adapters need, is not installed."""
    reason = missing("peft", "lora")
    if reason:
        raise Unavailable(config.name, reason)


def check_adapter(folder: str | Path, allow_pickle: bool = False) -> Path:
    """The adapter folder, refusing a pickle-only adapter unless ``allow_pickle``."""
    path = Path(folder)
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"'{folder}' is not a LoRA adapter folder (no adapter_config.json).")
    if not (path / ADAPTER_WEIGHTS).is_file():
        if (path / "adapter_model.bin").is_file() and not allow_pickle:
            raise UserError(
                f"The adapter in '{folder}' is a pickle file (adapter_model.bin), which can run "
                "code when loaded; convert it to safetensors or pass --allow-pickle."
            )
        if not (path / "adapter_model.bin").is_file():
            raise UserError(f"'{folder}' has no adapter weights ({ADAPTER_WEIGHTS}).")
    return path


def fingerprint(folder: str | Path) -> str:
    """A hash of the adapter's config and weights (so a retrained adapter is measured again)."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", ADAPTER_WEIGHTS, "adapter_model.bin"):
        path = Path(folder) / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def attach(loaded: LoadedModel, folder: str, allow_pickle: bool = False) -> LoadedModel:
    """``loaded`` with the adapter in ``folder`` injected for inference.

    The quantized layers keep being counted (now under ``….base_layer``); the adapter's own
    weights count as ordinary parameters in the weight bytes.
    """
    from peft import PeftModel

    path = check_adapter(folder, allow_pickle)
    try:
        wrapped = PeftModel.from_pretrained(loaded.model, str(path), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"The adapter in '{folder}' does not fit this model: {err}") from None
    model: Any = wrapped.base_model.model  # the original model, LoRA layers injected in place
    model.eval()
    modules = dict(model.named_modules())
    rename = {n: f"{n}.base_layer" if f"{n}.base_layer" in modules else n for n in loaded.quantized}
    quantized = {rename[n]: count for n, count in loaded.quantized.items()}
    old_state = loaded.state

    def state() -> dict[str, list[Any]]:
        return {rename.get(n, n): tensors for n, tensors in old_state().items()}

    import peft

    library = f"{loaded.library}, peft {peft.__version__}".strip(", ")
    # everything else the backend knew (packed bytes, quantize time, kept linears) stays
    return replace(loaded, model=model, quantized=quantized, state=state, library=library)
