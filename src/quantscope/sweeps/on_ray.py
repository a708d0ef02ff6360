"""The Ray executor: a sweep's evaluations as Ray tasks on a cluster.

Per model and text, the baseline's reference pass is one task (it loads the full-precision
baseline, the largest thing in the sweep, so it asks for the most memory) that writes into the
shared cache folder (``--shared-dir``: a folder every node sees, made the workers'
``QUANTSCOPE_CACHE``); each (model, config) is one task, scheduled after its reference,
asking for the memory its weights need. Tasks return results to the driver, which alone
writes the results database, each as it arrives. A task whose worker dies (killed, out of
memory) is retried ``retries`` times by Ray, then recorded as failed with its reason; what
is stored is never submitted, so a driver started again resumes. ray is imported only here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from quantscope import runner
from quantscope.cache import cache_dir
from quantscope.config import QuantConfig, RunSpec
from quantscope.context import RunContext, prepare
from quantscope.errors import UserError
from quantscope.events import Events, LogEvents
from quantscope.quiet import native_output
from quantscope.results import Outcome, RunReport, Status
from quantscope.store import Store, default_store
from quantscope.sweeps.sweep_file import Sweep

log = logging.getLogger(__name__)
WAIT_S = 5.0  # how long the driver waits for a finished task before it looks again


def _reference_task(spec: RunSpec, threads: int) -> str:
    """Worker: make (or find) the baseline's reference pass, generations and task answers,
    with the driver's intra-op thread count."""
    ctx = prepare(spec, LogEvents(), threads)
    runner.ensure_reference(ctx)
    return ctx.files.fingerprint


def _config_task(
    spec: RunSpec, threads: int, config: QuantConfig, key: str, _reference: str
) -> Outcome:
    """Worker: measure one config against the reference its task made (never stores it),
    with the driver's intra-op thread count, so the numbers are the local executor's."""
    return runner.config_task(spec, threads, config, key)


def _memory(ctx: RunContext, factor: float) -> int:
    """Bytes a task asks for: ``factor`` times the baseline's weight files (at least 1 GiB)."""
    size = sum(p.stat().st_size for p in Path(ctx.files.folder).glob("*.safetensors"))
    return max(int(factor * size), 1 << 30)


def run_on_ray(
    sweep: Sweep, events: Events, address: str | None, retries: int, shared_dir: str | None
) -> list[RunReport]:
    """Measure ``sweep`` on a Ray cluster (``address``: ``auto``, ``ray://HOST:PORT``, or None
    to start a local Ray instance); one :class:`RunReport` per model and text."""
    try:
        import ray
    except ImportError:
        raise UserError("The Ray executor needs ray; pip install 'quantscope[ray]'.") from None
    shared = str(Path(shared_dir).expanduser().resolve()) if shared_dir else str(cache_dir())
    env = {"QUANTSCOPE_CACHE": shared, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
    # a task runs the driver's thread count even on a node with fewer CPUs (its numbers must
    # not depend on the node): idle OpenMP threads then sleep instead of spinning
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    logging.getLogger("ray").setLevel(logging.ERROR)  # its notices go to its own logs
    with native_output():  # Ray's C++ lines ("Failed to determine local IP …") to the log
        ray.init(
            address=address,
            runtime_env={"env_vars": env},
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    try:
        return _drive(ray, sweep, events, retries)
    finally:
        with native_output():
            ray.shutdown()


def _drive(ray: Any, sweep: Sweep, events: Events, retries: int) -> list[RunReport]:
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0  # a whole GPU per task
    reference = ray.remote(max_retries=retries, num_gpus=gpus)(_reference_task)
    measure = ray.remote(max_retries=retries, num_gpus=gpus)(_config_task)
    pending: dict[Any, tuple[int, int, QuantConfig]] = {}
    runs: list[tuple[RunContext, str, dict[int, Outcome]]] = []
    with Store(sweep.store or default_store()) as store:
        for index, spec in enumerate(sweep.runs()):
            ctx = prepare(spec, events)
            cpus = _cpus(ray, ctx.threads)
            run_id, ref = store.new_run(ctx.files.name, ctx.settings), None
            outcomes: dict[int, Outcome] = {}
            runs.append((ctx, run_id, outcomes))
            for position, config in enumerate(spec.configs):
                reused = ctx.reuse(store, run_id, config, position)
                if reused is not None:
                    outcomes[position] = reused
                    events.outcome(reused)
                    continue
                if ref is None:
                    ref = reference.options(memory=_memory(ctx, 3.0), num_cpus=cpus).remote(
                        spec, ctx.threads
                    )
                task = measure.options(memory=_memory(ctx, 2.0), num_cpus=cpus)
                pending[task.remote(spec, ctx.threads, config, ctx.key(config), ref)] = (
                    index,
                    position,
                    config,
                )
        _collect(ray, store, pending, runs, events, retries)
    return [_report(ctx, run_id, outcomes, store.path) for ctx, run_id, outcomes in runs]


def _cpus(ray: Any, threads: int) -> int:
    """CPUs a task reserves: the driver's thread count, or the most any node has (the task
    still runs with the driver's threads: its numbers must not depend on the node)."""
    most = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    return max(1, min(threads, int(most)))


def _collect(
    ray: Any,
    store: Store,
    pending: dict[Any, tuple[int, int, QuantConfig]],
    runs: list[tuple[RunContext, str, dict[int, Outcome]]],
    events: Events,
    retries: int,
) -> None:
    """Store each result as its task finishes; a task that failed past its retries is a
    failed config with the reason."""
    events.stage(f"{len(pending)} evaluations on Ray", len(pending))
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
        for task in done:
            index, position, config = pending.pop(task)
            ctx, run_id, outcomes = runs[index]
            try:
                outcome = ray.get(task)
            except Exception as err:  # the worker died more often than it may be retried
                reason = f"{type(err).__name__} after {retries} retries: {str(err)[:300]}"
                outcome = Outcome(config.display, Status.FAILED, reason)
            ctx.record(store, run_id, config, position, outcome)
            outcomes[position] = outcome
            events.outcome(outcome)
            events.advance(1)


def _report(ctx: RunContext, run_id: str, outcomes: dict[int, Outcome], store: Path) -> RunReport:
    found = {**ctx.provenance(store), "executor": "ray"}
    return RunReport(run_id, [outcomes[i] for i in sorted(outcomes)], ctx.settings, found)
