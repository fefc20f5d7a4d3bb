"""Every registered experiment runs end to end at `smoke` scale and writes a complete run folder.
Generated from the EXPERIMENTS registry: experiments registered later are picked up automatically."""

import dataclasses
import json

import pytest

from torchdojo.config import SCALES
from torchdojo.errors import DataMissingError
from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import build_config, run_experiment
from torchdojo.report import render_html


def _missing_resource_errors() -> tuple[type[Exception], ...]:
    """Errors that mean 'a dataset or weights file is not on this machine': the test skips on them."""
    errors: list[type[Exception]] = [DataMissingError]
    try:
        from torchdojo.backbones.weights import WeightsMissingError

        errors.append(WeightsMissingError)
    except ImportError:
        pass
    return tuple(errors)


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_experiment_module_interface(name):
    m = EXPERIMENTS.get(name)
    assert m.MISSION_IDS and all(isinstance(i, str) for i in m.MISSION_IDS)
    assert isinstance(m.SUMMARY, str) and m.SUMMARY
    assert dataclasses.is_dataclass(m.Config) and hasattr(m.Config(), "seed")
    assert set(m.SCALES) == set(SCALES)
    for scale in SCALES:
        build_config(m, scale)  # every scale's overrides are valid
    for preset in getattr(m, "PRESETS", {}):
        build_config(m, "smoke", preset)
    assert callable(m.run)


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_experiment_smoke_run(name, tmp_path):
    try:
        path = run_experiment(EXPERIMENTS.get(name), scale="smoke", device="cpu", runs_root=tmp_path, verbose=False)
    except _missing_resource_errors() as e:
        pytest.skip(f"{name} needs something absent here: {e.problem}")
    assert path.parent == tmp_path / name
    for f in ("config.json", "env.json", "summary.json", "report.json", "report.html"):
        assert (path / f).is_file(), f
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["experiment"] == name and cfg["scale"] == "smoke" and "seed" in cfg["config"]
    env = json.loads((path / "env.json").read_text())
    assert env["torch"] and env["device"] == "cpu"
    summary = json.loads((path / "summary.json").read_text())
    assert summary["seconds"] >= 0 and len(summary) > 1  # the experiment's own numbers too

    stages = {p.parent.name for p in (path / "checkpoints").rglob("last.pt")}  # stages trained by `fit`
    if stages:  # it trains: per-epoch metrics were logged for every stage
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        assert rows and all("epoch" in r and "stage" in r for r in rows)
        assert stages <= {r["stage"] for r in rows}
        assert all((path / "checkpoints" / s / "best.pt").exists() for s in stages)
    assert not [p for p in path.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]

    report = json.loads((path / "report.json").read_text())
    assert report["blocks"]
    for block in report["blocks"]:
        if block["type"] == "figure":
            assert (path / "figures" / block["path"]).is_file() or (path / block["path"]).is_file(), block
    page = (path / "report.html").read_text()
    assert "missing figure" not in page
    render_html(path)  # reports are rendered from the folder alone
    assert (path / "report.html").read_text() == page


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_experiment_smoke_run_on_cuda(name, tmp_path):
    """The same on the GPU (bf16 autocast, device-resident data): every tensor an experiment makes must follow
    its device, and its maths must survive autocast."""
    try:
        path = run_experiment(EXPERIMENTS.get(name), scale="smoke", device="cuda", runs_root=tmp_path, verbose=False)
    except _missing_resource_errors() as e:
        pytest.skip(f"{name} needs something absent here: {e.problem}")
    assert json.loads((path / "env.json").read_text())["device"] == "cuda"
    assert (path / "report.html").is_file()
