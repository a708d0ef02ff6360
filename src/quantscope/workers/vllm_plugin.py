"""quantscope's scorer inside a vLLM server: a vLLM general plug-in, never imported by
quantscope itself (``quantscope.engines.vllm`` puts this file on the server's path with an
entry point, and names it in ``VLLM_PLUGINS``).

vLLM computes logits only where it samples, so a prompt's accuracy is out of reach unless every
position's full log-probabilities go through the API (``prompt_logprobs=-1``: hundreds of
times slower than the prefill). This plug-in wraps the model runner's forward: for a request
that carries ``vllm_xargs={"quantscope_job": PATH}``, it reads ``PATH.npz`` (the first hidden
position to score and, per scored position, the token ids the comparison needs: the true next
token, the reference's top k and its tail samples), applies vLLM's own ``compute_logits`` (the
function its ``prompt_logprobs`` use) to those positions' final hidden states as they are
computed, and writes, per prefill chunk, ``PATH.<start>.npz``: the log-probabilities at those
ids (float32, log-softmax in float32 as vLLM's sampler computes them), the argmax and whether
the row was finite. A vocabulary's worth of numbers never leaves the engine.

Only the standard library is imported at the top, so collecting this file elsewhere is safe.
"""

from __future__ import annotations

import os
from typing import Any

_ROWS = 64  # rows of logits made float32 at once (64 × a 49k vocabulary: 12.6 MB)
_JOBS: dict[str, Any] = {}  # request id -> (first scored position, ids (n, K) tensor)


def register() -> None:
    """vLLM's entry point: wrap the model runner's forward (every process that loads plug-ins
    calls this; only the one that runs the model uses it)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner._model_forward, "_quantscope", False):
        return
    forward = GPUModelRunner._model_forward

    def scored_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        positions = kwargs.get("positions")
        if positions is None and len(args) > 1:
            positions = args[1]
        try:
            _score(self, hidden, positions)
        except Exception as err:
            _fail(self, repr(err))
        return out

    scored_forward._quantscope = True  # type: ignore[attr-defined]
    GPUModelRunner._model_forward = scored_forward


def _job(runner: Any, req_id: str) -> Any:
    state = runner.requests.get(req_id)
    params = getattr(state, "sampling_params", None)
    path = ((params.extra_args if params is not None else None) or {}).get("quantscope_job")
    if not path:
        return None
    if req_id not in _JOBS:
        import numpy as np
        import torch

        with np.load(f"{path}.npz") as data:
            _JOBS[req_id] = (path, int(data["first"]), torch.from_numpy(data["ids"]).long())
    return _JOBS[req_id]


def _score(runner: Any, hidden: Any, positions: Any) -> None:
    import numpy as np
    import torch

    req_ids = list(runner.input_batch.req_ids)
    starts = runner.query_start_loc.np[: len(req_ids) + 1]
    for i, req_id in enumerate(req_ids):
        job = _job(runner, req_id)
        if job is None:
            continue
        path, first, ids = job
        a, b = int(starts[i]), int(starts[i + 1])
        p0 = int(positions[a])  # the prompt position of this chunk's first row
        lo, hi = max(first, p0), min(p0 + (b - a), first + len(ids))
        if lo < hi:
            parts = []
            with torch.no_grad():
                # vLLM's logits of these rows in one call, as its prompt_logprobs form them:
                # a bf16 matmul of fewer rows at a time can round a logit differently
                logits = runner.model.compute_logits(hidden[a + lo - p0 : a + hi - p0])
                for r in range(0, hi - lo, _ROWS):  # float32 a piece at a time: kept in cache
                    x = logits[r : r + _ROWS].float()
                    lse = torch.logsumexp(x, dim=-1, keepdim=True)
                    parts.append(
                        (
                            (
                                x.gather(-1, ids[lo - first + r : lo - first + r + len(x)]) - lse
                            ).numpy(),
                            x.max(-1).indices.numpy().astype(np.int32),
                            ~torch.isfinite(lse.squeeze(-1)).numpy(),
                        )
                    )
            lp, top, bad = (np.concatenate(p) for p in zip(*parts, strict=True))
            tmp = f"{path}.{lo}.tmp.npz"
            np.savez(tmp, lp=lp, argmax=top, bad=bad)
            os.replace(tmp, f"{path}.{lo}.npz")
        if p0 + (b - a) >= first + len(ids):
            _JOBS.pop(req_id, None)  # its last scored position is done


def _fail(runner: Any, reason: str) -> None:
    """Every job of this step learns why it was not scored (the client raises it)."""
    for req_id in list(runner.input_batch.req_ids):
        job = _JOBS.pop(req_id, None)
        if job is not None:
            with open(f"{job[0]}.error", "w", encoding="utf-8") as handle:
                handle.write(reason)
