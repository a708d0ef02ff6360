"""LoRA recovery on tiny models: training text apart from evaluation text, gradients reach
every adapter whatever ran before, distillation lowers the KL, adapters round-trip exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantscope import backends, data, models, runner
from quantscope.backends import lora
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config
from quantscope.errors import UserError
from quantscope.evaluate.calibration import calibrate, divergence
from quantscope.recovery import RecoverSpec, recover, save_adapter, train
from quantscope.recovery.training import distill_loss, student_model, training_ids

HELD_OUT = DataSpec(tokens=600, context=64, stride=48)


def _spec(folder: Path, tmp_path: Path, **kw) -> RecoverSpec:
    values = dict(
        model=model_spec(str(folder)),
        config=parse_config("bnb-nf4"),
        rank=4,
        alpha=8,
        steps=4,
        lr=1e-2,
        seq_len=64,
        batch_size=4,
        out=str(tmp_path / "adapter"),
        store_path=str(tmp_path / "r.sqlite"),
    )
    return RecoverSpec(**values | kw)


def _load(folder: Path, config: str) -> torch.nn.Module:
    ms, qc = model_spec(str(folder)), parse_config(config)
    loaded = backends.get(qc).load(models.resolve(ms), ms, qc, "cpu")
    if qc.lora:
        loaded = lora.attach(loaded, qc.lora)
    return loaded.model


def _ids(folder: Path, sources: list[data.TextSource]) -> list[int]:
    ms = model_spec(str(folder))
    encode = data.encoder(models.load_tokenizer(models.resolve(ms), ms))
    return [t for s in sources for t in encode(s.text)]


def test_training_reads_no_passage_of_the_evaluation_text(tiny_model_dir, tmp_path):
    """Every 80-character passage of what training reads (its token stream, decoded: the tiny
    tokenizer is byte-level, so decoding is exact) is absent from the evaluation text. The
    bundled text's topics repeat paragraphs of one another; without dropping them this fails
    (measured: 4,354 shared passages)."""
    spec = _spec(tiny_model_dir, tmp_path)
    tokenizer = models.load_tokenizer(models.resolve(spec.model), spec.model)
    ids, sources = training_ids(spec, tokenizer)
    read = tokenizer.decode(ids)
    assert read == data.bundled_text("train") and len(sources) == 1
    evaluation = data.read_sources(DataSpec())[0].text
    n = 80
    passages = {evaluation[i : i + n] for i in range(len(evaluation) - n)}
    assert not [i for i in range(len(read) - n) if read[i : i + n] in passages]


def test_every_adapter_gets_a_gradient_even_after_an_inference_pass(tiny_model_dir, tmp_path):
    """Run a 4-bit model in eval mode first (bitsandbytes repacks its CPU weights then), then
    build the student: every trainable tensor gets a non-zero gradient."""
    used = _load(tiny_model_dir, "bnb-nf4")
    with torch.inference_mode():
        used(input_ids=torch.tensor([[1, 2, 3, 4]]))
    spec = _spec(tiny_model_dir, tmp_path)
    student = student_model(spec, models.resolve(spec.model), "cpu")
    ids = torch.randint(2, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    teacher = _load(tiny_model_dir, "fp32")
    with torch.no_grad():
        target = teacher(input_ids=ids).logits
    loss, _, _ = distill_loss(student(input_ids=ids).logits, target, ids, 1.0)
    loss.backward()
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 7 * 2  # A and B of 7 linears in 2 layers
    # lora_B starts at zero, so lora_A's gradient is zero at step 0 by design: check B, and A
    # after one optimiser step has moved B off zero.
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n
    )
    torch.optim.SGD(trainable.values(), lr=1.0).step()
    student.zero_grad()
    loss, _, _ = distill_loss(student(input_ids=ids).logits, target, ids, 1.0)
    loss.backward()
    zero = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert zero == []


def test_the_repack_trap_is_real_here(tiny_model_dir):
    """The control for the test above: LoRA on a model that already ran in eval mode loses
    gradients on this CPU (when bitsandbytes repacked it), so the test above can fail."""
    from peft import LoraConfig, get_peft_model

    used = _load(tiny_model_dir, "bnb-nf4")
    with torch.inference_mode():
        used(input_ids=torch.tensor([[1, 2, 3, 4]]))

    def is_packed(module: torch.nn.Module) -> bool:
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        return bool(getattr(state, "packing_format_for_cpu", False))

    packed = [m for m in used.modules() if is_packed(m)]
    if not packed:
        pytest.skip("bitsandbytes did not repack 4-bit weights on this CPU (no AVX512-BF16)")
    model = get_peft_model(used, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.train()
    ids = torch.randint(2, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids).logits.float().pow(2).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert any(g is None or g.abs().sum() == 0 for g in grads)


def test_distillation_lowers_the_kl_and_the_adapter_round_trips(tiny_model_dir, tmp_path):
    """40 steps on training text lower nf4's KL to the baseline on held-out text (measured: by
    about a third)."""
    spec = _spec(tiny_model_dir, tmp_path, steps=40)
    trained = train(spec)
    assert trained.steps == 40 and not trained.interrupted
    assert trained.kl[-1] < trained.kl[0]
    files = models.resolve(spec.model)
    ms = spec.model
    tok = models.load_tokenizer(files, ms)
    windows = data.build_windows(
        data.read_sources(DataSpec(texts=(), tokens=600, context=64, stride=48)),
        data.encoder(tok),
        HELD_OUT,
    )
    calib = calibrate(_load(tiny_model_dir, "fp32"), windows, 4)
    plain = divergence(_load(tiny_model_dir, "bnb-nf4"), calib)["kl"]
    recovered = _load(tiny_model_dir, f"bnb-nf4+lora={trained.adapter}")
    after = divergence(recovered, calib)["kl"]
    assert after < 0.85 * plain
    saved = json.loads((Path(trained.adapter) / "quantscope-recover.json").read_text())
    assert saved["steps"] == 40 and saved["config"] == "bnb-nf4"


def test_adapter_save_and_load_give_identical_logits(tiny_model_dir, tmp_path):
    """A student moved off its initial adapter, saved, and loaded again onto a fresh model gives
    the same logits to the bit (both in bitsandbytes' training path: train mode, no repack)."""
    spec = _spec(tiny_model_dir, tmp_path)
    files = models.resolve(spec.model)
    student = student_model(spec, files, "cpu")
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    save_adapter(student, Path(spec.out), spec, files, {})
    again = _load(tiny_model_dir, f"bnb-nf4+lora={spec.out}").train()
    plain = _load(tiny_model_dir, "bnb-nf4").train()
    ids = torch.tensor([list(range(2, 66))])
    with torch.no_grad():
        expected = student(input_ids=ids).logits
        assert torch.equal(again(input_ids=ids).logits, expected)
        assert not torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-3)


def test_recover_reports_recovery_and_the_config_is_reusable(tiny_model_dir, tiny_text, tmp_path):
    evaluation = DataSpec((str(tiny_text),), tokens=400, context=64, stride=32)
    spec = _spec(tiny_model_dir, tmp_path, steps=20, evaluation=evaluation)
    result = recover(spec)
    plain, new = result.configs["bnb-nf4"], result.configs["bnb-nf4+lora=adapter"]
    assert result.recovered_config == f"bnb-nf4+lora={tmp_path / 'adapter'}"
    kl, kl_se = result.kl_recovery
    assert kl == pytest.approx(1 - new["kl_mean"] / plain["kl_mean"])
    assert 0 < kl < 1 and kl_se > 0
    assert new["weight_bytes"] == plain["weight_bytes"] + result.training.trainable_params * 4
    assert result.configs["fp32"]["kl_mean"] < 1e-6
    report = runner.run(
        RunSpec(
            model=spec.model,
            configs=(parse_config(result.recovered_config),),
            data=spec.evaluation,
            store_path=spec.store_path,
        )
    )
    assert report.outcomes[0].status == "reused"


def test_adapter_inputs_explain_themselves(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        parse_config(f"bnb-nf4+lora={tmp_path}")
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="pickle"):
        lora.check_adapter(tmp_path)
    with pytest.raises(UserError, match="already has an adapter"):
        _spec(tiny_model_dir, tmp_path, config=parse_config(f"bnb-nf4+lora={tmp_path}"))
    with pytest.raises(UserError, match="kl-weight"):
        _spec(tiny_model_dir, tmp_path, kl_weight=2.0)


def test_ctrl_c_saves_the_adapter_so_far(tiny_model_dir, tmp_path):
    """Ctrl-C during training (raised here from the progress callback at step 2) stops it and
    saves the adapter trained so far, which loads as a config."""

    def interrupt(step: int, loss: float, kl: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    trained = train(_spec(tiny_model_dir, tmp_path, steps=10), on_step=interrupt)
    assert trained.interrupted and trained.steps == 2
    saved = json.loads((Path(trained.adapter) / "quantscope-recover.json").read_text())
    assert saved["interrupted"] and saved["steps"] == 2
    assert parse_config(f"bnb-nf4+lora={trained.adapter}").lora == trained.adapter
    with pytest.raises(KeyboardInterrupt):  # recover() stops there too, without evaluating
        recover(_spec(tiny_model_dir, tmp_path / "again", steps=10), on_step=interrupt)
