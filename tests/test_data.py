from pydoc_data.topics import topics

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quantscope.config import DataSpec
from quantscope.data import (
    TextSource,
    build_windows,
    bundled_text,
    make_windows,
    read_sources,
    scored_targets,
    tokenize,
)
from quantscope.errors import UserError


@pytest.mark.parametrize("n", [64, 65, 100, 257, 1000])
@pytest.mark.parametrize(("context", "stride"), [(64, 63), (64, 32), (64, 1), (64, 17), (50, 49)])
def test_every_token_scored_exactly_once(n, context, stride):
    ids = list(range(n))
    w = make_windows(ids, context, stride)
    # Recover each scored token's absolute position from its window start.
    starts = w.ids[:, 0]
    positions = np.concatenate(
        [np.arange(s + f, s + context) for s, f in zip(starts, w.score_from, strict=True)]
    )
    assert positions.tolist() == list(range(1, n))  # each of 1..n-1 once, in order
    assert w.n_scored == n - 1
    assert scored_targets(w).tolist() == list(range(1, n))
    # Every scored token outside the first window keeps at least context - stride of context.
    later = w.score_from[1:]
    assert (later >= context - stride).all()
    assert len(w.cluster_ids()) == n - 1


def test_windows_are_contiguous_slices_of_the_text():
    ids = np.random.default_rng(0).permutation(300).tolist()  # unique values: slices findable
    w = make_windows(ids, 64, 32)
    for row in w.ids.tolist():
        start = ids.index(row[0])
        assert row == ids[start : start + 64]


def test_fingerprint_depends_on_tokens_and_rule():
    a = make_windows(list(range(100)), 32, 16).fingerprint
    assert a == make_windows(list(range(100)), 32, 16).fingerprint
    assert a != make_windows(list(range(1, 101)), 32, 16).fingerprint
    assert a != make_windows(list(range(100)), 32, 8).fingerprint


def test_stride_must_leave_context():
    with pytest.raises(UserError, match="below --context"):
        make_windows(list(range(100)), 16, 16)


def test_too_short_text_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one window"):
        tokenize(TextSource("t", "a b c"), str.split, DataSpec(tokens=100, context=16, stride=8))


def test_tokens_cap_scores_exactly_that_many():
    spec = DataSpec(tokens=40, context=16, stride=8)
    ids = tokenize(TextSource("t", " ".join(map(str, range(500)))), str.split, spec)
    assert make_windows(ids, 16, 8).n_scored == 40


def test_bundled_split_is_disjoint_and_deterministic():
    evaluation, train = bundled_text("eval"), bundled_text("train")
    assert evaluation == bundled_text("eval")
    eval_topics = {t for t in topics.values() if t.strip() and t.strip() in evaluation}
    train_topics = {t for t in topics.values() if t.strip() and t.strip() in train}
    assert not eval_topics & {t for t in train_topics if len(t) > 200}
    assert 0.15 * len(evaluation) < len(train) < 0.35 * len(evaluation)


def test_read_text_errors(tmp_path):
    with pytest.raises(UserError, match="No such text file"):
        read_sources(DataSpec(texts=(str(tmp_path / "nope.txt"),)))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        read_sources(DataSpec(texts=(str(empty),)))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        read_sources(DataSpec(texts=(str(binary),)))


def test_jsonl_field_is_read_and_bad_records_explained(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first doc", "id": 1}\n\n{"text": "second doc", "id": 2}\n')
    (source,) = read_sources(DataSpec(texts=(str(path),)))
    assert source.text == "first doc\n\nsecond doc"
    with pytest.raises(UserError, match="no text field 'body'"):
        read_sources(DataSpec(texts=(str(path),), field="body"))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=r"Line 2 .* is not JSON"):
        read_sources(DataSpec(texts=(str(path),)))


def test_several_sources_are_windowed_separately(tmp_path):
    spec = DataSpec(tokens=50, context=16, stride=8)
    a = TextSource("a", " ".join(str(i) for i in range(300)))
    b = TextSource("b", " ".join(str(1000 + i) for i in range(30)))

    def encode(text: str) -> list[int]:
        return [int(word) for word in text.split()]

    w = build_windows([a, b], encode, spec)
    assert w.sources == ("a", "b")
    owner = w.token_sources()
    assert (owner == 0).sum() == 50 and (owner == 1).sum() == 29  # b has 30 tokens: 29 scored
    for row, src in zip(w.ids, w.source_of, strict=True):  # no window mixes the two texts
        assert ((row >= 1000) == (src == 1)).all()
    single = build_windows([a], encode, spec)
    assert single.fingerprint != w.fingerprint


def _write_table(path, rows, kind: str) -> None:
    import datasets

    table = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        table.to_parquet(str(path))
    else:
        table.to_json(str(path))


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_dataset_split_and_field_through_the_datasets_library(tmp_path, kind):
    pytest.importorskip("datasets")
    path = tmp_path / f"data.{kind}"
    _write_table(path, [{"text": f"row {i}", "label": i} for i in range(5)], kind)
    (source,) = read_sources(DataSpec(dataset=str(path), split="test"))
    assert source.text == "\n\n".join(f"row {i}" for i in range(5))
    assert source.name.endswith(":test:text")
    with pytest.raises(UserError, match="has no column 'body'"):
        read_sources(DataSpec(dataset=str(path), field="body"))


def test_dataset_from_a_local_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "mydata"
    datasets.Dataset.from_list([{"text": "alpha"}, {"text": "beta"}]).save_to_disk(
        str(tmp_path / "unused")
    )
    folder.mkdir()
    _write_table(folder / "test.parquet", [{"text": "alpha"}, {"text": "beta"}], "parquet")
    (source,) = read_sources(DataSpec(dataset=str(folder), split="test"))
    assert source.text == "alpha\n\nbeta"


def test_missing_dataset_is_a_user_error(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(UserError, match="Cannot load dataset"):
        read_sources(DataSpec(dataset=str(tmp_path / "nothing-here")))


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 3000),
    context=st.integers(2, 600),
    stride_share=st.floats(0.0, 1.0, exclude_max=True),
    tokens=st.integers(1, 4000),
)
def test_window_rule_holds_for_any_length_context_and_stride(n, context, stride_share, tokens):
    """Every token from position 1 on is scored exactly once, in order; outside the first
    window each keeps at least context − stride of context; ``tokens`` caps what is scored."""
    stride = 1 + int(stride_share * (context - 1))
    assume(stride < context)
    spec = DataSpec(tokens=max(tokens, 2), context=context, stride=stride)
    ids = list(range(n))[: spec.tokens + 1]
    if len(ids) < context:
        with pytest.raises(UserError):
            make_windows(ids, context, stride)
        return
    w = make_windows(ids, context, stride)
    starts = w.ids[:, 0]
    positions = np.concatenate(
        [np.arange(s + f, s + context) for s, f in zip(starts, w.score_from, strict=True)]
    )
    assert positions.tolist() == list(range(1, len(ids)))
    assert (w.score_from[1:] >= context - stride).all()
    assert w.n_scored == len(ids) - 1 == len(w.cluster_ids())
