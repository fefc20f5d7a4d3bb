"""Progress that tells the truth: the stage name shown as written, the running mean loss on every update, a
validation bar, announced phases, one line per epoch in a log, silence with --quiet, and Ctrl-C's resume command."""

import io
import re

import pytest
import torch
from torch import nn

from torchdojo import cli, epochs, progress, runs
from torchdojo.config import TrainConfig
from torchdojo.engine import fit, train_one_epoch
from torchdojo.experiments import ladder
from torchdojo.experiments.base import run_experiment


class Recorder:
    """Stands in for the terminal/Jupyter backend: every frame it would draw, as (desc, done, total, info)."""

    def __init__(self, display: progress._Display):
        self.display, self.frames = display, []

    def changed(self, force: bool = True) -> None:
        self.frames.append([(t.desc, t.completed, t.total, t.info) for t in self.display.tasks])


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> list:
    display = progress._DISPLAY
    rec = Recorder(display)
    monkeypatch.setattr(display, "_backend", lambda: rec)
    monkeypatch.setattr(display, "backend", rec)
    monkeypatch.setattr(display, "refresh", lambda force=False: rec.changed())
    return rec.frames


def _data(n_batches: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n_batches)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def test_the_stage_name_is_text_not_markup():
    display = progress._DISPLAY.__class__()
    task = progress.Task("[logreg] epoch 1/2", 10)
    task.completed, task.info = 3, "loss 0.5000"
    display.tasks = [task]
    console_file = io.StringIO()
    from rich.console import Console

    console = Console(file=console_file, width=120, color_system=None)
    console.print(progress._Terminal(display).render())
    shown = console_file.getvalue()
    assert "[logreg] epoch 1/2" in shown and "3/10" in shown and "loss 0.5000" in shown


def test_the_training_bar_shows_the_running_mean_loss_on_every_update(frames, monkeypatch):
    monkeypatch.setattr(epochs, "_INFO_EVERY_S", 0.0)  # read the means at every batch
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, _data(), opt, device=torch.device("cpu"), progress="[logreg] epoch 1/1")
    shown = [f[0] for f in frames if f and f[0][1] > 0]  # the frames after a batch
    assert [done for _, done, _, _ in shown] == [1, 2, 3, 4, 5, 6]
    assert all(re.fullmatch(r"loss \d+\.\d{4} acc \d\.\d{4}", info) for *_, info in shown), shown
    assert shown[-1][3] == f"loss {out['loss']:.4f} acc {out['acc']:.4f}"  # the epoch's mean, as returned
    assert frames[-1] == []  # transient: gone when the epoch ends


def test_between_reads_the_bar_keeps_the_last_mean(frames):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, _data(20), opt, device=torch.device("cpu"), progress="[s] epoch 1/1")
    infos = [f[0][3] for f in frames if f and f[0][1] > 0]
    assert len(infos) == 20 and all(i.startswith("loss ") for i in infos)  # never empty, never "None"


def test_fit_shows_a_training_and_a_validation_bar_per_epoch(frames, capsys):
    fit(_model(), _data(), _data(3, seed=1), TrainConfig(epochs=2), device=torch.device("cpu"), stage="logreg")
    seen = list(dict.fromkeys(desc for f in frames for desc, *_ in f))
    assert seen == [
        "[logreg] epoch 1/2",
        "[logreg] validating epoch 1/2",
        "[logreg] epoch 2/2",
        "[logreg] validating epoch 2/2",
    ]
    val = [f[0] for f in frames if f and f[0][0] == "[logreg] validating epoch 2/2"]
    assert val[-1][1:3] == (3, 3)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" train_loss")[0] for line in lines] == ["[logreg] epoch 1/2", "[logreg] epoch 2/2"]


def test_a_log_gets_one_line_per_epoch_and_no_bar(capsys):
    assert progress.mode() == "plain"  # pytest's captured stderr is not a terminal
    fit(_model(), _data(), _data(2), TrainConfig(epochs=3), device=torch.device("cpu"), stage="mlp")
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert [line[: len("[mlp] epoch 1/3")] for line in err.splitlines()] == [f"[mlp] epoch {e}/3" for e in (1, 2, 3)]


def test_a_status_gives_way_to_a_bar_and_a_phase_ends_with_its_time(frames, capsys):
    progress.status("drawing figures/a.png")
    progress.status("drawing figures/b.png")  # replaces the first: one status line at a time
    assert frames[-1] == [("drawing figures/b.png", 0, None, "")]
    with progress.bar("[s] epoch 1/1", 2) as b:
        b.advance(1, "loss 1.0000")
        assert [desc for desc, *_ in frames[-1]] == ["[s] epoch 1/1"]  # the status is over
    with progress.phase("writing report.html"):
        assert frames[-1] == [("writing report.html", 0, None, "")]
    assert frames[-1] == []
    assert re.fullmatch(r"writing report\.html \(\d+\.\ds\)\n", capsys.readouterr().err)


def test_a_phase_in_a_log_is_announced_when_it_starts(capsys):
    with progress.phase("loading digits"):
        assert capsys.readouterr().err == "loading digits ...\n"
    progress.status("drawing figures/a.png")  # a log gets no line per figure
    assert capsys.readouterr().err == ""


def test_a_run_announces_data_loading_and_report_writing_and_quiet_is_silent(tmp_path, capsys):
    args = dict(scale="smoke", overrides=["dataset=digits", "rungs=logreg"], device="cpu", runs_root=tmp_path)
    run_experiment(ladder, verbose=False, **args)
    assert capsys.readouterr() == ("", "")
    run_experiment(ladder, verbose=True, **args)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "loading digits ..." and lines[-1] == "writing report.html ..."
    assert any(line.startswith("[logreg] epoch 1/1 train_loss") for line in lines)


def test_bars_are_silent_on_other_ranks(frames, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with progress.bar("[s] epoch 1/1", 3) as b:
        b.advance()
        assert not b.shown
    progress.status("drawing figures/a.png")
    assert frames == []


# --- the resume command on Ctrl-C and out of memory ----------------------------------------------------------


def test_the_interrupt_message_names_the_real_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "_CURRENT", [])
    assert "nothing to resume" in cli._kept_and_resume()
    run = tmp_path / "my runs" / "ladder" / "r1"
    run.mkdir(parents=True)
    monkeypatch.setattr(runs, "_CURRENT", [run])
    assert "nothing to resume" in cli._kept_and_resume()  # discarded (or never written): no config.json
    (run / "config.json").write_text('{"experiment": "ladder"}')
    expected = f"finished epochs are kept. Resume with: torchdojo run ladder --resume '{run}'"
    assert cli._kept_and_resume() == expected  # quoted: the path has a space
    seed = run / "seeds" / "seed-1"
    seed.mkdir(parents=True)
    (seed / "config.json").write_text('{"experiment": "ladder"}')
    (run / "config.json").write_text('{"experiment": "ladder", "seeds": 3}')
    monkeypatch.setattr(runs, "_CURRENT", [seed])
    assert cli._kept_and_resume() == expected  # a repeated run resumes from its own folder
    (run / "summary.json").write_text("{}")
    assert cli._kept_and_resume() == f"the run in {run} had finished"
