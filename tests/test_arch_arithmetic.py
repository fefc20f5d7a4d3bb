"""The arch-arithmetic experiment answers B1-B8 and every formula matches its measurement."""

import json

from torchdojo.experiments import EXPERIMENTS
from torchdojo.experiments.base import run_experiment


def test_smoke_run_answers_every_b_item(tmp_path) -> None:
    module = EXPERIMENTS.get("arch-arithmetic")
    run_dir = run_experiment(module, scale="smoke", runs_root=tmp_path, verbose=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mismatches"] == 0 and summary["checks"] > 300
    assert [(r["output"], r["params"], r["MACs"], r["rf"]) for r in summary["b2"]] == [
        ("64x64x64", 4_864, 19_660_800, "5x5"),
        ("128x32x32", 204_928, 209_715_200, "13x13"),
        ("256x16x16", 819_456, 209_715_200, "29x29"),
    ]
    assert [r["params"] for r in summary["b3"]] == [4_864, 9_984, 36_352]
    assert summary["b8"] == {"mlp": 2_484_160, "cnn": 1_272_372}
    b4 = {(r["convs"], r["head"]): r for r in summary["b4"]}
    assert b4[("B2", "flatten")]["FC params"] == 65_536 * 200 + 200
    assert b4[("B2", "global average pool")]["FC params"] == 256 * 200 + 200
    report = json.loads((run_dir / "report.json").read_text())
    headings = [b["text"] for b in report["blocks"] if b["type"] == "heading"]
    for item in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"):
        assert any(h.startswith(item + ".") for h in headings), item
    html = (run_dir / "report.html").read_text()
    assert "2,484,160" in html and "1,272,372" in html and "255 x 13 x 13" in html and "256 x 64" in html
    assert (run_dir / "figures" / "b2_erf.png").exists() or (run_dir / "b2_erf.png").exists()
