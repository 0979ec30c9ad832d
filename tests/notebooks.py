"""Executing a notebook of `colabs/` top to bottom in a real Jupyter kernel (nbclient), as a user would.

The kernel runs the notebook's tiny setup: `JAXALIGN_NOTEBOOK_TINY=1`, the tiny random chat model of the
`tiny_chat_model_dir` fixture as `JAXALIGN_NOTEBOOK_MODEL`, and `JAXALIGN_NOTEBOOK_SKIP_INSTALL=1` (the test
environment has jaxalign installed). It sees one CPU device, like a CPU runtime, and its temporary run
directories go to the test's own temporary directory.
"""

from __future__ import annotations

import os
import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]


def execute_notebook(name: str, *, model_dir: str, tmp_path: pathlib.Path, setup: str = "", then: str = "",
                     timeout: int = 1200) -> nbformat.NotebookNode:
    """Runs `colabs/<name>` in a fresh kernel from the repository root; returns the executed notebook.

    A failing cell raises `nbclient.exceptions.CellExecutionError` with the cell's traceback. `setup`
    forces a setup of the notebook's setup cell ("cpu", "gpu", "tpu"; default: the kernel's backend);
    `then` is the test's own code, run in the same kernel after the last cell.
    """
    notebook = nbformat.read(ROOT / "colabs" / name, as_version=4)
    if then:
        notebook.cells.append(nbformat.v4.new_code_cell(then))
    env = {**os.environ, "JAXALIGN_NOTEBOOK_TINY": "1", "JAXALIGN_NOTEBOOK_MODEL": model_dir,
           "JAXALIGN_NOTEBOOK_SKIP_INSTALL": "1", "JAXALIGN_NOTEBOOK_SETUP": setup,
           "TMPDIR": str(tmp_path), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)
    return notebook


def text_output(notebook: nbformat.NotebookNode) -> str:
    """Everything the code cells printed (stdout, stderr) and their plain-text results, in order."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
                parts.append(output.data["text/plain"] + "\n")
    return "".join(parts)


def images(notebook: nbformat.NotebookNode) -> list[bytes]:
    """The PNG images the notebook displayed (base64-decoded)."""
    import base64

    return [base64.b64decode(output.data["image/png"]) for cell in notebook.cells
            for output in cell.get("outputs", []) if output.output_type == "display_data"
            and "image/png" in output.data]


def committed_without_outputs(name: str) -> bool:
    """Whether the committed notebook has no outputs and no execution counts (outputs are never committed)."""
    notebook = nbformat.read(ROOT / "colabs" / name, as_version=4)
    return all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code")
