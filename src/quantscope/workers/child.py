"""A child process of ``quantscope.isolation``: ``python -m quantscope.workers.child ARGS OUT``
reads (target, args) from the pickle ARGS, calls ``module:function`` with them and writes its
value to the pickle OUT. An exception is the function's to report in its value; one that
escapes exits 1 with its traceback on stderr (the debug log)."""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path


def main(given: str, back: str) -> None:
    target, args = pickle.loads(Path(given).read_bytes())
    module, name = target.split(":")
    value = getattr(importlib.import_module(module), name)(*args)
    partial = Path(back + ".part")
    partial.write_bytes(pickle.dumps(value))
    partial.replace(back)  # whole or absent: a child killed while writing leaves no value


if __name__ == "__main__":
    main(*sys.argv[1:3])
