"""End to end in a real browser: a smoke ladder run whose class names are HTML/script, rendered to
report.html and opened in headless Chromium through the DevTools protocol (over a pipe, no network):
every image decodes, the script text shows as text and never runs, the page paints, the contents and the summary
come first, and no table runs off the page (a 30-column one scrolls inside its box)."""

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from torchdojo.data import ImageData, Splits
from torchdojo.experiments import base as experiments_base
from torchdojo.experiments import ladder
from torchdojo.report import Report, figures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<script>document.title='pwned'</script>"
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")]


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._ev_r, ev_w = os.pipe()

        def child_fds() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(ev_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "--window-size=1000,1400",
        ]
        self.proc = subprocess.Popen(
            [binary, *flags, "about:blank"],
            preexec_fn=child_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(ev_w)
        self._buf, self._id, self._events = b"", 0, []

    def _message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ev_r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._ev_r, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 90
    ) -> dict[str, Any]:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            answer = self._message(timeout)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self._events.append(answer)

    def wait_for(self, event: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self._events):
                if e.get("method") == event:
                    return self._events.pop(i)
            self._events.append(self._message(deadline - time.monotonic()))

    def open(self, url: str) -> str:
        """A new tab showing `url`, loaded; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        return out["result"]["value"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=15)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._ev_r)


LAYOUT = """JSON.stringify((() => {
  const ids = Array.from(document.querySelectorAll('nav.toc, h2#summary, h2#s0'))
    .map(e => e.tagName === 'NAV' ? 'toc' : e.id);
  const boxes = Array.from(document.querySelectorAll('table')).map(t => t.parentElement);
  return {
    order: ids,
    toc_top: document.querySelector('nav.toc').getBoundingClientRect().top,
    toc_links: document.querySelectorAll('nav.toc a').length,
    viewport_h: window.innerHeight,
    page_w: document.documentElement.clientWidth,
    page_scroll_w: document.documentElement.scrollWidth,
    tables: boxes.length,
    box_rights: boxes.map(b => b.getBoundingClientRect().right),
    scrolling_boxes: boxes.filter(b => b.className === 'scroll' && b.scrollWidth > b.clientWidth).length,
  };
})())"""


def _evil_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A smoke ladder run on digits whose dataset and class names are HTML with a script."""
    real = experiments_base.load_dataset
    names = [f"<b>{i}</b>{EVIL}" for i in range(10)]

    def renamed(*args: Any, **kwargs: Any) -> Splits:
        s = real(*args, **kwargs)
        rename = lambda d: ImageData(d.x, d.y, names)  # noqa: E731
        return Splits(f"digits {EVIL}", rename(s.train), rename(s.test), s.source)

    monkeypatch.setattr(experiments_base, "load_dataset", renamed)
    path = experiments_base.run_experiment(
        ladder,
        scale="smoke",
        device="cpu",
        runs_root=tmp_path / "runs",
        overrides=["dataset=digits", "rungs=logreg", "train.max_batches=2"],
        verbose=False,
    )
    # The same names in a table, a figure title and a caption, added to the run's own report.
    report = Report.load(path)
    report.heading(f"classes {EVIL}")
    report.table([{"class": n, "index": i} for i, n in enumerate(names)], caption=f"caption {EVIL}")
    splits = renamed("digits")
    figures.image_grid(
        [splits.train.x[i] for i in range(4)],
        path / "figures" / "evil.png",
        ncols=4,
        titles=names[:4],
        title=f"figure title {EVIL}",
    )
    report.figure("evil.png", f"figure caption {EVIL}")
    wide = {f"a_rather_long_column_name_{i}": 123456.789 * i for i in range(30)}  # far wider than the page
    report.table([wide, wide], caption="wide")
    report.save(path)
    return path, names


def test_report_in_headless_chromium(tmp_path, monkeypatch):
    path, names = _evil_run(tmp_path, monkeypatch)
    page = (path / "report.html").read_text()
    assert "<script" not in page
    n_figures = len(list((path / "figures").glob("*.png")))

    browser = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        tab = browser.open((path / "report.html").as_uri())
        state = browser.evaluate(
            tab,
            """JSON.stringify({
            title: document.title,
            scripts: document.scripts.length,
            images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
            text: document.body.innerText,
            cells: Array.from(document.querySelectorAll('td')).map(td => td.textContent),
            html: document.documentElement.outerHTML})""",
        )
        layout = json.loads(browser.evaluate(tab, LAYOUT))
        shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session=tab)["data"])
    finally:
        browser.close()
    state = json.loads(state)

    assert state["scripts"] == 0  # the payload became text, not an element
    assert "pwned" not in state["title"] and state["title"].startswith("torchdojo ladder")
    assert len(state["images"]) == n_figures >= 6
    assert all(complete and w > 50 and h > 50 for complete, w, h in state["images"]), state["images"]
    for shown in (f"digits {EVIL}", f"classes {EVIL}", f"caption {EVIL}", f"figure caption {EVIL}"):
        assert shown in state["text"], shown
    assert names[3] in state["cells"]  # the class name, character for character, in its table cell
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in state["html"]

    # The contents and the summary open the page, before the first section; the contents show on the first screen.
    assert layout["order"][:3] == ["toc", "summary", "s0"], layout["order"]
    assert layout["toc_top"] < layout["viewport_h"] and layout["toc_links"] >= 5
    # No table runs off the page: each sits in a box no wider than the page, which scrolls the wide one sideways.
    assert layout["page_scroll_w"] <= layout["page_w"], layout
    assert layout["tables"] >= 5 and all(right <= layout["page_w"] for right in layout["box_rights"]), layout
    assert layout["scrolling_boxes"] >= 1  # the 30-column table scrolls inside its box

    shot_path = tmp_path / "report.png"
    shot_path.write_bytes(shot)
    import matplotlib.image

    img = matplotlib.image.imread(io.BytesIO(shot), format="png")
    assert img.shape[0] >= 600 and img.shape[1] >= 600
    assert shot_path.stat().st_size > 20_000 and img[..., :3].std() > 0.05  # text and figures, not a blank page
