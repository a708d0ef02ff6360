"""The code that loads a measured config outside quantscope, the way quantscope loaded it:
the same library calls with the same fields, so the deployed model computes what was
measured (a test executes each kind and compares its logits with quantscope's own load).

The model is referred to by what the run loaded (a hub id, or the local folder quantscope
read, such as the bundled model's safetensors copy); the linears a mixed-precision config
keeps in float are listed by name, as the run recorded them.
"""

from __future__ import annotations

import json
from typing import Any

from quantscope.config import (
    Bnb4,
    BnbInt8,
    Checkpoint,
    Gguf,
    Gptq,
    Hqq,
    Int8Scheme,
    Llmc,
    Precision,
    QuantConfig,
    Quanto,
    Rtn,
    TorchAoInt4,
    TorchAoInt8,
    TorchAoIntx,
    WeightConfig,
    parse_config,
)
from quantscope.results import Result

_TORCH_DTYPE = {"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16"}


def model_ref(result: Result) -> str:
    """What ``from_pretrained`` should be given: the hub id, else the folder the run read."""
    meta = result.meta
    if meta.get("model_kind") == "hub":
        return str(meta.get("model_origin") or meta.get("model_folder"))
    return str(meta.get("model_folder") or meta.get("model_origin"))


def _dtype(config: QuantConfig, result: Result) -> str:
    chosen = config.dtype if isinstance(config, (WeightConfig, Checkpoint)) else None
    if isinstance(config, Precision):
        chosen = config.precision
    name = chosen.value if chosen is not None else result.meta["settings"]["baseline_dtype"]
    return _TORCH_DTYPE[str(name)]


def _kept(config: QuantConfig, result: Result) -> list[str]:
    """Linears left in float: recorded by the run (lm_head always)."""
    return list(result.meta.get("kept_linears") or ["lm_head"])


def _mixed(config: QuantConfig) -> bool:
    return isinstance(config, WeightConfig) and bool(config.include or config.skip)


def _head(result: Result, config: QuantConfig, imports: list[str]) -> list[str]:
    lines = [
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        *imports,
        "",
        f"MODEL = {json.dumps(model_ref(result))}",
        'DEVICE = "cuda" if torch.cuda.is_available() else "cpu"',
        "tokenizer = AutoTokenizer.from_pretrained(MODEL)",
    ]
    return lines


def _plain_load(dtype: str, extra: str = "") -> str:
    return f"model = AutoModelForCausalLM.from_pretrained(MODEL, dtype={dtype}{extra}, device_map=DEVICE)"


def _bnb(config: BnbInt8 | Bnb4, result: Result) -> list[str]:
    import re

    skip = [re.escape(n) for n in _kept(config, result)] if _mixed(config) else None
    skip_arg = f", llm_int8_skip_modules={skip!r}" if skip is not None else ""
    if isinstance(config, BnbInt8):
        fields = f"load_in_8bit=True, llm_int8_threshold={config.threshold!r}{skip_arg}"
    else:
        fields = (
            f"load_in_4bit=True, bnb_4bit_quant_type={config.quant_type.value!r}, "
            f"bnb_4bit_use_double_quant={config.double_quant!r}, "
            f"bnb_4bit_compute_dtype={_TORCH_DTYPE[config.compute_dtype.value]}{skip_arg}"
        )
    return [
        *_head(result, config, ["from transformers import BitsAndBytesConfig"]),
        f"quantization_config = BitsAndBytesConfig({fields})",
        _plain_load(_dtype(config, result), ", quantization_config=quantization_config"),
    ]


def _keep_lines(config: QuantConfig, result: Result) -> list[str]:
    return [f"KEEP = {sorted(_kept(config, result))!r}  # linears left in float"]


def _hqq(config: Hqq, result: Result) -> list[str]:
    group = config.group or None
    return [
        *_head(result, config, ["from hqq.core.quantize import BaseQuantizeConfig, HQQLinear"]),
        _plain_load(_dtype(config, result)),
        *_keep_lines(config, result),
        f"quant = BaseQuantizeConfig(nbits={config.bits}, group_size={group!r})",
        "# hqq's own layers (transformers 5's HqqConfig is not implemented)",
        "for name, module in list(model.named_modules()):",
        "    if isinstance(module, torch.nn.Linear) and name not in KEEP:",
        '        parent, _, attr = name.rpartition(".")',
        "        layer = HQQLinear(module, quant, compute_dtype=module.weight.dtype, device=DEVICE)",
        "        setattr(model.get_submodule(parent), attr, layer)",
    ]


def _quanto(config: Quanto, result: Result) -> list[str]:
    qtype = f"q{config.weights.value}"
    return [
        *_head(result, config, ["import optimum.quanto as quanto"]),
        _plain_load(_dtype(config, result)),
        *_keep_lines(config, result),
        f"quanto.quantize(model, weights=quanto.{qtype}, exclude=KEEP)",
        "quanto.freeze(model)",
    ]


def _torchao(config: TorchAoInt8 | TorchAoInt4 | TorchAoIntx, result: Result) -> list[str]:
    if isinstance(config, TorchAoInt8):
        name = (
            "Int8DynamicActivationInt8WeightConfig"
            if config.scheme is Int8Scheme.DYNAMIC
            else "Int8WeightOnlyConfig"
        )
        imports, make = [f"from torchao.quantization import quantize_, {name}"], f"{name}()"
    elif isinstance(config, TorchAoInt4):
        imports = ["from torchao.quantization import quantize_, Int4WeightOnlyConfig"]
        make = f"Int4WeightOnlyConfig(group_size={config.group or 128})"
    else:
        gran = f"PerGroup({config.group})" if config.group else "PerAxis(0)"
        imports = [
            "from torchao.quantization import quantize_, IntxWeightOnlyConfig",
            "from torchao.quantization.granularity import PerAxis, PerGroup",
        ]
        make = f"IntxWeightOnlyConfig(weight_dtype=torch.int{config.bits}, granularity={gran})"
    return [
        *_head(result, config, imports),
        _plain_load(_dtype(config, result)),
        *_keep_lines(config, result),
        f"quantize_(model, {make},",
        "          filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn not in KEEP)",
    ]


def _gptq(config: Gptq, result: Result) -> list[str]:
    calib = config.calib or "<a text file like the one you measured on>"
    return [
        "from gptqmodel import GPTQModel, QuantizeConfig",
        "",
        f"MODEL = {json.dumps(model_ref(result))}",
        f"quant = QuantizeConfig(bits={config.bits}, group_size={config.group or -1}, "
        f"sym={config.sym!r}, desc_act={config.act_order!r}, "
        f"act_group_aware={not config.act_order!r})",
        "model = GPTQModel.load(MODEL, quant)",
        f"# {config.samples} calibration sequences of {config.seqlen} tokens, as measured",
        f"text = open({json.dumps(calib)}).read()",
        "ids = model.tokenizer(text)['input_ids']",
        f"batch = [{{'input_ids': ids[i:i + {config.seqlen}]}} "
        f"for i in range(0, {config.samples} * {config.seqlen}, {config.seqlen})]",
        "model.quantize(batch, batch_size=4)",
        'model.save("model-gptq")  # then: GPTQModel.load("model-gptq")',
    ]


def _gguf(config: Gguf, result: Result) -> list[str]:
    if config.file:
        return [
            "from llama_cpp import Llama",
            "",
            f"llm = Llama(model_path={json.dumps(config.file)}, n_ctx=4096)",
        ]
    out = f"model-{config.qtype}.gguf"
    meta = result.meta
    if meta.get("model_kind") in ("bundled", "gguf-file"):  # the baseline is a GGUF file
        steps = [
            f"# llama-quantize --allow-requantize {meta.get('model_origin')} {out} {config.qtype}"
        ]
    else:
        steps = [
            f"# python convert_hf_to_gguf.py {model_ref(result)} --outtype f32 --outfile model-f32.gguf",
            f"# llama-quantize model-f32.gguf {out} {config.qtype}",
        ]
    return [
        "# shell: llama.cpp's quantizer (the same call quantscope made)",
        *steps,
        "from llama_cpp import Llama",
        "",
        f'llm = Llama(model_path="{out}", n_ctx=4096, logits_all=True)',
    ]


def _rtn(config: Rtn, result: Result) -> list[str]:
    return [
        f"# rtn is quantscope's round-to-nearest yardstick ({config.bits}-bit, group "
        f"{config.group}), fake-quantized in float: no kernel deploys it.",
        f"# Deploy hqq[bits={config.bits},group={config.group}] or torchao-intx[bits="
        f"{config.bits},group={config.group}] instead, measured the same way.",
    ]


_ACTIVATIONS = [
    "# the scheme quantizes activations: compressed-tensors' own quantize-dequantize of the",
    "# inputs, as quantscope measured it (transformers computes in float; vLLM in int8/fp8)",
    "from compressed_tensors.quantization.lifecycle.forward import set_forward_quantized",
    "for module in model.modules():",
    "    scheme = getattr(module, 'quantization_scheme', None)",
    "    if scheme is not None and scheme.input_activations is not None:",
    "        set_forward_quantized(module)",
]


def _from_checkpoint(folder: str, revision: str, config: QuantConfig, result: Result) -> list[str]:
    """The checkpoint's own ``from_pretrained``; the activation lines where measured so."""
    rev = f", revision={json.dumps(revision)}" if revision else ""
    lines = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if "pack-quantized" in str(result.meta.get("library", "")):
        lines += [
            "# transformers 5.25 with compressed-tensors 0.19/0.20 cannot read packed zero points",
            "# (asymmetric int4, AWQ's): quantscope's fix, or load with transformers <= 5.17",
            "from quantscope.backends.checkpoint import patch_packed_zero_points",
            "patch_packed_zero_points()",
        ]
    lines += [
        "",
        f"CHECKPOINT = {json.dumps(folder)}",
        'DEVICE = "cuda" if torch.cuda.is_available() else "cpu"',
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(model_ref(result))})",
        f"model = AutoModelForCausalLM.from_pretrained(CHECKPOINT{rev}, "
        f"dtype={_dtype(config, result)}, device_map=DEVICE)",
    ]
    if "activations quantize-dequantized" in str(result.meta.get("library", "")):
        lines += _ACTIVATIONS
    return lines


def _checkpoint(config: Checkpoint, result: Result) -> list[str]:
    return _from_checkpoint(config.path, config.revision, config, result)


def _llmc(config: Llmc, result: Result) -> list[str]:
    from quantscope.backends.llmc import calibrated, recipe

    out = f"model-{config.method}"
    calib = config.calib or "<a text file like the one you measured on>"
    make = [
        "# 1. make it, in an environment with llmcompressor==0.14.0.1 (its pins differ from",
        "#    a newer transformers'; quantscope runs this in one of its own):",
        "# from datasets import Dataset",
        "# from llmcompressor import oneshot",
        f"# base = AutoModelForCausalLM.from_pretrained({json.dumps(model_ref(result))}, "
        "dtype=torch.float32)",
        f"# tokenizer = AutoTokenizer.from_pretrained({json.dumps(model_ref(result))})",
        f"# RECIPE = {json.dumps(recipe(config, _kept(config, result)))}",
    ]
    if calibrated(config):
        make += [
            f"# ids = tokenizer(open({json.dumps(calib)}).read())['input_ids']",
            f"# rows = [ids[i:i + {config.seqlen}] for i in range(0, {config.samples} * "
            f"{config.seqlen}, {config.seqlen})]",
            "# data = Dataset.from_dict({'input_ids': rows, "
            "'attention_mask': [[1] * len(r) for r in rows]})",
            f"# oneshot(model=base, dataset=data, recipe=RECIPE, max_seq_length={config.seqlen},",
            f"#         num_calibration_samples={config.samples}, "
            "shuffle_calibration_samples=False)",
        ]
    else:
        make.append("# oneshot(model=base, recipe=RECIPE)")
    make += [
        f'# base.save_pretrained("{out}", save_compressed=True)',
        "# 2. load it (or serve it: vllm serve " + out + "):",
    ]
    return [*make, *_from_checkpoint(out, "", config, result)]


def _precision(config: Precision, result: Result) -> list[str]:
    return [*_head(result, config, []), _plain_load(_dtype(config, result))]


_BUILDERS: list[tuple[Any, Any]] = [
    (Precision, _precision),
    ((BnbInt8, Bnb4), _bnb),
    (Hqq, _hqq),
    (Quanto, _quanto),
    ((TorchAoInt8, TorchAoInt4, TorchAoIntx), _torchao),
    (Gptq, _gptq),
    (Gguf, _gguf),
    (Rtn, _rtn),
    (Llmc, _llmc),
    (Checkpoint, _checkpoint),
]


def code(result: Result) -> str:
    """Python (and, for GGUF, shell as comments) that loads ``result``'s config; for a
    LoRA-recovered config, the peft lines that attach its adapter; for a plug-in backend, a
    comment saying none is known."""
    config = parse_config(str(result.meta.get("config", result.config)))
    lines = [f"# {result.config}: load it as quantscope measured it"]
    for kinds, build in _BUILDERS:
        if isinstance(config, kinds):
            lines += build(config, result)
            break
    else:
        lines.append(f"# no loading code is known for {type(config).__name__} (a plug-in backend)")
    if config.lora:
        lines += [
            "from peft import PeftModel",
            "",
            f"model = PeftModel.from_pretrained(model, {json.dumps(config.lora)})",
            "model.eval()",
        ]
    return "\n".join(lines) + "\n"
