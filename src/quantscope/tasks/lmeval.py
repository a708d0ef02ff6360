"""lm-evaluation-harness: any quantscope-loaded model as an lm-eval ``LM``, and lm-eval tasks.

lm-eval is an optional dependency (``pip install lm-eval``), imported only here.
:class:`QuantscopeLM` answers lm-eval's log-likelihood requests with quantscope's own scoring
(:func:`quantscope.evaluate.loglikelihoods`), so every backend config can run any
log-likelihood task; generation tasks are refused with a clear message.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from quantscope.config import did_you_mean
from quantscope.data import encoder, prefix_token
from quantscope.errors import UserError
from quantscope.evaluate import loglikelihoods
from quantscope.tasks.base import Task, encode_pair


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise UserError(
            "lm-evaluation-harness tasks need the 'lm-eval' package; pip install lm-eval."
        ) from None
    return lm_eval


def make_lm(model: Any, tokenizer: Any, batch_size: int = 8, max_length: int = 2048) -> Any:
    """An ``lm_eval.api.model.LM`` over a loaded model (any quantscope backend)."""
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class QuantscopeLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self.prefix = prefix_token(tokenizer)
            self._encode = encoder(tokenizer)

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            pairs = [encode_pair(self._encode, r.args[0], r.args[1], self.prefix) for r in requests]
            return loglikelihoods(model, pairs, batch_size, max_length)

        def loglikelihood_rolling(
            self, requests: list[Any], disable_tqdm: bool = False
        ) -> list[float]:
            totals = []
            for request in requests:
                tokens = self._encode(request.args[0])
                windows = get_rolling_token_windows(tokens, self.prefix, max_length, 1)
                pairs = [make_disjoint_window(w) for w in windows]
                totals.append(sum(ll for ll, _ in loglikelihoods(model, pairs, batch_size)))
            return totals

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            raise UserError(
                "quantscope scores tasks by log-likelihood; this lm-eval task generates text."
            )

    return QuantscopeLM()


class LmEvalTask(Task):
    """An lm-evaluation-harness task, by name or as a local ``.yaml`` task file. The name is
    checked against lm-eval's task index when the task is made, before any model loads."""

    def __init__(self, name: str, limit: int, known: tuple[str, ...] = ()) -> None:
        self.limit = limit
        self.include: str | None = None
        self.name = name
        if name.endswith((".yaml", ".yml")):
            path = Path(name)
            if not path.is_file():
                raise UserError(f"No such lm-eval task file '{name}'.")
            self.include = str(path.parent.resolve())
            self.name = _task_name(path)
        self.manager = _manager(self.include)
        if self.name not in self.manager.all_tasks:
            choices = [*known, *self.manager.all_tasks]
            raise UserError(
                f"Unknown task '{self.name}'.{did_you_mean(self.name, choices)} Tasks are "
                f"{', '.join(known)}, a multiple-choice FILE.jsonl, or an lm-evaluation-harness "
                "task name or .yaml file ('lm-eval ls tasks' lists lm-eval's)."
            )

    def evaluate(self, model: Any, tokenizer: Any, batch_size: int) -> dict[str, list[bool]]:
        lm_eval = _lm_eval()
        try:
            out = lm_eval.simple_evaluate(
                model=make_lm(model, tokenizer, batch_size),
                tasks=[self.name],
                task_manager=self.manager,
                limit=self.limit,
                log_samples=True,
            )
        except (ConnectionError, OSError) as err:
            raise UserError(f"lm-eval task '{self.name}' could not get its data: {err}") from None
        samples = sorted(out["samples"][self.name], key=lambda s: s["doc_id"])
        metrics = [m for m in ("acc", "acc_norm") if m in samples[0]]
        if not metrics:
            raise UserError(f"lm-eval task '{self.name}' reports no acc metric per item.")
        return {m: [bool(s[m]) for s in samples] for m in metrics}

    def fingerprint(self) -> str:
        return f"lm-eval:{self.name}:{self.include}:{self.limit}"


@functools.lru_cache(maxsize=8)
def _manager(include: str | None) -> Any:
    """lm-eval's task index (indexing every task takes seconds: done once per folder)."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include) if include else TaskManager()


class _TaskFileLoader(yaml.SafeLoader):
    """YAML's safe loader, reading lm-eval's ``!function`` tags as plain text (never run)."""


_TaskFileLoader.add_multi_constructor("!", lambda loader, _tag, node: None)


def _task_name(path: Path) -> str:
    """The ``task:`` name of an lm-eval task file."""
    try:
        body = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskFileLoader)
    except yaml.YAMLError as err:
        raise UserError(f"lm-eval task file '{path}' is not YAML: {err}") from None
    if not isinstance(body, dict) or not isinstance(body.get("task"), str):
        raise UserError(f"lm-eval task file '{path}' has no 'task:' name.")
    return str(body["task"])
