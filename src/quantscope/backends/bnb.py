"""bitsandbytes: LLM.int8 (``bnb-int8``) and 4-bit NF4/FP4 (``bnb-nf4``, ``bnb-fp4``).

Loaded through transformers' ``BitsAndBytesConfig``. bitsandbytes is imported only here,
inside functions. Modules matching ``skip`` patterns (and ``lm_head``, which transformers
always keeps) stay in the baseline's precision.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from quantscope.backends import Backend, Emulation, LoadedModel
from quantscope.config import Method, ModelSpec, QuantConfig, select_modules
from quantscope.models import ModelFiles, torch_dtype


def _import_bnb() -> Any:
    # bitsandbytes logs a warning about an optional CPU kernel package at import; it is noise.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


class BitsAndBytesBackend(Backend):
    name = "bitsandbytes"
    methods = (Method.BNB_INT8, Method.BNB_NF4, Method.BNB_FP4)

    def available(self, method: Method, device: str) -> str | None:
        try:
            _import_bnb()
        except ImportError as err:
            return f"bitsandbytes is not installed ({err}); pip install bitsandbytes."
        if device == "mps":
            return "bitsandbytes has no MPS backend; use --device cpu."
        return None

    def skip_list(self, config: QuantConfig, names: list[str]) -> list[str] | None:
        """bitsandbytes' skip list for a config: None (transformers' default, which keeps
        ``lm_head``) without patterns, else the exact names of every linear not selected."""
        if not config.include and not config.skip:
            return None
        keep = set(select_modules(names, config.include, (*config.skip, "lm_head")))
        return [re.escape(n) for n in names if n not in keep]

    def linear_names(self, files: ModelFiles, spec: ModelSpec) -> list[str]:
        """The model's linear layer names, from its config on the meta device (no weights)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(
            str(files.folder), trust_remote_code=spec.trust_remote_code
        )
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, trust_remote_code=spec.trust_remote_code
            )
        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]

    def quantization_config(self, config: QuantConfig, names: list[str]) -> Any:
        """The transformers ``BitsAndBytesConfig`` for a quantscope config."""
        from transformers import BitsAndBytesConfig

        skip = self.skip_list(config, names)
        if config.method is Method.BNB_INT8:
            return BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=config.threshold, llm_int8_skip_modules=skip
            )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4" if config.method is Method.BNB_NF4 else "fp4",
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(config.compute_dtype),
            llm_int8_skip_modules=skip,
        )

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        names = self.linear_names(files, spec)
        model, seconds = self.from_pretrained(
            files, spec, config, device,
            dtype=torch_dtype(config.dtype or spec.dtype),
            quantization_config=self.quantization_config(config, names),
        )  # fmt: skip
        bnb = _import_bnb()
        kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
        modules = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
        quantized = {n: m.in_features * m.out_features for n, m in modules.items()}

        def state() -> dict[str, list[Any]]:
            return {name: quant_state_tensors(module) for name, module in modules.items()}

        return LoadedModel(model, seconds, quantized, state, f"bitsandbytes {bnb.__version__}")

    def emulate(self, config: QuantConfig) -> Emulation:
        """4-bit: bitsandbytes' own quantize/dequantize (block size 64, as transformers uses);
        the CPU kernel then multiplies at about bf16 precision, which this leaves out.
        8-bit: row-wise absmax int8 weights; LLM.int8's fp16 path for outlier activation
        columns is left out, so it overstates int8's error a little."""
        if config.method is Method.BNB_INT8:
            return Emulation(
                _int8_rows, lambda o, i: o * i + 4 * o, "outlier columns (threshold) left out"
            )
        quant_type = "nf4" if config.method is Method.BNB_NF4 else "fp4"

        def weight(w: Any) -> Any:
            functional = _import_bnb().functional
            packed, state = functional.quantize_4bit(
                w.float().contiguous(), blocksize=_BLOCK, quant_type=quant_type,
                compress_statistics=config.double_quant,
            )  # fmt: skip
            return functional.dequantize_4bit(packed, state).to(w.dtype)

        def nbytes(out_f: int, in_f: int) -> int:
            blocks = -(-out_f * in_f // _BLOCK)
            absmax = blocks + 4 * -(-blocks // 256) if config.double_quant else 4 * blocks
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
