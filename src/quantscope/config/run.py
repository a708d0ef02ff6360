"""What one run measures: the model, the text and its windows, and the settings of a run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from quantscope.config.base import QuantConfig
from quantscope.config.budget import Margins
from quantscope.config.grammar import DType
from quantscope.config.quant import parse_config
from quantscope.errors import UserError
from quantscope.metrics.sequential import DEFAULT_SPENDING, SPENDING


class ModelKind(str, Enum):
    """Where the baseline weights come from."""

    BUNDLED = "bundled"
    LOCAL_DIR = "local-dir"
    GGUF_FILE = "gguf-file"
    HUB = "hub"


DEFAULT_CONFIGS = ("fp32", "bf16", "bnb-int8", "bnb-nf4", "bnb-fp4")
DEFAULT_PROMPTS = (
    "Explain the accuracy tradeoff in quantization.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is the capital of France, and why is it famous?",
)


@dataclass(frozen=True)
class Placement:
    """Where a model's layers go (accelerate's placement): ``device_map`` (auto, balanced,
    balanced_low_0, sequential or a device; None: the run's device), ``max_memory`` per device
    (``(("0", "20GiB"), ("cpu", "64GiB"))``) and ``offload_dir`` for layers that go to disk.

    >>> parse_placement("auto", "0=20GiB,cpu=64GiB", None).max_memory
    (('0', '20GiB'), ('cpu', '64GiB'))
    """

    device_map: str | None = None
    max_memory: tuple[tuple[str, str], ...] = ()
    offload_dir: str | None = None

    def memory(self) -> dict[int | str, str]:
        return {int(k) if k.isdigit() else k: v for k, v in self.max_memory}


_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_placement(
    device_map: str | None,
    max_memory: str | None,
    offload_dir: str | None,
    option: str = "--device-map",
) -> Placement:
    """Check the placement options' grammar (whether a named device exists is checked when
    the model is placed)."""
    if (
        device_map is not None
        and device_map not in _MAPS
        and not re.fullmatch(r"cpu|mps|disk|cuda(:\d+)?|\d+", device_map)
    ):
        raise UserError(
            f"{option} takes auto, balanced, balanced_low_0, sequential or a device (cpu, "
            f"cuda, cuda:N, mps), got '{device_map}'."
        )
    pairs = []
    for part in (max_memory or "").split(","):
        if not part.strip():
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if (
            not sep
            or not (key.isdigit() or key in ("cpu", "mps"))
            or not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB|TiB)", value)
        ):
            raise UserError(
                f"--max-memory takes DEVICE=SIZE pairs like 0=20GiB,cpu=64GiB (a GPU index or "
                f"cpu, and a size in B, KB, MB, GB, KiB, MiB or GiB), got '{part.strip()}'."
            )
        pairs.append((key, value.replace(" ", "")))
    return Placement(device_map, tuple(pairs), offload_dir)


def placements(
    device_map: str | None,
    max_memory: str | None,
    offload_dir: str | None,
    baseline_device_map: str | None,
) -> tuple[Placement, Placement | None]:
    """The configs' and the baseline's placement from the run's options: ``--max-memory``
    and ``--offload-dir`` go with whichever device map is given (both when both are).

    >>> configs, baseline = placements(None, "cpu=2GiB", None, "auto")
    >>> configs.device_map, baseline.device_map, baseline.max_memory
    (None, 'auto', (('cpu', '2GiB'),))
    """
    if (max_memory or offload_dir) and not (device_map or baseline_device_map):
        raise UserError(
            "--max-memory and --offload-dir place a model with accelerate: add --device-map "
            "auto (the configs) or --baseline-device-map auto (the baseline)."
        )
    configs = parse_placement(device_map, max_memory, offload_dir) if device_map else Placement()
    baseline = None
    if baseline_device_map:
        baseline = parse_placement(
            baseline_device_map, max_memory, offload_dir, "--baseline-device-map"
        )
    return configs, baseline


@dataclass(frozen=True)
class ModelSpec:
    """Which baseline model to load and how.

    ``source`` is None for the bundled SmolLM2-135M-Instruct, else a hub id, a local folder
    or a ``.gguf`` file; ``kind`` is inferred by :func:`model_spec`. ``placement`` places the
    configs; ``baseline_placement`` the baseline (None: on the device when it fits, else
    offloaded by accelerate).
    """

    source: str | None
    kind: ModelKind
    dtype: DType = DType.FP32
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    placement: Placement = field(default_factory=Placement)
    baseline_placement: Placement | None = None


def model_spec(
    source: str | None,
    dtype: DType = DType.FP32,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ModelSpec:
    """Infer where a model comes from: nothing → bundled; a path → folder or GGUF; else hub id.

    >>> model_spec(None).kind.value
    'bundled'
    >>> model_spec("meta-llama/Llama-3.1-8B-Instruct").kind.value
    'hub'
    """
    if source is None or source == "":
        return ModelSpec(None, ModelKind.BUNDLED, dtype, None, trust_remote_code, allow_pickle)
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.endswith(".gguf")
    if looks_local:
        if not path.exists():
            raise UserError(f"No such model file or folder '{source}'; check the path.")
        kind = ModelKind.GGUF_FILE if path.is_file() else ModelKind.LOCAL_DIR
        if path.is_file() and path.suffix != ".gguf":
            raise UserError(
                f"'{source}' is a file but not a .gguf file; pass a model folder, a .gguf file "
                "or a hub id."
            )
        source = str(path.resolve())
    elif source.count("/") > 1 or " " in source:
        raise UserError(f"'{source}' is neither an existing path nor a hub id like 'org/name'.")
    else:
        kind = ModelKind.HUB
    return ModelSpec(source, kind, dtype, revision, trust_remote_code, allow_pickle)


@dataclass(frozen=True)
class DataSpec:
    """The evaluation text(s) and the window rule.

    ``texts`` are files: plain UTF-8 text, or JSON Lines (``.jsonl``) whose ``field`` holds
    the text of each record. ``dataset`` names a Hugging Face dataset (hub id, or a local
    folder or data file that ``datasets.load_dataset`` reads) with ``dataset_config``,
    ``split`` and ``field``. With neither, the bundled text is used. Each source is windowed
    on its own (windows never cross sources) and cut to ``tokens`` scored tokens. Windows of
    ``context`` tokens start every ``stride`` tokens; see ``data`` for the exact rule.
    ``bos`` puts the tokenizer's BOS token (else EOS) before each text, so its first token
    is scored too; None (the default) does so when the tokenizer adds BOS by itself.
    """

    texts: tuple[str, ...] = ()
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "test"
    field: str = "text"
    bos: bool | None = None
    tokens: int = 4096
    context: int = 512
    stride: int = 0  # 0: half the context

    def __post_init__(self) -> None:
        if self.context < 2:
            raise UserError(f"--context must be at least 2 tokens (got {self.context}).")
        if self.stride == 0:
            object.__setattr__(self, "stride", self.context // 2)
        if not 1 <= self.stride < self.context:
            raise UserError(
                f"--stride must be at least 1 and below --context ({self.context}) so every "
                f"scored token has context, got {self.stride}."
            )
        if self.tokens < 2:
            raise UserError(f"--tokens must be at least 2 (got {self.tokens}).")
        if len(set(self.texts)) != len(self.texts):
            raise UserError("The same --text file is given twice; name each file once.")


@dataclass(frozen=True)
class ServeSpec:
    """How a config measured in a serving engine (``+engine=vllm``) is served and loaded.

    ``port`` on 127.0.0.1 (0: a free one). The load test sends, at each of ``concurrency``
    levels, ``requests`` requests (0: twice the level, at least 8) of ``prompt_tokens`` tokens
    cut from the evaluation text at seeded places, each generating exactly ``output_tokens``
    tokens (EOS ignored). ``kv_gib``: the engine's KV-cache space on CPU (GiB). ``timeout``:
    seconds the engine may take to start.
    """

    port: int = 0
    concurrency: tuple[int, ...] = (1, 4, 16)
    prompt_tokens: int = 256
    output_tokens: int = 64
    requests: int = 0
    kv_gib: float = 1.0
    timeout: float = 900.0
    eager: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"--engine-port must be a port number (0: any free), got {self.port}.")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise UserError(
                f"--concurrency takes levels of 1 or more like 1,4,16, got {self.concurrency}."
            )
        if self.prompt_tokens < 1 or self.output_tokens < 2 or self.requests < 0:
            raise UserError(
                "--serve-prompt must be at least 1 token and --serve-output at least 2 (an "
                "inter-token latency needs two), --serve-requests 0 or more."
            )
        if self.kv_gib <= 0:
            raise UserError(f"--engine-kv-gib must be above 0, got {self.kv_gib}.")

    def count(self, level: int) -> int:
        """Requests sent at concurrency ``level``."""
        return self.requests or max(8, 2 * level)

    def settings(self) -> dict[str, Any]:
        """What changes the numbers (not the port): part of a served result's key."""
        return {
            "concurrency": list(self.concurrency),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "requests": [self.count(c) for c in self.concurrency],
            "kv_gib": self.kv_gib,
            "eager": self.eager,
        }


@dataclass(frozen=True)
class RunSpec:
    """Everything one ``quantscope run`` needs; two equal specs measure the same thing."""

    model: ModelSpec = field(default_factory=lambda: model_spec(None))
    configs: tuple[QuantConfig, ...] = field(
        default_factory=lambda: tuple(parse_config(c) for c in DEFAULT_CONFIGS)
    )
    data: DataSpec = field(default_factory=DataSpec)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 40
    device: str = "auto"
    seed: int = 0
    batch_size: int = 4
    ref_topk: int = 256
    ref_samples: int = 64
    exact: bool = False
    speed_reps: int = 3
    store_path: str | None = None
    force: bool = False
    tasks: tuple[str, ...] = ()
    task_limit: int = 200
    depths: tuple[int, ...] | None = None  # KV-cache depths; None: evaluate.depth's default
    # stop each config once its verdicts at these margins are resolved (windows in a seeded
    # random order, group-sequential boundaries with this spending function)
    until_decided: Margins | None = None
    spending: str = DEFAULT_SPENDING
    serve: ServeSpec = field(default_factory=ServeSpec)  # configs measured in an engine
    # each config measured in a child process of its own (a crash costs that config), stopped
    # past config_timeout seconds, its address space capped at config_memory_mb; None: when
    # the baseline's weights take AUTO_ISOLATE_BYTES or more (where a process costs little)
    isolate: bool | None = None
    config_timeout: float | None = None
    config_memory_mb: float | None = None
    memory_check: bool = True  # skip a config whose expected peak exceeds what is free

    def __post_init__(self) -> None:
        for name in ("config_timeout", "config_memory_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                option = "--config-timeout" if name == "config_timeout" else "--config-memory"
                raise UserError(f"{option} must be positive, got {value}.")
        if self.until_decided is not None and (
            self.until_decided.ppl is None and self.until_decided.kl is None
        ):
            raise UserError(
                "--until-decided stops a config once its verdicts are resolved, so it needs a "
                "perplexity or KL margin: add --margin ppl=1%,kl=0.02 (or one of them)."
            )
        if self.spending not in SPENDING:
            raise UserError(f"--spending takes {', '.join(SPENDING)}, got '{self.spending}'.")
        if self.depths is not None and any(d < 0 for d in self.depths):
            raise UserError(f"--depths must be token counts of 0 or more, got {self.depths}.")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise UserError(
                f"--device must be auto, cpu, cuda, cuda:N or mps, got '{self.device}'."
            )
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.speed_reps < 1:
            raise UserError("--batch-size, --max-new-tokens and --speed-reps must be at least 1.")
        if not 1 <= self.ref_topk <= 4096:
            raise UserError(f"--ref-topk must be between 1 and 4096, got {self.ref_topk}.")
        if not 0 <= self.ref_samples <= 4096:
            raise UserError(f"--ref-samples must be between 0 and 4096, got {self.ref_samples}.")
        if not self.configs:
            raise UserError("No configs given; pass --configs like fp32,bnb-nf4.")
