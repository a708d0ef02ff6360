"""The runner end to end on a tiny model: store, resume, skip, failure isolation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from quantscope import backends, runner
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config, parse_config_list
from quantscope.store import Store


def _spec(model_dir, text, store, configs="fp32,bf16,bnb-int8", **kw) -> RunSpec:
    return RunSpec(
        model=model_spec(str(model_dir)),
        configs=parse_config_list(configs),
        data=DataSpec((str(text),), tokens=400, context=64, stride=32),
        prompts=("Hello there",),
        max_new_tokens=4,
        speed_reps=1,
        batch_size=4,
        ref_topk=32,
        store_path=str(store),
        **kw,
    )


def _printed(table) -> str:
    """A table as the terminal shows it (it must exist)."""
    from rich.console import Console

    assert table is not None
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_run_measures_stores_and_a_rerun_is_a_pure_skip(tiny_model_dir, tiny_text, tmp_path):
    spec = _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite")
    first = runner.run(spec)
    assert [o.status for o in first.outcomes] == ["measured"] * 3
    fp32, bf16, int8 = (o.result.metrics for o in first.outcomes)
    assert fp32["kl_mean"] < 1e-6 and fp32["top1_agree"] == 1.0
    assert 0 < bf16["kl_mean"] < int8["kl_mean"]
    # (the tiny model's fp32 embeddings outweigh its int8 linears, so compare linears only)
    assert fp32["weight_mb"] > bf16["weight_mb"] and fp32["weight_mb"] > int8["weight_mb"]
    assert bf16["linear_bits_per_weight"] > int8["linear_bits_per_weight"]
    assert first.settings["tokens_scored"] == 400
    assert Store(tmp_path / "r.sqlite").count() == 3

    second = runner.run(spec)
    assert [o.status for o in second.outcomes] == ["reused"] * 3
    assert [o.result for o in second.outcomes] == [o.result for o in first.outcomes]
    df = second.to_dataframe()
    assert list(df["config"]) == ["fp32", "bf16", "bnb-int8"]

    forced = runner.run(_spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", force=True))
    assert [o.status for o in forced.outcomes] == ["measured"] * 3
    # CPU runs are deterministic: re-measuring gives identical numbers, all but the timings
    timing = ("_tps", "load_s", "eval_s", "peak_")
    for old, new in zip(first.outcomes, forced.outcomes, strict=True):
        same = {k: v for k, v in old.result.metrics.items() if not any(t in k for t in timing)}
        assert same == {k: new.result.metrics[k] for k in same}, old.config
        assert len(same) > 25
        assert old.result.generations == new.result.generations


def test_changed_settings_are_measured_again(tiny_model_dir, tiny_text, tmp_path):
    store = tmp_path / "r.sqlite"
    runner.run(_spec(tiny_model_dir, tiny_text, store, configs="bf16"))
    other = _spec(tiny_model_dir, tiny_text, store, configs="bf16", seed=1)
    assert runner.run(other).outcomes[0].status == "measured"


@pytest.mark.parametrize("error", [RuntimeError, AttributeError, NotImplementedError, KeyError])
def test_a_failing_config_does_not_stop_the_others(
    tiny_model_dir, tiny_text, tmp_path, monkeypatch, error
):
    """Whatever a backend library raises fails that config only (an AttributeError from a
    backend once ended a whole run with a traceback)."""
    bnb = backends.get(parse_config("bnb-int8"))

    def broken(*args, **kwargs):
        raise error("kernel exploded")

    monkeypatch.setattr(bnb, "load", broken)
    report = runner.run(
        _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", configs="bf16,bnb-int8,fp32")
    )
    assert [o.status for o in report.outcomes] == ["measured", "failed", "measured"]
    assert "kernel exploded" in report.outcomes[1].reason
    from quantscope.quiet import debug_log_path  # the traceback is kept for whoever digs

    log = debug_log_path().read_text()
    assert "config bnb-int8 failed" in log and "Traceback" in log and "kernel exploded" in log


def test_unavailable_config_is_skipped_with_its_reason(
    tiny_model_dir, tiny_text, tmp_path, monkeypatch
):
    bnb = backends.get(parse_config("bnb-nf4"))
    monkeypatch.setattr(bnb, "available", lambda method, device: "no kernel for this CPU.")
    report = runner.run(
        _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", configs="bnb-nf4,bf16")
    )
    assert [o.status for o in report.outcomes] == ["skipped", "measured"]
    assert report.outcomes[0].reason == "no kernel for this CPU."


def test_resume_after_a_crash_keeps_finished_configs(
    tiny_model_dir, tiny_text, tmp_path, monkeypatch
):
    store = tmp_path / "r.sqlite"
    spec = _spec(tiny_model_dir, tiny_text, store, configs="bf16,fp32,bnb-int8")
    real_measure = runner.measure
    calls = []

    def crash_on_second(ctx, config, key):
        calls.append(config.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of the second config
        return real_measure(ctx, config, key)

    monkeypatch.setattr(runner, "measure", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        runner.run(spec)
    assert Store(store).count() == 1  # bf16 was committed before fp32 started

    monkeypatch.setattr(runner, "measure", real_measure)
    resumed = runner.run(spec)
    assert [o.status for o in resumed.outcomes] == ["reused", "measured", "measured"]


def test_reference_is_cached_on_disk_and_reused(tiny_model_dir, tiny_text, tmp_path, monkeypatch):
    runner.run(_spec(tiny_model_dir, tiny_text, tmp_path / "a.sqlite", configs="bf16"))
    from quantscope import evaluate

    def no_reference(*args, **kwargs):
        raise AssertionError("reference pass recomputed")

    monkeypatch.setattr(evaluate, "reference_chunks", no_reference)
    report = runner.run(_spec(tiny_model_dir, tiny_text, tmp_path / "b.sqlite", configs="bf16"))
    assert report.outcomes[0].status == "measured"


def test_result_rows_are_self_describing(tiny_model_dir, tiny_text, tmp_path):
    report = runner.run(_spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", configs="bf16"))
    result = report.outcomes[0].result
    meta = result.meta
    assert meta["model_folder"] == str(tiny_model_dir)
    assert meta["settings"]["context"] == 64 and meta["settings"]["stride"] == 32
    assert meta["settings"]["seed"] == 0
    assert "torch" in meta["settings"]["versions"]
    assert meta["hardware"]["device"] == "cpu"
    assert result.generations[0]["prompt"] == "Hello there"
    assert "first_diff" in result.generations[0]
    data = report.to_dict()
    assert data["provenance"]["model_fingerprint"] == result.model_fingerprint


def test_several_texts_give_per_source_rows_and_a_token_weighted_mean(
    tiny_model_dir, tiny_text, tmp_path
):
    from quantscope.data import bundled_text

    second = tmp_path / "second.txt"
    second.write_text(bundled_text("train")[:6000])
    spec = _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", configs="bnb-int8")
    data = DataSpec((str(tiny_text), str(second)), tokens=300, context=64, stride=32)
    spec = RunSpec(**{**spec.__dict__, "data": data})
    result = runner.run(spec).outcomes[0].result
    parts = result.per_source
    assert list(parts) == [str(tiny_text.resolve()), str(second.resolve())]
    assert [p["tokens"] for p in parts.values()] == [300, 300]
    # The run's row is the token-weighted mean of its sources (equal weights here).
    for key in ("kl_mean", "top1_agree", "dp_mean"):
        weighted = sum(p[key] * p["tokens"] for p in parts.values()) / 600
        assert result.metrics[key] == pytest.approx(weighted)
    base = sum(np.log(p["base_ppl"]) * p["tokens"] for p in parts.values()) / 600
    assert np.log(result.metrics["base_ppl"]) == pytest.approx(base)


def test_bos_prefix_scores_the_first_text_token(tiny_model_dir, tiny_text, tmp_path):
    plain = _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", configs="bf16")
    data = DataSpec((str(tiny_text),), bos=True, tokens=400, context=64, stride=32)
    with_bos = RunSpec(**{**plain.__dict__, "data": data})
    a = runner.prepare(plain, runner.LogEvents())
    b = runner.prepare(with_bos, runner.LogEvents())
    assert a.settings["bos"] is False  # this tokenizer adds no BOS by itself
    assert b.settings["bos"] is True
    eos = b.tokenizer.eos_token_id  # no BOS token: EOS stands in, as in lm-evaluation-harness
    assert b.windows.ids[0, 0] == eos and b.windows.ids[0, 1] == a.windows.ids[0, 0]
    assert a.windows.fingerprint != b.windows.fingerprint
    assert b.windows.n_scored == a.windows.n_scored == 400


def test_accuracy_by_position_is_stored_and_shown(tiny_model_dir, tiny_text, tmp_path):
    """A run whose windows span two position buckets keeps each config's metrics per bucket
    in its stored result, and ``show`` prints them; a run within one bucket has none."""

    from quantscope.report import terminal

    store = tmp_path / "r.sqlite"
    data = DataSpec((str(tiny_text),), tokens=1200, context=256, stride=250)
    spec = replace(_spec(tiny_model_dir, tiny_text, store, configs="fp32,bnb-int8"), data=data)
    report = runner.run(spec)
    result = report.outcomes[1].result
    assert result is not None and list(result.by_position) == ["0-128", "128-256"]
    stored = Store(store).get(result.key)
    assert stored is not None and stored.by_position == result.by_position
    assert sum(p["tokens"] for p in result.by_position.values()) == result.metrics["tokens"]
    text = _printed(terminal.positions_table(report))
    assert "128-256" in text and "bnb-int8" in text
    small = runner.run(_spec(tiny_model_dir, tiny_text, tmp_path / "s.sqlite", configs="fp32"))
    assert small.outcomes[0].result.by_position == {}  # context 64: one bucket
    assert terminal.positions_table(small) is None


def test_a_kv_config_is_measured_at_depth_stored_and_shown(tiny_model_dir, tiny_text, tmp_path):
    """``fp32+kv=quanto-int2`` runs through its cache (KL far above the plain config's 0),
    keys its result apart from ``fp32``, and stores the cache's bytes and speeds at each
    requested depth (bytes growing with depth, smaller than the unquantized cache's), which
    ``show`` prints and the report plots."""

    from quantscope.report import figures, terminal

    store = tmp_path / "r.sqlite"
    configs = "fp32,fp32+kv=dynamic,fp32+kv=quanto-int2[chunk=16,group=32]"  # 32 | heads × dim
    spec = replace(_spec(tiny_model_dir, tiny_text, store, configs=configs), depths=(0, 64, 256))
    report = runner.run(spec)
    plain, full, int2 = (o.result for o in report.outcomes)
    assert plain is not None and full is not None and int2 is not None
    assert len({plain.key, full.key, int2.key}) == 3
    assert full.metrics["kl_mean"] < 1e-5 < 0.01 < int2.metrics["kl_mean"]
    assert int2.meta["config"] == "fp32+kv=quanto-int2[chunk=16,group=32]"
    for result in (plain, full, int2):  # --depths given: every config, kv or not
        assert [k for k in result.metrics if k.startswith("kv_bytes@")] == [
            "kv_bytes@0",
            "kv_bytes@64",
            "kv_bytes@256",
        ]
    assert 0 < int2.metrics["kv_bytes@64"] < int2.metrics["kv_bytes@256"]
    assert int2.metrics["kv_bytes@256"] == int2.metrics["kv_bytes_pred@256"]  # residual and all
    assert int2.metrics["kv_bytes@256"] < 0.6 * full.metrics["kv_bytes@256"]  # 112 of 256 in fp32
    assert Store(store).get(int2.key).metrics["kv_bytes@256"] == int2.metrics["kv_bytes@256"]
    text = _printed(terminal.depth_table(report))
    assert "quanto-int2" in text and "256" in text
    assert "memory_vs_context" in figures.run_figures(report.results)


def test_a_position_table_with_one_estimable_bucket_is_not_printed():
    """The default run's first bucket holds the first window's tokens alone (no se): with one
    bucket left that has two windows, there is nothing to compare and no table."""
    from quantscope.report import terminal
    from quantscope.results import Outcome, Result, RunReport, Status

    def report(first_windows: int):
        base = {"tokens": 127.0, "ppl": 30.0, "kl_mean": 0.001}
        parts = {"0-128": {**base, "windows": first_windows}, "128-512": {**base, "windows": 16}}
        result = Result("k", "bf16", "m", "d", "s", {"kl_mean": 0.001}, by_position=parts)
        return RunReport("r", [Outcome("bf16", Status.MEASURED, "", result)], {}, {})

    assert terminal.positions_table(report(1)) is None
    assert terminal.positions_table(report(2)) is not None
