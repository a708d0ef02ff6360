"""Tasks: flips and McNemar by hand, identical configs, the lm-eval adapter's contract."""

from __future__ import annotations

import json
import math

import pytest

from quantscope import backends, runner
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config, parse_config_list
from quantscope.errors import UserError
from quantscope.metrics.tasks import compare_answers, flips, mcnemar_p
from quantscope.models import load_tokenizer, resolve
from quantscope.tasks import resolve as resolve_task

MC = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5"], "answer": 1},
    {"question": "Sky colour?", "choices": ["green", "blue"], "answer": 1},
    {"question": "Python keyword for functions?", "choices": ["def", "func", "fn"], "answer": 0},
    {"question": "Capital of France?", "choices": ["Berlin", "Paris", "Rome"], "answer": 1},
]


@pytest.fixture
def mc_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in MC))
    return path


def test_flips_and_mcnemar_against_hand_computed_cases():
    base = [True] * 10 + [False] * 5 + [True] * 5
    quant = [True] * 10 + [True, True, False, False, False] + [False] * 5
    assert flips(base, quant) == {
        "correct_to_wrong": 5,
        "wrong_to_correct": 2,
        "changed": 7,
        "n": 20,
    }
    # b=5, c=2: p = 2 · P(X ≤ 2), X ~ Bin(7, 1/2) = 2 · (1 + 7 + 21) / 128
    assert mcnemar_p(5, 2) == pytest.approx(2 * 29 / 128)
    assert mcnemar_p(2, 5) == mcnemar_p(5, 2)  # symmetric
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_p(0, 0) == 1.0
    out = compare_answers(base, quant)
    assert out["accuracy"] == pytest.approx(12 / 20) and out["base_accuracy"] == 0.75
    assert out["delta"] == pytest.approx(-0.15)
    assert out["c2w_items"] == [15, 16, 17, 18, 19] and out["w2c_items"] == [10, 11]
    assert out["accuracy_se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 19))


def test_task_files_explain_bad_input(tmp_path):
    with pytest.raises(UserError, match="No such task file"):
        resolve_task(str(tmp_path / "nope.jsonl"), 10)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(UserError, match="answer must be the index"):
        resolve_task(str(bad), 10)
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(UserError, match="question, choices and answer"):
        resolve_task(str(bad), 10)


def test_cloze_items_come_from_the_evaluation_text_only():
    from quantscope.data import bundled_text

    task = resolve_task("cloze", 50)
    assert len(task.items) == 50
    flat_eval = " ".join(bundled_text("eval").split())
    for item in task.items:  # each item is a whole passage of the evaluation part
        word = item.choices[0].strip()
        assert word.isalpha() and len(item.context.split()) >= 39
        assert item.context + " " + word in flat_eval


def _tiny_spec(model_dir, text, store, tasks, configs="fp32,bnb-nf4"):
    return RunSpec(
        model=model_spec(str(model_dir)),
        configs=parse_config_list(configs),
        data=DataSpec((str(text),), tokens=200, context=64, stride=32),
        prompts=("Hi",),
        max_new_tokens=2,
        speed_reps=1,
        ref_topk=16,
        store_path=str(store),
        tasks=tasks,
        task_limit=30,
    )


def test_identical_config_has_zero_flips_and_quantized_results_are_paired(
    tiny_model_dir, tiny_text, tmp_path, mc_file
):
    spec = _tiny_spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", ("cloze", str(mc_file)))
    report = runner.run(spec)
    fp32, nf4 = (o.result.tasks for o in report.outcomes)
    assert set(fp32) == {"cloze:acc", "mc.jsonl:acc", "mc.jsonl:acc_norm"}
    for summary in fp32.values():  # the baseline itself: nothing can flip
        assert summary["correct_to_wrong"] == summary["wrong_to_correct"] == 0
        assert summary["mcnemar_p"] == 1.0
        assert summary["accuracy"] == summary["base_accuracy"]
    for name, summary in nf4.items():
        assert summary["n"] == fp32[name]["n"]
        change = (summary["wrong_to_correct"] - summary["correct_to_wrong"]) / summary["n"]
        assert summary["delta"] == pytest.approx(change)  # accuracy change = net flips
        assert len(summary["flipped_examples"]) == min(
            10, summary["correct_to_wrong"] + summary["wrong_to_correct"]
        )


def _hf_requests():
    from lm_eval.api.instance import Instance

    pairs = [
        ("The capital of France is", " Paris"),
        ("def f(x):", "\n    return x"),
        ("", "Hello world"),
        ("One two three ", "four"),
    ]
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
        for i, p in enumerate(pairs)
    ]


def test_lm_eval_adapter_matches_lm_eval_own_hf_model(tiny_model_dir):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    from quantscope.tasks.lmeval import make_lm

    files = resolve(model_spec(str(tiny_model_dir)))
    spec = model_spec(str(tiny_model_dir))
    fp32 = parse_config("fp32")
    loaded = backends.get(fp32).load(files, spec, fp32, "cpu")
    tokenizer = load_tokenizer(files, spec)
    ours = make_lm(loaded.model, tokenizer, batch_size=3).loglikelihood(_hf_requests())
    theirs = HFLM(
        pretrained=loaded.model, tokenizer=tokenizer, batch_size=1, device="cpu"
    ).loglikelihood(_hf_requests())
    assert len(ours) == len(theirs) == 4
    for (ll, greedy), (ll_ref, greedy_ref) in zip(ours, theirs, strict=True):
        assert ll == pytest.approx(ll_ref, abs=1e-4)
        assert greedy == greedy_ref


def test_local_lm_eval_task_file_runs_through_the_adapter(
    tiny_model_dir, tiny_text, tmp_path, mc_file
):
    pytest.importorskip("lm_eval")
    data = tmp_path / "mc_data.jsonl"
    data.write_text(mc_file.read_text())
    task = tmp_path / "tiny_mc.yaml"
    task.write_text(
        "task: quantscope_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    spec = _tiny_spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", (str(task),), "fp32,bf16")
    report = runner.run(spec)
    base, bf16 = (o.result.tasks for o in report.outcomes)
    assert set(base) == {"quantscope_tiny_mc:acc", "quantscope_tiny_mc:acc_norm"}
    assert base["quantscope_tiny_mc:acc"]["n"] == len(MC)
    assert base["quantscope_tiny_mc:acc"]["correct_to_wrong"] == 0
    # lm-eval's multiple-choice scoring equals quantscope's own for the same items
    ours = (
        runner.run(
            _tiny_spec(tiny_model_dir, tiny_text, tmp_path / "s.sqlite", (str(mc_file),), "fp32")
        )
        .outcomes[0]
        .result.tasks
    )
    assert ours["mc.jsonl:acc"]["accuracy"] == base["quantscope_tiny_mc:acc"]["accuracy"]
    assert bf16["quantscope_tiny_mc:acc"]["n"] == len(MC)


def test_unknown_task_is_refused_before_any_model_loads(tiny_text, tmp_path, monkeypatch):
    """An lm-eval task that does not exist is one sentence with the closest names, before the
    model is even looked for (it would not be found: it does not exist either)."""
    pytest.importorskip("lm_eval")
    from quantscope import models

    def never(*args, **kwargs):
        raise AssertionError("the model was looked for")

    monkeypatch.setattr(models, "resolve", never)
    spec = _tiny_spec(
        "nobody/no-such-model", tiny_text, tmp_path / "r.sqlite", ("hellaswagg",), "fp32"
    )
    with pytest.raises(UserError, match=r"Unknown task 'hellaswagg'\. Did you mean 'hellaswag'"):
        runner.run(spec)
    with pytest.raises(UserError, match="Did you mean 'cloze'"):
        resolve_task("cloz", 10)
