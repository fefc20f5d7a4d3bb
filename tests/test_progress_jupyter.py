"""Progress in Jupyter, as a notebook executed by nbclient shows it."""

import pytest


def test_jupyter_shows_live_bars_under_nbclient(tmp_path):
    """Executed by nbclient (as `jupyter nbconvert --execute` would): each cell gets one live output updated in
    place, with the stage name and the running loss; no error; the epoch lines are in the cell's stderr."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    setup = """
import time, torch
from torch import nn
from torchdojo import progress
from torchdojo.config import TrainConfig
from torchdojo.engine import fit

class Slow(list):
    def __iter__(self):
        for b in super().__iter__():
            time.sleep(0.02)
            yield b

g = torch.Generator().manual_seed(0)
data = Slow((torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(25))
print(progress.mode())
"""
    train = "fit(nn.Linear(4, 3), data, data, TrainConfig(epochs=2), device=torch.device('cpu'), stage='{}')"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in (setup, train.format("logreg"), train.format("mlp"))]
    messages: list[tuple[int, str, dict]] = []

    class Recording(nbclient.NotebookClient):
        def process_message(self, msg, cell, cell_index):  # noqa: ANN001, ANN201
            if msg["msg_type"] in ("display_data", "update_display_data"):
                messages.append((cell_index, msg["msg_type"], msg["content"]["data"]))
            return super().process_message(msg, cell, cell_index)

    Recording(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert nb.cells[0].outputs[0].text.strip() == "jupyter"
    for index, stage in ((1, "logreg"), (2, "mlp")):
        shown = [m[2]["text/plain"] for m in messages if m[0] == index]
        assert sum(1 for m in messages if m[0] == index and m[1] == "display_data") == 1  # one live output a cell
        assert any(s.startswith(f"[{stage}] epoch 1/2") and " loss " in s for s in shown), shown
        assert any(s.startswith(f"[{stage}] validating epoch 2/2") for s in shown)
        assert len(shown) < 60  # updated now and then, not per batch
        err = "".join(o.text for o in nb.cells[index].outputs if o.output_type == "stream" and o.name == "stderr")
        assert [line[: len(stage) + 12] for line in err.splitlines()] == [
            f"[{stage}] epoch 1/2",
            f"[{stage}] epoch 2/2",
        ]
