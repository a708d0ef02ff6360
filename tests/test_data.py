from pydoc_data.topics import topics

import numpy as np
import pytest

from quantscope.config import DataSpec
from quantscope.data import bundled_text, make_windows, read_text, scored_targets, tokenize
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
        tokenize("a b c", lambda t: t.split(), DataSpec(tokens=100, context=16, stride=8))


def test_tokens_cap_scores_exactly_that_many():
    spec = DataSpec(tokens=40, context=16, stride=8)
    ids = tokenize(" ".join(map(str, range(500))), lambda t: t.split(), spec)
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
        read_text(DataSpec(text_path=str(tmp_path / "nope.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        read_text(DataSpec(text_path=str(empty)))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        read_text(DataSpec(text_path=str(binary)))
