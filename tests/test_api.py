"""The Python API: torchdojo.run/load and Result, the short imports, calc/check/explain as functions."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchdojo
from torchdojo.api import settings
from torchdojo.errors import DojoError
from torchdojo.results import Result, Table, embed, scope_css


def _python(code: str, cwd: Path, timeout: int = 240) -> str:
    """Run `code` in a fresh interpreter (what a user's script or notebook kernel is); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


FRESH_RUN = """
    import json, torch, torchdojo
    from torchdojo import checkpoints
    from torchdojo.data import load_dataset
    from torchdojo.data.loader import TensorBatches
    from torchdojo.engine import evaluate

    r = torchdojo.run("ladder", scale="smoke", device="cpu", runs_dir="runs", verbose=False)
    summary, history = r.summary, r.history
    model = r.load_model("cnn")
    spec = checkpoints.spec_of(model)
    test = load_dataset("fashion-mnist").test
    tcfg = r.config["stages"]["cnn"]
    n = tcfg["max_batches"] * tcfg["eval_batch_size"]
    pred = checkpoints.predict(model, test.x[:n])
    again = checkpoints.predict(r.load_model("cnn"), test.x[:n])
    batches = TensorBatches(test, tcfg["eval_batch_size"], spec.mean, spec.std)
    ev = evaluate(model, batches, device=torch.device("cpu"), max_batches=tcfg["max_batches"], return_outputs=True,
                  channels_last=tcfg["channels_last"])
    top2 = ev["probs"].topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-5  # images whose best class is not a tie within float error
    print(json.dumps({
        "path": str(r.path), "test_acc": summary["rungs"]["cnn"]["test_acc"], "stages": sorted(history),
        "cnn_epochs": len(history["cnn"]), "cnn_columns": list(history["cnn"].columns),
        "training": model.training, "probs_shape": list(pred.probs.shape), "n": n,
        "deterministic": bool(torch.equal(pred.probs, again.probs)),
        "eval_acc": ev["acc"], "max_prob_diff": float((pred.probs - ev["probs"]).abs().max()),
        "labels_agree": bool((pred.labels == ev["probs"].argmax(1))[clear].all()),
        "names": pred.names[:3], "classes": list(spec.classes),
        "html": len(r._repr_html_()), "figures": sorted(r.figures),
    }))
"""


def test_fresh_interpreter_run_summary_history_and_model(tmp_path):
    """The acceptance: from a fresh interpreter, run the ladder at smoke scale, read its summary and history,
    rebuild the CNN from its checkpoint and predict test images: the same probabilities as evaluating the
    checkpoint the way the run did (so the run's test accuracy again), deterministic, in eval mode."""
    out = json.loads(_python(FRESH_RUN, tmp_path).strip().splitlines()[-1])
    assert Path(out["path"]).is_relative_to(tmp_path / "runs" / "ladder")
    assert out["stages"] == ["cnn", "logreg", "mlp"]
    assert out["cnn_epochs"] == 1 and {"epoch", "train_loss", "val_loss", "val_acc"} <= set(out["cnn_columns"])
    assert out["training"] is False
    assert out["probs_shape"] == [out["n"], 10]
    assert out["deterministic"]
    assert out["eval_acc"] == out["test_acc"]  # the checkpoint is the model the run evaluated
    assert out["max_prob_diff"] < 1e-5 and out["labels_agree"]
    assert out["classes"][0] == "T-shirt/top" and set(out["names"]) <= set(out["classes"])
    assert out["html"] > 10_000 and "cm_cnn" in out["figures"]


def test_import_is_light():
    """`import torchdojo` imports neither torch nor any sub-package; names load on first use."""
    code = "import sys, torchdojo; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torchdojo.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_short_imports():
    from torchdojo.nn import Binarize, Conv2d, ConvTranspose2d, ElmanCell, conv2d, round_ste, sign_ste
    from torchdojo.nn.conv import Conv2d as DeepConv2d

    assert Conv2d is DeepConv2d and callable(conv2d) and callable(sign_ste) and callable(round_ste)
    assert {ConvTranspose2d, ElmanCell, Binarize} <= {c for c in vars(torchdojo.nn).values() if isinstance(c, type)}
    assert torchdojo.models.build_model is not None and "cnn" in torchdojo.models.MODELS
    assert torchdojo.run is torchdojo.api.run and torchdojo.load is torchdojo.api.load
    assert torchdojo.Result is Result
    with pytest.raises(AttributeError):
        torchdojo.no_such_name  # noqa: B018


def test_calc_is_the_package_and_callable_however_it_was_imported():
    """`torchdojo.calc` stays the calculator package (its sub-modules import as before) and is callable."""
    code = """
        import torchdojo.calc.graph                      # the package imported by a sub-module first
        import torchdojo
        from torchdojo.calc import analyze
        from torchdojo.models import build_model
        a = torchdojo.calc("cnn", (1, 28, 28))
        b = analyze(build_model("cnn", (1, 28, 28), 10), (1, 28, 28))
        s = torchdojo.calc(spec="3x32x32 | conv 3 p1 8 relu | flatten | fc 10")
        print(callable(torchdojo.calc), torchdojo.calc.analyze is analyze, sum(r.params for r in a.layers) ==
              sum(r.params for r in b.layers), sum(r.params for r in s.layers))
    """
    assert _python(code, Path.cwd(), timeout=120).split() == [
        "True",
        "True",
        "True",
        str(3 * 9 * 8 + 8 + 8192 * 10 + 10),
    ]


def test_calc_refusals():
    with pytest.raises(DojoError, match="either a model or spec"):
        torchdojo.calc("cnn", spec="3x8x8 | fc 2")
    with pytest.raises(DojoError, match="no model"):
        torchdojo.calc()
    with pytest.raises(DojoError, match="not a shape"):
        torchdojo.calc("cnn", "1x0x28")


def test_settings_nest_and_refuse_doubles():
    assert settings(train__lr=0.01, rungs=["cnn"]) == {"train.lr": 0.01, "rungs": ["cnn"]}
    assert settings({"train.lr": 0.1}, train__epochs=2) == {"train.lr": 0.1, "train.epochs": 2}
    with pytest.raises(DojoError, match="given twice"):
        settings({"train.lr": 0.1}, train__lr=0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train__lrr": 0.1}, "unknown config key 'train.lrr'"),
        ({"train__lr": float("nan")}, "train.lr"),
        ({"scale": "huge"}, "unknown scale"),
        ({"preset": "nope"}, "unknown preset"),
    ],
)
def test_run_refuses_what_the_cli_refuses(tmp_path, kwargs, match):
    """Settings go through build_config: the CLI's refusals, before a run folder is made."""
    with pytest.raises(DojoError, match=match):
        torchdojo.run("ladder", runs_dir=tmp_path, device="cpu", verbose=False, **kwargs)
    assert not any(tmp_path.rglob("config.json"))


def test_run_unknown_experiment():
    with pytest.raises(DojoError, match="unknown experiment"):
        torchdojo.run("ladderr")


def test_load_refuses_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(DojoError, match="not a run folder"):
        torchdojo.load(tmp_path)


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"experiment": "ladder", "scale": "smoke", "config": {}}))
    rows = [{"stage": "a", "epoch": 1, "train_loss": 1.5}, {"stage": "a", "epoch": 2, "train_loss": 1.25}]
    rows.append({"stage": "b", "epoch": 1, "train_loss": 2.0, "val_acc": 0.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut')
    (run / "figures" / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "figures" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return run


def test_result_reads_the_folder(tmp_path):
    r = torchdojo.load(_fake_run(tmp_path))
    assert r.stages == ["a", "b"]
    hist = r.history
    assert list(hist) == ["a", "b"] and len(hist["a"]) == 2 and len(hist["b"]) == 1
    assert list(hist["a"]["train_loss"]) == [1.5, 1.25]
    assert list(r.figures) == ["a", "z"] and r.report_path == r.path / "report.html"
    assert "not finished" in repr(r) and "No report.html yet" in r._repr_html_()
    with pytest.raises(DojoError, match="has not finished"):
        r.summary  # noqa: B018
    (r.path / "summary.json").write_text("{bad")
    with pytest.raises(DojoError, match="not valid JSON"):
        r.summary  # noqa: B018


def test_table():
    t = Table([{"epoch": 1, "loss": 0.123456}, {"epoch": 2, "acc": 0.5}])
    assert t.columns == ["epoch", "loss", "acc"] and len(t) == 2 and t["acc"] == [None, 0.5]
    assert "<th>loss</th>" in t._repr_html_() and "0.1235" in repr(t)
    with pytest.raises(KeyError, match="columns: epoch"):
        t["nope"]
    assert "&lt;b&gt;" in Table([{"x": "<b>"}])._repr_html_()


def test_report_embed_scopes_the_stylesheet():
    css = "body{margin:0}h1,td:first-child{color:red}@media print{table{width:100%}}@page{size:A4}html body .x{a:b}"
    scoped = scope_css(css, ".s")
    assert scoped == ".s{margin:0}.s h1,.s td:first-child{color:red}@media print{.s table{width:100%}}.s .x{a:b}"
    page = "<html><head><style>p{x:y}</style></head><body class='b'><h1>T</h1></body></html>"
    assert embed(page) == "<style>.torchdojo-report p{x:y}</style><h1>T</h1>"


def test_explain():
    assert torchdojo.explain("conv-backprop").ok
    e = torchdojo.explain("transposed-conv", input=[[1, 2], [3, 4]], kernel="1 0; 0 1", stride=2)
    assert e.ok and "stamp" in e.text.lower()
    with pytest.raises(DojoError, match="unknown topic"):
        torchdojo.explain("pooling")
    with pytest.raises(DojoError, match="not a matrix"):
        torchdojo.explain("transposed-conv", input="1 2; 3")


def test_check_runs_the_isolated_checker():
    verdict = torchdojo.check("conv2d", "torchdojo.nn.conv:Conv2d", max_examples=2)
    assert verdict.ok, verdict
    assert torch.get_default_dtype() == torch.float32


def test_an_interrupted_run_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import torchdojo.experiments.base as base
    import torchdojo.runs as runs

    run = tmp_path / "runs" / "ladder" / "x"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(base, "run_experiment", interrupted)
    monkeypatch.setattr(runs, "current_run", lambda: run)
    with pytest.raises(KeyboardInterrupt):
        torchdojo.run("ladder", scale="smoke")
    assert f"Resume with: torchdojo.run('ladder', resume='{run}')" in capsys.readouterr().err
    (run / "summary.json").write_text("{}")  # a finished run: nothing to resume, nothing said
    with pytest.raises(KeyboardInterrupt):
        torchdojo.run("ladder", scale="smoke")
    assert capsys.readouterr().err == ""
