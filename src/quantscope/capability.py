"""Which configs a device runs natively, emulated (correct but slow: the math is done in
another precision or by a fallback kernel), or not at all — decided before anything loads.

The rules are the vendors' documented requirements (NVIDIA compute capability, CUDA-only
kernels); a device is described by its type and, for CUDA, its capability, so the table can
be computed for any GPU (``quantscope doctor --capability 8.0``) and tested without one.

>>> from quantscope.config import parse_config
>>> support(parse_config("bf16"), Device("cuda", (7, 5))).level
'emulated'
>>> support(parse_config("torchao-int4wo"), Device("cpu")).level
'unsupported'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from quantscope.config import (
    Bnb4,
    BnbInt8,
    DType,
    Gguf,
    Gptq,
    Hqq,
    Llmc,
    Precision,
    QuantConfig,
    Quanto,
    QuantoWeights,
    Rtn,
    TorchAoInt4,
    TorchAoInt8,
    TorchAoIntx,
    WeightConfig,
)


class Level(str, Enum):
    NATIVE = "native"
    EMULATED = "emulated"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Device:
    """``kind``: cpu, cuda or mps; ``capability``: CUDA compute capability (major, minor);
    ``bf16_cpu``: the CPU has native bf16 math (AVX512-BF16 or AMX)."""

    kind: str
    capability: tuple[int, int] = (0, 0)
    bf16_cpu: bool = False

    @property
    def name(self) -> str:
        return (
            f"cuda {self.capability[0]}.{self.capability[1]}" if self.kind == "cuda" else self.kind
        )


@dataclass(frozen=True)
class Support:
    level: str
    reason: str = ""


_OK = Support(Level.NATIVE.value)


def _emulated(why: str) -> Support:
    return Support(Level.EMULATED.value, why)


def _no(why: str) -> Support:
    return Support(Level.UNSUPPORTED.value, why)


def dtype_support(dtype: DType, device: Device) -> Support:
    """Whether ``device`` computes in ``dtype`` natively."""
    cap = device.capability
    if dtype is DType.BF16:
        if device.kind == "cuda" and cap < (8, 0):
            why = "bf16 math needs compute capability 8.0 (Ampere) or newer; this GPU is "
            return _emulated(
                why + f"{cap[0]}.{cap[1]}, so torch emulates it slowly — use fp16 here"
            )
        if device.kind == "cpu" and not device.bf16_cpu:
            return _emulated(
                "this CPU has no AVX512-BF16 or AMX: bf16 runs emulated, slower than fp32"
            )
    if dtype is DType.FP16 and device.kind == "cpu":
        return _emulated(
            "fp16 on a CPU is computed by slow fallback kernels; it measures fp16's "
            "accuracy, not its speed"
        )
    return _OK


def support(config: QuantConfig, device: Device) -> Support:
    """How ``device`` runs ``config`` (the config's kernels, then its compute dtypes)."""
    found = _kernel(config, device)
    if found.level != Level.NATIVE.value:
        return found
    dtypes = []
    if isinstance(config, Precision):
        dtypes.append(config.precision)
    if isinstance(config, WeightConfig) and config.dtype is not None:
        dtypes.append(config.dtype)
    if isinstance(config, Bnb4):
        dtypes.append(config.compute_dtype)
    for dtype in dtypes:
        found = dtype_support(dtype, device)
        if found.level != Level.NATIVE.value:
            return found
    return _OK


def _kernel(config: QuantConfig, device: Device) -> Support:
    cuda, cap = device.kind == "cuda", device.capability
    if config.engine:  # the engine's own kernels; what it cannot load fails with its reason
        return _OK
    if isinstance(config, TorchAoInt4):
        if not cuda:
            return _no("torchao's int4 weight-only kernel (tinygemm) needs a CUDA GPU")
        if cap < (8, 0):
            return _no(
                f"torchao's int4 kernel needs compute capability 8.0; this GPU is {cap[0]}.{cap[1]}"
            )
    if isinstance(config, (BnbInt8, Bnb4)) and device.kind == "mps":
        return _no("bitsandbytes has no MPS backend")
    if isinstance(config, BnbInt8) and cuda and cap < (7, 5):
        return _emulated(
            "LLM.int8's int8 matmul (cuBLASLt) needs compute capability 7.5; below "
            "it bitsandbytes de-quantizes to fp16"
        )
    fp8 = isinstance(config, Quanto) and config.weights is QuantoWeights.FP8
    if fp8 and (not cuda or cap < (8, 9)):
        return _emulated(
            "float8 math needs compute capability 8.9 (Ada, Hopper); elsewhere "
            "quanto de-quantizes the fp8 weights to compute"
        )
    if isinstance(config, Gptq):
        if not cuda:
            return _emulated(
                "GPTQ's fast kernels (Marlin, ExLlama) are CUDA-only; on CPU "
                "gptqmodel uses its torch kernel (slow)"
            )
        if cap < (8, 0):
            return _emulated(
                "the Marlin kernel needs compute capability 8.0; below it "
                "gptqmodel falls back to ExLlama or torch kernels"
            )
    if isinstance(config, Llmc):
        return _emulated(
            "transformers decompresses compressed-tensors checkpoints to float at load "
            "(activations quantize-dequantized where the scheme says): the accuracy is "
            "the scheme's, memory and speed are not (+engine=vllm measures them in vLLM)"
        )
    if isinstance(config, Rtn):
        return _emulated(
            "rtn is fake quantization: weights are held in float, so it measures "
            "accuracy, not memory or speed"
        )
    if isinstance(config, Hqq) and not cuda:
        return _emulated("hqq's fast kernels are CUDA-only; on CPU it de-quantizes per forward")
    if isinstance(config, (TorchAoInt8, TorchAoIntx)) and device.kind == "mps":
        return _no("torchao's kernels do not run on MPS")
    if isinstance(config, Gguf) and cuda:
        return Support(
            Level.NATIVE.value, "on the GPU only if llama-cpp-python was built with CUDA"
        )
    return _OK


def this_device(device: str) -> Device:
    """The :class:`Device` a run's device string names (its capability read from torch)."""
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        return Device("cuda", tuple(torch.cuda.get_device_capability(index)))  # type: ignore[arg-type]
    return Device(kind, bf16_cpu=kind == "cpu" and cpu_has_bf16())


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 among this CPU's flags (False where they cannot be read)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def table(configs: list[QuantConfig], devices: list[Device]) -> list[dict[str, str]]:
    """One row per config: its support level on each device, and the first reason given."""
    rows = []
    for config in configs:
        row = {"config": config.display}
        reasons = []
        for device in devices:
            found = support(config, device)
            row[device.name] = found.level
            if found.reason and found.reason not in reasons:
                reasons.append(found.reason)
        row["why"] = "; ".join(reasons)
        rows.append(row)
    return rows


# CPU flags (/proc/cpuinfo) and the names llama.cpp's system info gives the same features
LLAMA_FEATURES = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX512",
    "avx512_vnni": "AVX512_VNNI",
    "avx512vbmi": "AVX512_VBMI",
    "avx512_bf16": "AVX512_BF16",
    "amx_int8": "AMX_INT8",
}


def llama_features(system_info: str) -> set[str]:
    """The CPU features a llama.cpp build uses, from ``llama_print_system_info()``.

    >>> sorted(llama_features("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | OPENMP = 1 |"))
    ['AVX', 'AVX2', 'OPENMP', 'SSE3']
    """
    found = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if name and value.strip() == "1":
            found.add(name)
    return found


def cpu_flags() -> set[str]:
    """This CPU's flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((x for x in f if x.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def llama_build_gaps(system_info: str, flags: set[str]) -> list[str]:
    """The vector features this CPU has that the llama.cpp build does not use (a portable
    build, say): its kernels then run slower than the CPU allows.

    >>> llama_build_gaps("CPU : AVX = 1 | AVX2 = 1 |", {"avx", "avx2", "avx512f", "avx512_vnni"})
    ['AVX512', 'AVX512_VNNI']
    """
    used = llama_features(system_info)
    return [name for flag, name in LLAMA_FEATURES.items() if flag in flags and name not in used]
