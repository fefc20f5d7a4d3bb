"""Progress that tells the truth: what a run is doing right now, in a terminal, in Jupyter and in a CI log.

Three things are shown, all on rank 0 only and only when the caller says so (`--quiet` turns them off):
- `bar(desc, total)`: one bar per pass over batches (an epoch's training, a validation, an evaluation),
  with its counts, elapsed and remaining time and an info text (the running mean loss);
- `status(msg)`: the one thing happening between bars (drawing a figure), replaced by the next;
- `phase(msg)`: a named step with a beginning and an end (loading data, writing the report).

Where they go depends on where the output goes (`mode()`):
- a terminal (stderr is a TTY): a rich live display on stderr, transient; permanent lines print above it;
- Jupyter (an IPython kernel): one live output per cell, updated in place through IPython's display ids
  (no widgets: it also shows in notebooks executed by nbclient), emptied when nothing is running;
- anything else (a CI log, a pipe): no bars and no statuses; a phase prints one line when it starts.
Permanent lines (a finished epoch, a finished phase) are plain `print`s to stderr in every mode.
"""

import atexit
import contextlib
import html
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

_REFRESH_S = 0.2  # Jupyter updates at most this often (each is a message to the front end)


def mode() -> str:
    """'jupyter' inside an IPython kernel, 'terminal' when stderr is a TTY, else 'plain'."""
    ipython = sys.modules.get("IPython")  # never imported here: only looked at when it already is
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return "jupyter"
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is not None and isatty() and os.environ.get("TERM") != "dumb":
        return "terminal"
    return "plain"


def is_main_process() -> bool:
    """Rank 0 under torchrun (from its environment, so that this module needs no torch), else True."""
    return os.environ.get("RANK", "0") == "0"


class Task:
    """One line of the live display: a bar (with `total`) or a status (without)."""

    def __init__(self, desc: str, total: int | None):
        self.desc, self.total, self.completed, self.info = desc, total, 0, ""
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def times(self) -> str:
        """'12s' for a status; 'elapsed<remaining' for a bar (remaining from the rate so far)."""
        spent = self.elapsed()
        if self.total is None:
            return _clock(spent)
        if not self.completed or self.completed >= self.total:
            return _clock(spent)
        left = spent / self.completed * (self.total - self.completed)
        return f"{_clock(spent)}<{_clock(left)}"

    def counts(self) -> str:
        return f"{self.completed}/{self.total}" if self.total is not None else ""

    def text(self, width: int = 30) -> str:
        """The task as one plain-text line (Jupyter's text/plain view)."""
        parts = [self.desc]
        if self.total is not None:
            done = round(width * min(self.completed / self.total, 1.0)) if self.total else width
            parts.append("█" * done + "░" * (width - done))
            parts.append(self.counts())
        parts.append(self.times())
        if self.info:
            parts.append(self.info)
        return " ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


class _Terminal:
    """A rich Live on stderr showing the current tasks; started with the first task, stopped with the last."""

    cleanup_registered = False

    def __init__(self, display: "_Display"):
        self.display = display
        self.live: Any = None

    def changed(self) -> None:
        if self.display.tasks and self.live is None:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                get_renderable=self.render,
                console=Console(stderr=True),
                transient=True,
                refresh_per_second=10,
                redirect_stdout=True,
                redirect_stderr=True,
            )
            self.live.start()
            if not _Terminal.cleanup_registered:  # a live display left at exit would keep the cursor hidden
                atexit.register(clear)
                _Terminal.cleanup_registered = True
        elif not self.display.tasks and self.live is not None:
            live, self.live = self.live, None
            live.stop()

    def render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        for _ in range(5):
            grid.add_column(no_wrap=True)
        for task in list(self.display.tasks):
            bar = ProgressBar(total=task.total, completed=task.completed, width=40, pulse=task.total is None)
            grid.add_row(
                Text(task.desc),  # plain Text: "[logreg]" is shown, not read as markup
                bar,
                Text(task.counts(), style="progress.download"),
                Text(task.times(), style="progress.elapsed"),
                Text(task.info),
            )
        return grid


class _Jupyter:
    """One live output per notebook cell, updated in place (display_id); empty when no task runs."""

    def __init__(self, display: "_Display"):
        self.display, self.handle, self.cell, self.last = display, None, None, 0.0

    def changed(self, force: bool = True) -> None:
        now = time.perf_counter()
        if not force and now - self.last < _REFRESH_S:
            return
        self.last = now
        from IPython import get_ipython
        from IPython.display import display

        tasks = list(self.display.tasks)
        cell = getattr(get_ipython(), "execution_count", None)
        if self.handle is None or cell != self.cell:  # a new cell gets its own output
            if not tasks:
                return
            self.handle, self.cell = display(self.bundle(tasks), raw=True, display_id=True), cell
        else:
            self.handle.update(self.bundle(tasks), raw=True)

    @staticmethod
    def bundle(tasks: list[Task]) -> dict[str, str]:
        rows = []
        for t in tasks:
            bar = f'<progress value="{t.completed}" max="{t.total}"></progress>' if t.total is not None else ""
            cells = [f"<code>{html.escape(t.desc)}</code>", bar, t.counts(), t.times(), html.escape(t.info)]
            rows.append("<div>" + " ".join(c for c in cells if c) + "</div>")
        return {"text/plain": "\n".join(t.text() for t in tasks), "text/html": "".join(rows)}


class _Display:
    """The process's live tasks and where they are drawn (None in plain mode)."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.status: Task | None = None
        self.lock = threading.Lock()
        self.backend: _Terminal | _Jupyter | None = None
        self.backend_mode = ""

    def _backend(self) -> "_Terminal | _Jupyter | None":
        current = mode()
        if current != self.backend_mode:  # stderr redirected, a kernel started: follow it
            self.backend_mode = current
            self.backend = {"terminal": _Terminal, "jupyter": _Jupyter}.get(current, lambda _d: None)(self)
        return self.backend

    def add(self, task: Task) -> bool:
        backend = self._backend() if not self.tasks else self.backend
        if backend is None:
            return False
        with self.lock:
            if self.status is not None and task.total is not None:  # a bar starts: the status is over
                self.tasks.remove(self.status)
                self.status = None
            self.tasks.append(task)
        backend.changed()
        return True

    def remove(self, task: Task) -> None:
        with self.lock:
            if task in self.tasks:
                self.tasks.remove(task)
            if task is self.status:
                self.status = None
        if self.backend is not None:
            self.backend.changed()

    def refresh(self, force: bool = False) -> None:
        """Called on every bar update: Jupyter redraws now and then (`force`: now); rich redraws on its own."""
        if isinstance(self.backend, _Jupyter):
            self.backend.changed(force=force)


_DISPLAY = _Display()


def clear() -> None:
    """End whatever is still shown (a status nobody replaced, after an error): the terminal gets its cursor back.
    The CLI calls it when a command ends; it also runs at exit once a terminal display was started."""
    with _DISPLAY.lock:
        shown = bool(_DISPLAY.tasks)
        _DISPLAY.tasks.clear()
        _DISPLAY.status = None
    if shown and _DISPLAY.backend is not None:
        _DISPLAY.backend.changed()


class Bar:
    """A bar over one pass of batches: `advance()` per batch, `info` for the text after it."""

    def __init__(self, task: Task | None):
        self.task = task

    @property
    def shown(self) -> bool:
        return self.task is not None

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.task is None:
            return
        self.task.completed += n
        if info is not None:
            self.task.info = info
        _DISPLAY.refresh()


@contextlib.contextmanager
def bar(desc: str, total: int | None, enabled: bool = True) -> Iterator[Bar]:
    """A live bar for `total` steps (None: unknown) while the block runs; gone when it ends (transient).
    Nothing is drawn when disabled, on ranks other than 0, or when the output is not a terminal/notebook."""
    task = Task(desc, total) if enabled and is_main_process() else None
    if task is not None and not _DISPLAY.add(task):
        task = None
    try:
        yield Bar(task)
    finally:
        if task is not None:
            _DISPLAY.remove(task)


def status(msg: str | None, enabled: bool = True) -> None:
    """Show `msg` as what happens now (replacing the previous status) until the next status, bar or phase;
    None clears it. Terminal and Jupyter only: a CI log would get one line per figure."""
    if not enabled or not is_main_process():
        return
    current = _DISPLAY.status
    if msg is None:
        if current is not None:
            _DISPLAY.remove(current)
    elif current is not None:  # the same line, new text: no flicker
        current.desc, current.start = msg, time.perf_counter()
        _DISPLAY.refresh(force=True)
    else:
        task = Task(msg, None)
        if _DISPLAY.add(task):
            _DISPLAY.status = task


@contextlib.contextmanager
def phase(msg: str, enabled: bool = True) -> Iterator[None]:
    """Announce a step: live (with its elapsed time) while it runs and one line `msg (Ns)` when it is done in a
    terminal or notebook; in a log, one line `msg ...` when it starts (so a long step is never silent)."""
    if not enabled or not is_main_process():
        yield
        return
    status(None)
    task = Task(msg, None)
    live = _DISPLAY.add(task)
    if not live:
        print(f"{msg} ...", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if live:
            _DISPLAY.remove(task)
    if live:  # not after an exception: the error says what happened
        print(f"{msg} ({task.elapsed():.1f}s)", file=sys.stderr, flush=True)
