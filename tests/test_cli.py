"""The command line: each bad input gets one sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import needs_llama_sdist, tiny_run
from quantscope import backends
from quantscope.cli import app
from quantscope.config import Gguf, names, parse_config
from quantscope.report.terminal import generations_view
from quantscope.results import Result

cli = CliRunner()


def _run(*args: str):
    result = cli.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def _tiny_args(model_dir, text, tmp_path, configs="bf16"):
    return tiny_run(model_dir, text, configs, "--store", str(tmp_path / "r.sqlite"))


def _user_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split())  # rich may wrap long lines
    assert result.output.count("error:") == 1


def test_missing_model_path(tmp_path):
    _user_error(_run("run", "--model", str(tmp_path / "nope")), "No such model file or folder")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    _user_error(_run("run", "--model", str(tmp_path)), "has no model weights")


def test_folder_without_config(tmp_path):
    _user_error(_run("run", "--model", str(tmp_path)), "has no config.json")


def test_pickle_only_folder_needs_permission(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    _user_error(_run("run", "--model", str(tmp_path)), "--allow-pickle")


def test_unknown_config_suggests_the_nearest():
    _user_error(_run("run", "--configs", "bf16,bnb-nf5"), "Did you mean 'bnb-nf4'?")


def test_hub_id_without_network():
    _user_error(
        _run("run", "--model", "someone/some-model-that-is-not-cached"),
        "Cannot reach the Hugging Face hub",
    )


def test_hub_id_that_does_not_exist(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(*args, **kwargs):
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # no HTTP response here
        Exception.__init__(err, "404 Client Error")
        raise err

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    _user_error(_run("run", "--model", "nobody/nothing"), "does not exist on the Hugging Face hub")


def test_cuda_requested_without_gpu():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _user_error(_run("run", "--device", "cuda"), "sees no CUDA GPU")


def test_text_too_short(tiny_model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    args = _tiny_args(tiny_model_dir, short, tmp_path)
    _user_error(_run(*args), "fewer than one window")


def test_bad_stride(tiny_model_dir, tiny_text, tmp_path):
    args = [*_tiny_args(tiny_model_dir, tiny_text, tmp_path), "--stride", "64"]
    _user_error(_run(*args), "--stride must be at least 1 and below --context")


def test_run_prints_table_writes_json_and_skips_unavailable(
    tiny_model_dir, tiny_text, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        backends.get(parse_config("bnb-fp4")), "available", lambda m, d: "no FP4 here."
    )
    out = tmp_path / "out.json"
    args = [*_tiny_args(tiny_model_dir, tiny_text, tmp_path, "bf16,bnb-fp4"), "--json", str(out)]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "skipped bnb-fp4: no FP4 here." in " ".join(result.output.split())
    data = json.loads(out.read_text())
    assert data["settings"]["context"] == 64 and data["settings"]["tokens_scored"] == 300
    assert data["provenance"]["model_folder"] == str(tiny_model_dir)
    statuses = {c["config"]: c["status"] for c in data["configs"]}
    assert statuses == {"bf16": "measured", "bnb-fp4": "skipped"}
    bf16 = data["configs"][0]["result"]["metrics"]
    assert bf16["kl_mean"] > 0 and bf16["kl_se"] > 0
    # the run ends with its answer at the default margin and the command for the code
    said = " ".join(result.output.split())
    assert "At margin ppl=1% (TOST, alpha 0.05):" in said
    run_id = json.loads(out.read_text())["run_id"]
    assert f"quantscope recommend {run_id} --store {tmp_path / 'r.sqlite'}" in said


def test_methods_fits_80_columns_without_cutting_a_word():
    out = cli.invoke(app, ["methods"], env={"COLUMNS": "80"}).output
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert "│ llmc-w4a16     │" in out  # config names whole, on their own line


def test_methods_and_doctor_list_every_config():
    methods = _run("methods")
    assert methods.exit_code == 0
    for name in names():
        assert name in methods.output
    doctor = _run("doctor")
    assert doctor.exit_code == 0
    assert "bitsandbytes" in doctor.output and "cache" in doctor.output


def test_model_text_is_never_read_as_markup():
    text = "[bold red]boom[/] <script>alert(1)</script>"
    result = Result("k", "bf16", "m", "d", "s", {}, [{"prompt": "p", "text": text, "ids": []}])
    console = Console(record=True, width=200)
    console.print(generations_view([result]))
    assert text in console.export_text()


def test_two_texts_print_a_per_text_table(tiny_model_dir, tiny_text, tmp_path):
    second = tmp_path / "second.jsonl"
    lines = [json.dumps({"body": tiny_text.read_text()[i : i + 500]}) for i in range(0, 4000, 500)]
    second.write_text("\n".join(lines))
    args = _tiny_args(tiny_model_dir, tiny_text, tmp_path, "bf16")
    out = tmp_path / "out.json"
    result = _run(*args, "--text", str(second), "--field", "body", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "per text" in result.output
    per_source = json.loads(out.read_text())["configs"][0]["result"]["per_source"]
    assert list(per_source) == [str(tiny_text.resolve()), str(second.resolve())]


def test_tables_fit_an_80_column_terminal_without_cropping():
    from quantscope.report.terminal import ACCURACY, EFFICIENCY, results_tables
    from quantscope.results import Outcome, RunReport, Status

    metrics = {  # the widest values the bundled model's demo gives
        "weight_mb": 513.13,
        "bits_per_weight": 32.0,
        "linear_bits_per_weight": 32.0,
        "ppl": 19.343,
        "ppl_se": 2.231,
        "dppl_pct": 53.4,
        "dppl_pct_se": 3.11,
        "kl_mean": 0.00109,
        "kl_se": 1.81e-05,
        "kl_p99": 0.00518,
        "top1_agree": 0.9741,
        "top1_agree_se": 0.0033,
        "dp_rms": 0.194,
        "prefill_tps": 1517.0,
        "decode_tps": 28.2,
        "load_s": 1.66,
    }
    names = ("bnb-nf4[double_quant=true]", "llmc-w4a16[group=64]+engine=vllm")
    results = [Result("k", name, "m", "d", "s", metrics) for name in names]
    report = RunReport("run", [Outcome(r.config, Status.MEASURED, "", r) for r in results], {}, {})
    for width in (80, 120, 200):
        console = Console(record=True, width=width)
        for table in results_tables(report, width):
            console.print(table)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "…" not in text  # nothing cropped
        assert all(f"│ {name} " in text for name in names)  # each name whole, on one line
        assert all(
            metric.short in text or metric.header in text for metric in ACCURACY + EFFICIENCY
        )
    for metric in ACCURACY + EFFICIENCY:
        assert metric.short in text


def test_runs_show_compare_and_report_from_the_store(tiny_model_dir, tiny_text, tmp_path):
    store = str(tmp_path / "r.sqlite")
    _run(*_tiny_args(tiny_model_dir, tiny_text, tmp_path, "fp32,bf16"))
    _run(*_tiny_args(tiny_model_dir, tiny_text, tmp_path, "bf16"), "--seed", "1")
    listed = json.loads(_run("runs", "--store", store, "--format", "json").output)
    assert len(listed) == 2 and listed[0]["configs"] == 1  # newest first
    newest, oldest = listed[0]["run"], listed[1]["run"]
    table = cli.invoke(app, ["runs", "--store", store], env={"COLUMNS": "80"}).output
    assert newest in table and oldest in table  # each id on one line, whole: it is copied
    csv_out = _run("show", oldest, "--store", store, "--format", "csv").output
    assert csv_out.splitlines()[0].startswith("config,status,weight_mb")
    assert [line.split(",")[0] for line in csv_out.splitlines()[1:]] == ["fp32", "bf16"]
    compared = json.loads(
        _run("compare", oldest, newest, "--store", store, "--format", "json").output
    )
    bf16 = next(r for r in compared if r["config"] == "bf16")
    assert bf16["kl_mean_diff"] == pytest.approx(bf16["kl_mean_b"] - bf16["kl_mean_a"])
    fp32 = next(r for r in compared if r["config"] == "fp32")
    assert fp32["kl_mean_b"] is None  # only in run A
    html = tmp_path / "r.html"
    assert _run("report", "latest", "--store", store, "-o", str(html)).exit_code == 0
    assert "<!DOCTYPE html>" in html.read_text()
    _user_error(_run("show", "nope", "--store", store), "No run 'nope'")
    _user_error(_run("show", oldest, "--store", store, "--format", "xml"), "--format must be")
    _user_error(_run("runs", "--store", str(tmp_path / "none.sqlite")), "No results database")


def test_sensitivity_and_search_commands(tiny_model_dir, tiny_text, tmp_path):
    """The commands print the ranking and the front, write HTML and JSON, save the config
    file, and an unmeetable budget exits 1 with the closest point."""
    common = [
        "--model",
        str(tiny_model_dir),
        "--config",
        "bnb-nf4",
        "--calib-tokens",
        "300",
        "--calib-context",
        "64",
        "--calib-stride",
        "48",
        "--store",
        str(tmp_path / "r.sqlite"),
    ]
    found = _run(
        "sensitivity",
        *common,
        "--json",
        str(tmp_path / "s.json"),
        "--report",
        str(tmp_path / "s.html"),
    )
    assert found.exit_code == 0, found.output
    assert "Sensitivity to bnb-nf4" in found.output and "layers.0" in found.output
    study = json.loads((tmp_path / "s.json").read_text())
    assert len(study["units"]) == 2 and "Plotly.newPlot" in (tmp_path / "s.html").read_text()
    done = _run(
        "search",
        *common,
        "--fallback",
        "bf16",
        "--max-ppl-increase",
        "1000%",
        "--text",
        str(tiny_text),
        "--tokens",
        "300",
        "--context",
        "64",
        "--stride",
        "32",
        "--save",
        str(tmp_path / "m.json"),
    )
    assert done.exit_code == 0, done.output
    assert "m.json" in done.output and json.loads((tmp_path / "m.json").read_text())["config"]
    missed = _run(
        "search",
        *common,
        "--max-kl",
        "1e-12",
        "--text",
        str(tiny_text),
        "--tokens",
        "300",
        "--context",
        "64",
        "--stride",
        "32",
    )
    assert missed.exit_code == 1 and "Closest" in missed.output
    _user_error(_run("search", *common), "Give an accuracy budget")
    _user_error(_run("search", *common, "--max-ppl-increase", "two"), "percentage")


def test_recover_command(tiny_model_dir, tiny_text, tmp_path):
    args = [
        "recover",
        "--model",
        str(tiny_model_dir),
        "--config",
        "bnb-nf4",
        "--steps",
        "3",
        "--rank",
        "4",
        "--seq-len",
        "64",
        "--text",
        str(tiny_text),
        "--tokens",
        "300",
        "--context",
        "64",
        "--stride",
        "32",
        "--out",
        str(tmp_path / "ad"),
        "--store",
        str(tmp_path / "r.sqlite"),
        "--json",
        str(tmp_path / "r.json"),
    ]
    done = _run(*args)
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "of the KL gap" in text and "Trained 3 steps" in text and "Reuse it" in text
    body = json.loads((tmp_path / "r.json").read_text())
    assert body["training"]["steps"] == 3 and (tmp_path / "ad" / "adapter_config.json").is_file()
    _user_error(_run(*args, "--kl-weight", "2"), "--kl-weight must be between 0 and 1")
    _user_error(_run("run", "--configs", f"bnb-nf4+lora={tmp_path}"), "not a LoRA adapter folder")


def test_gguf_converter_fetches_llama_cpp_s_script_and_doctor_finds_it(tmp_path, monkeypatch):
    """The converter of the installed llama-cpp-python, fetched by pip from its source package
    (with no index: from the folder the Makefile downloaded it to, so no network here)."""
    if backends.get(Gguf()).available(Gguf(), "cpu"):
        pytest.skip("llama-cpp-python is not installed")
    needs_llama_sdist()
    target = tmp_path / "llama.cpp"
    fetched = _run("gguf-converter", "--into", str(target))
    assert fetched.exit_code == 0, fetched.output
    assert (target / "convert_hf_to_gguf.py").is_file()
    assert (target / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert (target / "conversion").is_dir()
    monkeypatch.setenv("QUANTSCOPE_LLAMA_CPP", str(target))
    doctor = " ".join(_run("doctor").output.split())
    assert "HF → GGUF converter" in doctor and "gguf-converter' to fetch" not in doctor
