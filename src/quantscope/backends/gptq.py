"""GPTQ through gptqmodel (``gptq[bits=4,group=64,samples=64,seqlen=256,calib=PATH]``).

``act_order=true`` quantizes columns in order of decreasing activation size (GPTQ's
``desc_act``: a group index maps each input to its group); by default gptqmodel's
group-aware reordering is used instead, which keeps groups contiguous.

GPTQ quantizes each linear from second-order statistics of its inputs, so it needs
calibration text: ``samples`` sequences of ``seqlen`` tokens, cut one after another from
``calib`` (a text file) or else from the training part of the bundled text, which is never
evaluated on. The quantized model is saved once in the cache folder (keyed by the baseline,
the config, the calibration tokens and the gptqmodel version) with the seconds quantizing
took, so a rerun loads it and still reports what quantizing cost. ``group=0`` is one group per
row; a group size must divide the input size of every quantized linear. ``include``/``skip``
become gptqmodel's negative ``dynamic`` rules; ``lm_head`` is kept. gptqmodel is imported
only here, inside functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantscope import chaos, data, quiet
from quantscope.backends import Backend, Quantized, package_version
from quantscope.cache import cache_dir, made
from quantscope.config import Calibrated, DataSpec, DType, Gptq, ModelSpec, QuantConfig
from quantscope.errors import Unavailable, UserError
from quantscope.models import ModelFiles, linear_shapes, load_tokenizer, torch_dtype
from quantscope.provenance import digest


def calibration(
    files: ModelFiles, spec: ModelSpec, config: Calibrated
) -> tuple[list[dict[str, list[int]]], str]:
    """``samples`` consecutive sequences of ``seqlen`` token ids from the calibration text,
    as gptqmodel takes them, and a sentence naming where they came from."""

    sources = data.training_sources(DataSpec(texts=(config.calib,) if config.calib else ()))
    encode = data.encoder(load_tokenizer(files, spec))
    ids = [i for s in sources for i in encode(s.text)]
    need = config.samples * config.seqlen
    if len(ids) < need:
        raise UserError(
            f"The calibration text gives {len(ids)} tokens, fewer than samples × seqlen = "
            f"{need}; pass a longer calib= file or fewer samples."
        )
    n = config.seqlen
    rows = [ids[k * n : (k + 1) * n] for k in range(config.samples)]
    batch = [{"input_ids": row, "attention_mask": [1] * n} for row in rows]
    return batch, f"{config.samples}×{n} tokens of {sources[0].name}"


def plan(
    files: ModelFiles, spec: ModelSpec, config: Gptq
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The linears to quantize and gptqmodel's ``dynamic`` rules that keep the others, after
    checking the group size divides every chosen linear's input size."""
    shapes = linear_shapes(files, spec)
    chosen = config.select(list(shapes))
    if not chosen:
        raise UserError(f"{config.name} selects no linear layer; loosen include= or skip=.")
    bad = [n for n in chosen if config.group and shapes[n][1] % config.group]
    if bad:
        sizes = sorted({shapes[n][1] for n in chosen})
        fits = [g for g in (32, 64, 128, 256) if all(s % g == 0 for s in sizes)]
        hint = f"group={max(fits)}" if fits else "group=0 (one group per row)"
        raise UserError(
            f"group={config.group} does not divide the input size {shapes[bad[0]][1]} of "
            f"{bad[0]} ({len(bad)} linears in all); use {hint}."
        )
    kept = [n for n in shapes if n not in chosen and n != "lm_head"]
    dynamic: dict[str, dict[str, Any]] = {f"-:^{re.escape(n)}$": {} for n in kept}
    return chosen, dynamic


def _import() -> Any:
    """gptqmodel, imported quietly (it prints a banner and environment notes on import), with
    the two CPU workers its loader pool needs at least (its own default is 1 on 2 cores)."""
    os.environ["GPTQMODEL_CPU_WORKERS"] = os.environ.get("GPTQMODEL_CPU_WORKERS") or str(
        max(2, (os.cpu_count() or 2) // 2)
    )
    with _quiet():
        import gptqmodel
        from gptqmodel.nn_modules import qlinear  # noqa: F401  (BaseQuantLinear, for load)

    return gptqmodel


def _keep_logs_in(logs: Path) -> None:
    """gptqmodel 7.6 writes a log file per quantized layer kind under ./logs of whatever the
    working folder is; send them to the cache instead."""
    import gptqmodel.looper.loop_processor as processor

    if isinstance(getattr(processor, "_PROJECT_LOG_DIR", None), Path):
        processor._PROJECT_LOG_DIR = logs


@contextlib.contextmanager
def _quiet() -> Any:
    """gptqmodel prints progress bars and tables to stdout; keep them out of ours (logged at
    debug level)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        quiet.debug("gptqmodel said:\n%s", buffer.getvalue()[-20000:])


def quantize(
    files: ModelFiles, spec: ModelSpec, config: Gptq, device: str
) -> tuple[Path, dict[str, Any]]:
    """The quantized model's folder (made now, or found in the cache) and what making it took."""
    batch, source = calibration(files, spec, config)
    base = replace(config, lora="", label="")
    key = digest(files.fingerprint, base.name, batch, package_version("gptqmodel"))
    folder = cache_dir() / "gptq" / f"{files.fingerprint}-{key}"

    def make(tmp: Path) -> dict[str, Any]:
        _chosen, dynamic = plan(files, spec, config)
        gptqmodel = _import()
        _keep_logs_in(folder.parent / "logs")
        dtype = torch_dtype(config.dtype or spec.dtype)
        quant = gptqmodel.QuantizeConfig(
            bits=config.bits,
            group_size=config.group or -1,
            sym=config.sym,
            desc_act=config.act_order,
            act_group_aware=not config.act_order,
            dynamic=dynamic or None,
            offload_to_disk=False,
        )
        with _quiet():
            model = gptqmodel.GPTQModel.load(
                str(files.folder),
                quant,
                device=device,
                dtype=dtype,
                trust_remote_code=spec.trust_remote_code,
            )
            start = time.perf_counter()
            model.quantize(batch, batch_size=4)
            seconds = time.perf_counter() - start
            model.save(str(tmp))
            chaos.point("gptq-calibration")  # calibrated and saved, not yet in place
        return {"quantize_s": seconds, "calibration": source, "device": device}

    return folder, made(folder, make)


class GptqBackend(Backend):
    name = "gptqmodel"
    package = "gptqmodel"
    extra = "gptq"

    def available(self, config: QuantConfig, device: str) -> str | None:
        if device.startswith("mps"):
            return "gptqmodel's kernels here run on CPU and CUDA, not on Apple's MPS."
        if importlib.util.find_spec("gptqmodel") is None:  # not imported: it prints a banner
            return "gptqmodel is not installed; pip install 'quantscope[gptq]'."
        return None

    def load_model(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Any, float]:
        assert isinstance(config, Gptq)
        dtype = config.dtype or spec.dtype
        if config.bits != 4 and dtype is DType.FP32:  # found with gptqmodel 7.6 on CPU
            raise UserError(
                f"gptqmodel's {config.bits}-bit kernels compute in fp16 or bf16, not fp32; "
                "add dtype=bf16 (or fp16) to the config."
            )
        folder, made_info = quantize(files, spec, config, device)
        gptqmodel = _import()
        start = time.perf_counter()
        try:
            with _quiet():
                wrapper = gptqmodel.GPTQModel.load(
                    str(folder),
                    device=device,
                    dtype=torch_dtype(dtype),
                    trust_remote_code=spec.trust_remote_code,
                )
        except NotImplementedError as err:  # no kernel for this dtype, bit width or device
            reason = f"gptqmodel has no kernel for it on {device}: {err}"
            raise Unavailable(config.name, reason) from None
        model = wrapper.model.eval()
        model.quantscope_made = made_info
        return model, time.perf_counter() - start

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        """Quantized into the cached folder: find gptqmodel's layers and their buffers."""
        kind = _import().nn_modules.qlinear.BaseQuantLinear
        modules = {n: m for n, m in model.named_modules() if isinstance(m, kind)}

        def state() -> dict[str, list[Any]]:  # packed weights, zeros, scales, group index
            return {
                n: [b for name, b in m.named_buffers(recurse=False) if name != "bias"]
                for n, m in modules.items()
            }

        made_info = model.quantscope_made
        kernels = sorted({type(m).__name__ for m in modules.values()})
        note = f"kernels {', '.join(kernels)}; calibration {made_info['calibration']}"
        quantized = {n: int(m.in_features * m.out_features) for n, m in modules.items()}
        return Quantized(quantized, state, made_s=float(made_info["quantize_s"]), note=note)


BACKEND = GptqBackend()
