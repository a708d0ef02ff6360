"""quantscope: what quantizing a language model costs in accuracy and buys in memory and speed.

From Python (the same run as ``quantscope run``)::

    >>> import quantscope
    >>> report = quantscope.run(configs="bf16,bnb-nf4", tokens=1024)  # doctest: +SKIP
    >>> report.to_dataframe()[["config", "ppl", "kl_mean", "weight_mb"]]  # doctest: +SKIP

Importing this package imports no optional backend library; torch and transformers are
imported when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantscope.config import DEFAULT_CONFIGS, DataSpec, DType, ModelSpec, QuantConfig, RunSpec
from quantscope.config.quant import ConfigsLike
from quantscope.errors import UserError

if TYPE_CHECKING:
    from quantscope.results import RunReport

__version__ = "0.1.0"
__all__ = ["DType", "DataSpec", "ModelSpec", "QuantConfig", "RunSpec", "UserError", "run"]


def run(
    model: str | None = None,
    configs: ConfigsLike = DEFAULT_CONFIGS,
    text: str | tuple[str, ...] = (),
    tokens: int = 4096,
    context: int = 512,
    stride: int = 256,
    **options: Any,
) -> RunReport:
    """Run quantscope from Python; ``options`` are the other :class:`RunSpec` fields.

    ``configs`` is a comma list, a list of names or config objects, or saved config files.
    Returns a :class:`~quantscope.results.RunReport`; ``.to_dataframe()`` gives one row per
    config.
    """
    from quantscope.config import model_spec, parse_config_list
    from quantscope.runner import run as run_spec

    spec = RunSpec(
        model=model_spec(model),
        configs=parse_config_list(configs),
        data=DataSpec(
            (text,) if isinstance(text, str) else text,
            tokens=tokens,
            context=context,
            stride=stride,
        ),
        **options,
    )
    return run_spec(spec)
