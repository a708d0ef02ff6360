"""The hardware side: overflow caught, never averaged in; dtype support by device capability;
placement (device_map, max_memory, disk offload) of a baseline bigger than its device."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_model
from quantscope import runner
from quantscope.cli import app
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list

cli = CliRunner()


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory):
    """A tiny Llama whose first MLP writes values of about 3e5 into the residual stream.

    Its down projection is scaled by 1e5: the gated activations are about 1.5 (0.2-sd weights
    over 64 inputs), so each output sums 128 of them times weights of sd 2e4 — about 3e5,
    beyond float16's largest finite value (65,504): the fp16 forward pass makes inf, and the
    next RMSNorm (inf / inf) NaN. bfloat16 has
    float32's exponent range (to 3.4e38): it and fp32 stay finite; RMSNorm then scales the
    large stream back down, so the model still predicts."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("overflow"))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1e5)
    model.save_pretrained(folder)
    return folder


def test_fp16_overflow_is_flagged_and_never_averaged(overflowing_model, tiny_text, tmp_path):
    spec = RunSpec(
        model=model_spec(str(overflowing_model)),
        configs=parse_config_list("bf16,fp16,fp32"),
        data=DataSpec((str(tiny_text),), tokens=300, context=64, stride=32),
        prompts=("Hello",),
        max_new_tokens=2,
        speed_reps=1,
        ref_topk=16,
        store_path=str(tmp_path / "r.sqlite"),
    )
    report = runner.run(spec)
    by = {o.config: o.result for o in report.outcomes}
    fp16, bf16, fp32 = by["fp16"], by["bf16"], by["fp32"]
    assert fp16 is not None and bf16 is not None and fp32 is not None
    # fp16: every scored token's logits are NaN (the overflow is in layer 0, at every position)
    assert fp16.metrics["nonfinite_share"] == 1.0 and fp16.metrics["nonfinite_first_window"] == 0
    assert "ppl" not in fp16.metrics and "kl_mean" not in fp16.metrics  # invalid, not averaged
    assert "NaN or inf on 100.0% of scored tokens (first in window 0)" in fp16.invalid
    for fine in (bf16, fp32):
        assert not fine.invalid and math.isfinite(fine.metrics["kl_mean"])
    assert fp32.metrics["kl_mean"] == 0.0
    out = cli.invoke(app, ["show", report.run_id, "--store", str(tmp_path / "r.sqlite")])
    assert "invalid fp16: logits held NaN or inf" in " ".join(out.output.split())


CAPS = ((7, 5), (8, 0), (8, 9), (9, 0))


@pytest.mark.parametrize(
    ("config", "expected"),
    [  # the level on compute capability 7.5, 8.0, 8.9, 9.0, from the vendors' requirements
        ("bf16", ("emulated", "native", "native", "native")),  # bf16 math: Ampere (8.0)+
        ("fp16", ("native",) * 4),
        ("bnb-nf4[compute_dtype=bf16]", ("emulated", "native", "native", "native")),
        ("bnb-int8", ("native",) * 4),  # cuBLASLt int8: 7.5+
        ("quanto-fp8", ("emulated", "emulated", "native", "native")),  # fp8 math: Ada (8.9)+
        ("torchao-int4wo", ("unsupported", "native", "native", "native")),  # tinygemm: 8.0+
        ("gptq", ("emulated", "native", "native", "native")),  # Marlin: 8.0+
        ("rtn", ("emulated",) * 4),  # fake quantization everywhere
    ],
)
def test_support_by_capability(config, expected):
    from quantscope.capability import Device, support
    from quantscope.config import parse_config

    found = tuple(support(parse_config(config), Device("cuda", cap)).level for cap in CAPS)
    assert found == expected
    for cap, level in zip(CAPS, found, strict=True):
        reason = support(parse_config(config), Device("cuda", cap)).reason
        assert bool(reason) == (level != "native")  # every downgrade says why, in a sentence


def test_cpu_support_and_the_doctor_table():
    from quantscope.capability import Device, support
    from quantscope.config import parse_config

    cpu, amx = Device("cpu"), Device("cpu", bf16_cpu=True)
    assert support(parse_config("fp16"), cpu).level == "emulated"
    assert support(parse_config("bf16"), cpu).level == "emulated"
    assert support(parse_config("bf16"), amx).level == "native"
    assert support(parse_config("torchao-int4wo"), cpu).level == "unsupported"
    assert support(parse_config("bnb-int8"), Device("mps")).level == "unsupported"
    out = cli.invoke(app, ["doctor", "--capability", "7.5", "--capability", "9.0"])
    assert out.exit_code == 0, out.output
    assert "cuda 7.5" in out.output and "cuda 9.0" in out.output
    out = cli.invoke(app, ["doctor", "--capability", "ampere"])
    assert out.exit_code == 2 and "like 8.0 or 8.9" in out.output


def test_an_unsupported_config_is_refused_before_loading(
    tiny_model_dir, tiny_text, tmp_path, monkeypatch
):
    """A capability rule that says unsupported skips the config with its sentence, and the
    backend is never asked to load it."""
    from quantscope import backends, capability

    monkeypatch.setattr(capability, "this_device", lambda _d: capability.Device("mps"))
    loads = []
    real = backends.Backend.load
    monkeypatch.setattr(backends.Backend, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    spec = RunSpec(
        model=model_spec(str(tiny_model_dir)),
        configs=parse_config_list("torchao-int8wo"),
        data=DataSpec((str(tiny_text),), tokens=100, context=64, stride=32),
        prompts=("Hi",),
        max_new_tokens=2,
        speed_reps=1,
        ref_topk=16,
        store_path=str(tmp_path / "r.sqlite"),
    )
    (outcome,) = runner.run(spec).outcomes
    assert outcome.status == "skipped" and "do not run on MPS" in outcome.reason
    assert loads == []


def _placed_spec(model_dir, text, store, **placement):
    from quantscope.specs import run_spec

    return run_spec(
        str(model_dir),
        configs="fp32,bnb-int8",
        text=str(text),
        tokens=300,
        context=64,
        stride=32,
        prompts=["Hello"],
        max_new_tokens=2,
        speed_reps=1,
        ref_topk=16,
        store=store,
        **placement,
    )


def test_a_baseline_offloaded_to_disk_gives_the_same_reference(tiny_model_dir, tiny_text, tmp_path):
    """The baseline capped at 60 KiB of CPU memory (the tiny model's weights are 0.7 MB), so
    accelerate sends its layers to disk; its reference equals the in-memory one: the fp32
    config scored against it has a KL of exactly 0, and bnb-int8's numbers are the same."""
    offload = _placed_spec(
        tiny_model_dir,
        tiny_text,
        tmp_path / "a.sqlite",
        baseline_device_map="auto",
        max_memory="cpu=60KiB",
        offload_dir=tmp_path / "offload",
    )
    placed = runner.run(offload)
    assert "disk" in placed.provenance["baseline_placement"]
    by = {o.config: o.result for o in placed.outcomes}
    assert by["fp32"].metrics["kl_mean"] == 0.0 and by["fp32"].metrics["top1_agree"] == 1.0
    assert by["bnb-int8"].meta["placement"] == {"cpu": 1}  # the configs: on the device, whole
    assert by["bnb-int8"].metrics["offloaded"] == 0.0
    import os

    os.environ["QUANTSCOPE_CACHE"] = str(tmp_path / "fresh-cache")  # a new reference, in memory
    plain = runner.run(_placed_spec(tiny_model_dir, tiny_text, tmp_path / "b.sqlite"))
    assert plain.provenance["baseline_placement"] == {"cpu": 1}
    again = {o.config: o.result for o in plain.outcomes}["bnb-int8"].metrics
    assert again["kl_mean"] == pytest.approx(by["bnb-int8"].metrics["kl_mean"], abs=1e-9)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--device-map", "everywhere"], "takes auto, balanced, balanced_low_0, sequential"),
        (["--device-map", "cuda:3"], "names a GPU that does not exist here"),
        (["--max-memory", "cpu=1GiB"], "add --device-map auto"),
        (["--device-map", "auto", "--max-memory", "cpu=lots"], "DEVICE=SIZE pairs"),
        (["--baseline-device-map", "auto", "--max-memory", "gpu0=1GiB"], "DEVICE=SIZE pairs"),
    ],
)
def test_placement_errors_are_one_sentence(options, words, tmp_path):
    out = cli.invoke(app, ["run", "--store", str(tmp_path / "r.sqlite"), *options])
    assert out.exit_code == 2, out.output
    assert words in " ".join(out.output.split()) and "Traceback" not in out.output


def test_configs_capped_in_memory_go_to_disk_and_are_marked(tiny_model_dir, tiny_text, tmp_path):
    """--device-map auto with a 60 KiB cap: transformers 5 offloads to disk straight from the
    safetensors files (no --offload-dir needed); the numbers stay the baseline's own and the
    speed is marked as offloaded."""
    spec = _placed_spec(
        tiny_model_dir, tiny_text, tmp_path / "r.sqlite", device_map="auto", max_memory="cpu=60KiB"
    )
    report = runner.run(spec)
    fp32 = {o.config: o.result for o in report.outcomes}["fp32"]
    assert fp32.meta["placement"] == {"disk": 1} and fp32.metrics["offloaded"] == 1.0
    assert fp32.metrics["kl_mean"] == 0.0
    out = cli.invoke(app, ["show", report.run_id, "--store", str(tmp_path / "r.sqlite")])
    assert "speed measured with layers offloaded (disk 1)" in " ".join(out.output.split())


def test_layers_that_fit_nowhere_name_the_fix(tiny_model_dir, monkeypatch):
    """Where accelerate has nowhere to put some layers (a pickle checkpoint without an offload
    folder), its ValueError becomes one sentence naming --offload-dir."""
    from transformers import AutoModelForCausalLM

    from quantscope import backends, models
    from quantscope.config import parse_placement
    from quantscope.errors import UserError

    def refuse(*_a, **_k):  # transformers' own words for this case
        raise ValueError(
            "The current `device_map` had weights offloaded to the disk. Please "
            "provide an `offload_folder` for them."
        )

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    spec = model_spec(str(tiny_model_dir))
    spec = dataclasses.replace(spec, placement=parse_placement("auto", "cpu=1MiB", None))
    with pytest.raises(UserError, match="pass --offload-dir DIR so they can wait on disk"):
        backends.from_pretrained(models.resolve(spec), spec, "cpu")


def test_gpu_check_table_and_its_cpu_side():
    """``make gpu-check``'s script: every backend has a config in its list (each parses), its
    table is built from a run's outcomes, and without CUDA it says so and exits 1."""
    import importlib.util
    from pathlib import Path

    from quantscope.config import names, parse_config_list
    from quantscope.results import Outcome, Result, RunReport, Status

    path = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"
    loader = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(gpu_check)
    configs = parse_config_list(",".join(gpu_check.CONFIGS))
    backends = {type(c).BACKEND for c in configs}
    every = {type(c).BACKEND for c in parse_config_list(",".join(names()))}
    # rtn: no GPU kernel at all; checkpoint: needs a folder — llmc's configs load theirs
    # through it, so its CUDA path runs there
    assert {c.engine for c in configs} == {"", "vllm"}  # every serving engine too
    assert backends == every - {
        "quantscope.backends.rtn:BACKEND",
        "quantscope.backends.checkpoint:BACKEND",
    }
    metrics = {
        "weight_mb": 100.0,
        "peak_gpu_mb": 812.0,
        "kl_mean": 0.0123,
        "dppl_pct": 1.5,
        "decode_tps": 41.0,
    }
    report = RunReport(
        "r",
        [
            Outcome("bnb-nf4", Status.MEASURED, "", Result("k", "bnb-nf4", "m", "d", "s", metrics)),
            Outcome("torchao-int4wo", Status.SKIPPED, "needs CUDA"),
        ],
        {},
        {},
    )
    text = gpu_check.table(gpu_check.rows(report, {"bnb-nf4": "native"}))
    assert "| bnb-nf4 | measured | native | 100.0 | 812 | 0.0123 | +1.50 | 41.0 |  |" in text
    assert "| torchao-int4wo | skipped | ? | – | – | – | – | – | needs CUDA |" in text
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 1


def test_doctor_says_amx_is_left_out_on_purpose_and_advises_only_real_gaps(monkeypatch):
    """The llama.cpp build leaves AMX out on purpose (it crashes on virtualized Xeons): doctor
    says so instead of advising a rebuild for it; a feature really missing is still said."""
    pytest.importorskip("llama_cpp")
    import llama_cpp

    from quantscope import capability
    from quantscope.cli import machine

    monkeypatch.setattr(capability, "cpu_flags", lambda: {"avx2", "avx512f", "amx_int8"})
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX2 = 1 |")
    text = machine._llama_features()
    assert "AMX left out on purpose" in text and "llama.cpp#20824" in text
    assert "this CPU also has AVX512, which this build does not use" in text
    assert "AMX_INT8, which" not in text
