"""The example notebook (examples/quantscope-notebook.ipynb), executed as a user would run it:
every cell runs; its outputs hold tables and plots, and no line that a library printed on its
own (warnings, weight-loading bars, llama.cpp or torch log lines) — only quantscope's."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
NOTEBOOK = Path(__file__).parents[1] / "examples" / "quantscope-notebook.ipynb"
THIRD_PARTY = re.compile(
    r"Warning|warn\(|Loading weights|Failed to load|llama_|ggml|it/s\]|%\||^[WEI]\d{4} "
)  # what libraries print: Python warnings, tqdm bars, llama.cpp and torch's glog-style lines
OURS = "quantscope · "


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    if output["output_type"] == "error":
        return "\n".join(output["traceback"])
    return str(output.get("data", {}).get("text/plain", ""))


def test_the_example_notebook_runs_quietly_and_shows_tables_and_plots(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()  # raises on the first cell that fails
    print(f"notebook ran in {time.perf_counter() - start:.0f} s")
    nbformat.write(notebook, tmp_path / "executed.ipynb")
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    lines = [line for o in outputs for line in _text(o).replace("\r", "\n").splitlines()]
    leaked = [line for line in lines if THIRD_PARTY.search(line) and OURS not in line]
    assert not leaked, leaked[:10]
    assert any(line.startswith(OURS) for line in lines), "quantscope's own progress is missing"
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    tables = [h for h in html if 'class="quantscope"' in h]
    assert len(tables) >= 4  # the run, the generations, the search, the recovery
    assert any("bnb-nf4[compute_dtype=bf16]" in h and "bnb-int8" in h for h in tables)
    assert any("<h3>Prompt:" in h for h in tables)
    plots = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) == 3
