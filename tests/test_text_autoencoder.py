"""The denoising text autoencoder: vocabulary specials, teacher forcing, learning a tiny batch, smoke run."""

import json

import pytest
import torch

from torchdojo.autoencoders.corruption import Corruption
from torchdojo.autoencoders.text_dae import (
    SentenceEncoder,
    SentimentClassifier,
    TextDAE,
    dae_vocab,
    encode_texts,
    teacher_forcing,
)
from torchdojo.autoencoders.text_train import clf_accuracy, evaluate_dae, overfit_batch, train_classifier

TEXTS = ["the movie was great and fun", "i hate this awful phone", "what a great day with friends",
         "the service was awful and slow", "great fun , great friends !", "this phone is slow and awful"] * 2


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


def test_dae_learns_a_tiny_batch_and_generates() -> None:
    torch.manual_seed(0)
    v = dae_vocab(TEXTS, min_freq=1)
    seqs = encode_texts(TEXTS[:6], v, 12)
    model = TextDAE(len(v), emb=16, dim=32)
    noise = Corruption(drop=0.1, mask=0.1, shuffle=0.2)
    mask_id = v.stoi["<mask>"]
    before = evaluate_dae(model, seqs, noise, mask_id, 0, torch.device("cpu"))
    rows = overfit_batch(model, seqs, noise, mask_id, steps=120, lr=1e-2, seed=0, device=torch.device("cpu"))
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    after = evaluate_dae(model, seqs, Corruption(0, 0, 0), mask_id, 0, torch.device("cpu"))
    assert after["token_acc"] > 0.8 > before["token_acc"]
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
    info = train_classifier(model, seqs, labels, mode=mode, epochs=30, batch_size=4, lr=1e-2, encoder_lr=1e-2,
                            seed=0, device=torch.device("cpu"))
    changed = any(not torch.equal(a, b) for a, b in zip(enc_before, model.encoder.parameters(), strict=True))
    assert changed == (mode == "train")
    head = sum(p.numel() for p in model.head.parameters())
    assert info["trainable"] == (head if mode == "frozen" else sum(p.numel() for p in model.parameters()))
    if mode == "train":
        assert clf_accuracy(model, seqs, labels, torch.device("cpu")) == 1.0


def test_text_autoencoder_experiment_smoke(tmp_path) -> None:  # noqa: ANN001
    from torchdojo.experiments import text_autoencoder
    from torchdojo.experiments.base import run_experiment

    run_dir = run_experiment(text_autoencoder, scale="smoke", runs_root=tmp_path, device="cpu", verbose=False)
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s["sentiment"]) == {"dae-frozen", "scratch"}
    assert 0 <= s["heldout_token_acc"] <= 1 and 0 < s["copy_baseline_acc"] < 1
    html = (run_dir / "report.html").read_text()
    for part in ("Overfitting a small batch", "Held-out reconstruction", "Sentiment transfer", "&lt;mask&gt;"):
        assert part in html
    assert "<mask>" not in html  # tokens are escaped
