"""Running a notebook's Python cells in a test (shell `!` and magic `%` cells are skipped, as CI cannot
install packages)."""

import json
import pathlib


def run_python_cells(path: str, namespace: dict) -> int:
    """Executes the code cells of the notebook at `path` in `namespace`, in order; returns how many ran."""
    ran = 0
    for cell in json.loads(pathlib.Path(path).read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.lstrip().startswith(("%", "!")):
            continue
        exec(compile(source, f"<{pathlib.Path(path).name} cell>", "exec"), namespace)  # noqa: S102
        ran += 1
    return ran
