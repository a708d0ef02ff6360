"""The command line: one module per command, each a thin function over the library.

A :class:`~quantscope.errors.UserError` becomes one red sentence and exit code 2. Commands:
``run`` (run), ``sensitivity``/``search`` (mixed), ``recover`` (recover), ``runs``/``show``/
``compare``/``report`` (browse), ``recommend`` (decide), ``methods``/``doctor``/``gguf-converter`` (machine);
importing them registers them on :data:`app`; options they share live in ``common``.
"""

from __future__ import annotations

import logging

from quantscope.cli import browse, decide, machine, mixed, recover, run, sweep  # noqa: F401
from quantscope.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    app()


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and notices: quantscope draws its own."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes
    for name in (
        "transformers",
        "bitsandbytes",
        "accelerate",
        "huggingface_hub",
        "peft",
        "torchao",
        "torch.utils._pytree",
        "optimum.quanto",
        "hqq",
        "tokenicer",
        "ray",
        "torch._dynamo",  # gptqmodel's CPU kernels recompile per layer; the speed columns say it
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
