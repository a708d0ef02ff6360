"""The options both front doors share, read once: text given as paths or as the text itself,
prompts, depths, dtypes, name lists; a builder called by keyword from a command's options
(:func:`by_keyword`), and the sentence for an option that does not exist.

>>> parse_depths("0,1k,4k")
(0, 1024, 4096)
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from quantscope import config as cfg
from quantscope.cache import cache_dir, made
from quantscope.config import did_you_mean
from quantscope.errors import UserError

PathLike = str | Path
S = TypeVar("S")
Texts = PathLike | Iterable[PathLike] | None


def _saved_text(text: str) -> Path:
    """Text given as a string, kept once in the cache under its digest (so it keys results
    like a file of the same text), written as every cached artifact is (``cache.made``)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / "texts" / f"text-{digest}.txt"

    def write(tmp: Path) -> dict[str, Any]:
        tmp.write_text(text, encoding="utf-8")
        return {}

    made(path, write)
    return path


def _exists(value: str) -> bool:
    try:
        return Path(value).expanduser().exists()
    except OSError:  # a name too long for a path: text
        return False


def text_files(text: Texts, option: str = "text") -> tuple[str, ...]:
    """Paths of the text sources: a path, a list of paths, or the text itself."""
    if text is None:
        return ()
    items = [text] if isinstance(text, str | Path) else list(text)
    files = []
    for item in items:
        if isinstance(item, Path) or _exists(str(item)):
            files.append(str(item))
        elif isinstance(item, str) and (" " in item.strip() or "\n" in item):
            files.append(str(_saved_text(item)))
        else:
            raise UserError(
                f"No such {option} file '{item}'; pass a path, a list of paths, or the text "
                "itself (a string with spaces)."
            )
    return tuple(files)


def names_of(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A comma list or a list of names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(v.strip() for v in items if v.strip())


def read_prompts(prompts: PathLike | Iterable[str] | None) -> tuple[str, ...]:
    """Generation prompts: a file with one per line (the CLI's ``--prompts``) or a list."""
    if prompts is None:
        return cfg.DEFAULT_PROMPTS
    if not isinstance(prompts, str | Path):
        found = tuple(p.strip() for p in prompts if p.strip())
        if not found:
            raise UserError("prompts is an empty list; give at least one prompt.")
        return found
    path = Path(prompts).expanduser()
    if not path.is_file():
        raise UserError(
            f"No such prompts file '{prompts}'; give a text file with one prompt per line."
        )
    found = tuple(p.strip() for p in path.read_text(encoding="utf-8").splitlines() if p.strip())
    if not found:
        raise UserError(f"Prompts file '{prompts}' has no prompts; write one prompt per line.")
    return found


def dtype_of(value: cfg.DType | str | None, option: str) -> cfg.DType | None:
    if value is None or isinstance(value, cfg.DType):
        return value
    try:
        return cfg.DType(str(value))
    except ValueError:
        choices = ", ".join(d.value for d in cfg.DType)
        raise UserError(f"--{option} must be one of {choices}, got '{value}'.") from None


def one_config(config: str | cfg.QuantConfig) -> cfg.QuantConfig:
    found = cfg.parse_config_list(config)
    if len(found) != 1:
        names = ", ".join(c.name for c in found)
        raise UserError(f"--config takes one config, got {len(found)}: {names}.")
    return found[0]


def path_or_none(store: PathLike | None) -> str | None:
    return str(store) if store else None


def parse_levels(levels: str | Iterable[int]) -> tuple[int, ...]:
    """``--concurrency`` as request counts in flight, ascending, each once.

    >>> parse_levels("16,1,4")
    (1, 4, 16)
    """
    items = (
        [p.strip() for p in levels.split(",") if p.strip()] if isinstance(levels, str) else levels
    )
    try:
        found = tuple(sorted({int(x) for x in items}))
    except (TypeError, ValueError):
        found = ()
    if not found or found[0] < 1:
        raise UserError(f"--concurrency takes request counts like 1,4,16, got '{levels}'.")
    return found


def parse_depths(depths: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """``--depths`` as token counts: ``0,1k,4096`` (k = 1024); None keeps the default."""
    if depths is None:
        return None
    items = [p.strip() for p in depths.split(",")] if isinstance(depths, str) else list(depths)
    try:
        return tuple(
            int(p[:-1]) * 1024 if str(p).lower().endswith("k") else int(p)
            for p in map(str, items)
            if p
        )
    except ValueError:
        raise UserError(f"--depths takes token counts like 0,1k,4k,8k, got '{depths}'.") from None


def by_keyword(builder: Callable[..., S], options: Mapping[str, Any]) -> S:
    """``builder`` called by keyword with those of ``options`` that bear its parameters' names
    (a command's parameters, say): the command line and the API share one vocabulary, and a
    value can only reach the parameter of its own name.

    >>> by_keyword(parse_depths, {"depths": "1k", "tokens": 4096})
    (1024,)
    """
    names = inspect.signature(builder).parameters
    return builder(**{name: options[name] for name in names if name in options})


def unknown_option(function: str, word: str, names: Iterable[str]) -> str:
    """The sentence for a keyword the function does not take."""
    names = sorted(names)
    return (
        f"quantscope.{function} has no option '{word}'.{did_you_mean(word, names)} "
        f"Options: {', '.join(names)}."
    )
