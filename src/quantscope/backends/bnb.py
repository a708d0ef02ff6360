"""bitsandbytes: LLM.int8 (``bnb-int8``) and 4-bit NF4/FP4 (``bnb-nf4``, ``bnb-fp4``).

Loaded through transformers' ``BitsAndBytesConfig``, which quantizes while loading.
bitsandbytes is imported only here, inside functions. Linears the config does not select
(and ``lm_head``) stay in the config's ``dtype``: bitsandbytes is given their exact names.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from quantscope.backends import Backend, Emulation, Quantized
from quantscope.config import Bnb4, BnbInt8, ModelSpec, QuantConfig, WeightConfig
from quantscope.models import ModelFiles, linear_shapes, torch_dtype


def _import_bnb() -> Any:
    # bitsandbytes logs a warning about an optional CPU kernel package at import; it is noise.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


class BitsAndBytesBackend(Backend):
    name = "bitsandbytes"
    package = "bitsandbytes"
    module = "bitsandbytes"
    extra = "bnb"
    quantizes_while_loading = True

    def available(self, config: QuantConfig, device: str) -> str | None:
        try:
            _import_bnb()
        except ImportError as err:
            return f"bitsandbytes is not installed ({err}); pip install bitsandbytes."
        if device == "mps":
            return "bitsandbytes has no MPS backend; use --device cpu."
        return None

    def skip_list(self, config: WeightConfig, names: list[str]) -> list[str] | None:
        """bitsandbytes' skip list for a config: None (transformers' default, which keeps
        ``lm_head``) without patterns, else the exact names of every linear not selected."""
        if not config.include and not config.skip:
            return None
        keep = set(config.select(names))
        return [re.escape(n) for n in names if n not in keep]

    def load_kwargs(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig
    ) -> dict[str, Any]:
        """The transformers ``BitsAndBytesConfig`` for a quantscope config."""
        from transformers import BitsAndBytesConfig

        assert isinstance(config, (BnbInt8, Bnb4))
        skip = self.skip_list(config, list(linear_shapes(files, spec)))
        if isinstance(config, BnbInt8):
            quant = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=config.threshold, llm_int8_skip_modules=skip
            )
        else:
            quant = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=config.quant_type.value,
                bnb_4bit_use_double_quant=config.double_quant,
                bnb_4bit_compute_dtype=torch_dtype(config.compute_dtype),
                llm_int8_skip_modules=skip,
            )
        return {"quantization_config": quant}

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        """Quantized while loading: find bitsandbytes' layers and their state."""
        bnb = _import_bnb()
        kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
        modules = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}

        def state() -> dict[str, list[Any]]:
            return {name: quant_state_tensors(module) for name, module in modules.items()}

        return Quantized({n: m.in_features * m.out_features for n, m in modules.items()}, state)

    def emulate(self, config: QuantConfig) -> Emulation:
        """4-bit: bitsandbytes' own quantize/dequantize (block size 64, as transformers uses);
        the CPU kernel then multiplies at about bf16 precision, which this leaves out.
        8-bit: row-wise absmax int8 weights; LLM.int8's fp16 path for outlier activation
        columns is left out, so it overstates int8's error a little."""
        if isinstance(config, BnbInt8):
            return Emulation(
                _int8_rows, lambda o, i: o * i + 4 * o, "outlier columns (threshold) left out"
            )
        assert isinstance(config, Bnb4)
        quant_type, double = config.quant_type.value, config.double_quant

        def weight(w: Any) -> Any:
            functional = _import_bnb().functional
            packed, state = functional.quantize_4bit(
                w.float().contiguous(),
                blocksize=_BLOCK,
                quant_type=quant_type,
                compress_statistics=double,
            )
            return functional.dequantize_4bit(packed, state).to(w.dtype)

        def nbytes(out_f: int, in_f: int) -> int:
            blocks = -(-out_f * in_f // _BLOCK)
            absmax = blocks + 4 * -(-blocks // 256) if double else 4 * blocks
            return -(-out_f * in_f // 2) + absmax

        return Emulation(weight, nbytes, "bf16-precision CPU matmul left out")


_BLOCK = 64  # transformers' BitsAndBytesConfig default bnb_4bit block size


def _int8_rows(w: Any) -> Any:
    """Row-wise absmax int8 round trip: each output row scaled so its largest |w| is 127."""
    scale = w.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # (out, 1)
    return ((w.float() / scale).round().clamp(-127, 127) * scale).to(w.dtype)


def quant_state_tensors(module: Any) -> list[Any]:
    """Tensors of a bnb linear's quantization state that are not parameters or buffers.

    4-bit: the QuantState's absmax, codebook and offset, and the nested state of double
    quantization. 8-bit: the per-row scales (SCB) kept on the module's state or weight.
    """
    import torch

    found: list[Any] = []
    quant_state = getattr(module.weight, "quant_state", None)
    while quant_state is not None:
        for attr in ("absmax", "code", "offset"):
            value = getattr(quant_state, attr, None)
            if isinstance(value, torch.Tensor):
                found.append(value)
        quant_state = getattr(quant_state, "state2", None)
    for owner in (getattr(module, "state", None), module.weight):
        value = getattr(owner, "SCB", None)
        if isinstance(value, torch.Tensor):
            found.append(value)
    return found


BACKEND = BitsAndBytesBackend()
