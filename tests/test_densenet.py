"""H1: the DenseNet's dense connectivity, the feature-reuse matrix, the parameter-matched ResNet, the image +
caption pair task (construction and ceilings), the two-modality model, and the experiment at smoke scale."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdojo.data import ImageData
from torchdojo.data.pairs import PairBatches, ceilings, make_pairs, vocabulary
from torchdojo.errors import DojoError
from torchdojo.experiments import densenet_vs_resnet
from torchdojo.experiments.base import build_config, run_experiment
from torchdojo.models import build_model
from torchdojo.models.densenet import DenseBlock, SmallDenseNet, feature_reuse

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@settings(max_examples=15, deadline=None)
@given(cin=st.integers(1, 6), n=st.integers(1, 4), growth=st.integers(1, 5), bn=st.sampled_from([0, 2]))
def test_dense_block_concatenates_every_earlier_output(cin: int, n: int, growth: int, bn: int) -> None:
    block = DenseBlock(cin, n, growth, bn).eval()
    x = torch.randn(2, cin, 5, 5)
    out = block(x)
    assert out.shape == (2, cin + n * growth, 5, 5)
    assert torch.equal(out[:, :cin], x)  # the block input is passed on untouched
    # layer i reads exactly the input and the i-1 earlier layers' outputs
    for i, layer in enumerate(block.layers):
        assert layer.first_conv.in_channels == cin + i * growth
    feats = [x]
    for layer in block.layers:
        feats.append(layer(torch.cat(feats, 1)))
    assert torch.allclose(torch.cat(feats, 1), out)


def test_feature_reuse_reads_the_weights_of_each_source() -> None:
    block = DenseBlock(4, 3, 2, bn_size=0)
    with torch.no_grad():
        for layer in block.layers:
            layer.first_conv.weight.fill_(1.0)
        block.layers[2].first_conv.weight[:, :4] = 0.5  # layer 3 weighs the block input half as much
        block.layers[2].first_conv.weight[:, 6:8] = 0.0  # and layer 2's features not at all
    m = feature_reuse(block)
    assert m.shape == (3, 4)
    assert torch.isnan(m[0, 1:]).all() and torch.isnan(m[1, 2:]).all()  # later layers are not visible
    assert torch.allclose(m[0, :1], torch.ones(1)) and torch.allclose(m[1, :2], torch.ones(2))
    assert torch.allclose(m[2], torch.tensor([0.5, 1.0, 0.0, float("nan")]), equal_nan=True)


def test_densenet_shapes_transitions_and_bad_settings() -> None:
    model = SmallDenseNet((1, 28, 28), 10, growth=4, block_layers=(2, 3), bn_size=2, compression=0.5, stem=8)
    # stem 8 -> block 1: 8 + 2*4 = 16 -> transition 8 -> block 2: 8 + 3*4 = 20
    assert model.num_features == 20 and [b.cout for b in model.blocks()] == [16, 20]
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    for bad in ({"block_layers": ()}, {"compression": 0.0}, {"growth": 0}):
        with pytest.raises(DojoError):
            SmallDenseNet((1, 28, 28), 10, **bad)


def test_resnet_is_matched_to_the_densenet_budget() -> None:
    cfg = build_config(densenet_vs_resnet, "small")
    pair = densenet_vs_resnet.build_pair(cfg, (1, 28, 28), 10)
    d, r = pair["densenet"].num_params(), pair["resnet"].num_params()
    assert abs(d - r) / d < 0.1
    fixed = build_config(densenet_vs_resnet, "small", overrides=["resnet_width=8"])
    assert densenet_vs_resnet.build_pair(fixed, (1, 28, 28), 10)["resnet"].features[0].out_channels == 8


def test_grad_norms_cover_the_main_path_and_leave_no_gradients() -> None:
    model = build_model("small-resnet", (1, 16, 16), 4, widths=(4, 8, 8), stem=4)
    rows = densenet_vs_resnet.grad_norms(model, torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,)))
    names = [r["layer"] for r in rows]
    assert names[0] == "features.0" and names[-1] == "head.0" and not any("shortcut" in n for n in names)
    assert len(rows) == 1 + 3 * 2 + 1 and all(r["grad_norm"] > 0 for r in rows)
    assert all(p.grad is None for p in model.parameters())


def _images(n: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 10, FASHION)


def test_pairs_carry_colour_in_the_caption_and_a_noisy_group() -> None:
    pairs = make_pairs(_images(2000), noise=0.3, length=6, seed=1)
    vocab = pairs.vocab
    assert pairs.tokens.shape == (2000, 6) and len(pairs.classes) == 20
    assert torch.equal(pairs.y, 2 * pairs.image_class + pairs.colour)
    for i in range(50):
        words = vocab.decode(pairs.tokens[i].tolist()).split()
        colour = "dark" if pairs.colour[i] == 0 else "light"
        assert sum(w in {"black", "navy", "dark"} for w in words) == (colour == "dark")
        assert sum(w in {"white", "cream", "light"} for w in words) == (colour == "light")
        group = vocab.class_group[int(pairs.image_class[i])]
        said = [g for g, ws in enumerate(vocab.group_words) if any(w in ws for w in words)]
        assert len(said) == 1 and (said[0] == group) == bool(pairs.group_word_true[i])
    assert abs(pairs.group_word_true.float().mean().item() - 0.7) < 0.04
    assert abs(pairs.colour.float().mean().item() - 0.5) < 0.04


def test_ceilings_match_the_bayes_rule_on_the_generated_pairs() -> None:
    pairs = make_pairs(_images(6000), noise=0.3, length=4, seed=2)
    c = ceilings(pairs, 0.3)
    assert c["image"] == 0.5 and c["both"] == 1.0
    assert c["text"] == pytest.approx(3 * 0.1 * 0.7, abs=1e-3)  # 3 groups, each: its likeliest class x P(true word)
    # the rule it assumes (most likely class given the group word, colour read) scores about that on the data
    vocab = pairs.vocab
    best = {g: next(c for c in range(10) if vocab.class_group[c] == g) for g in range(3)}
    said = torch.tensor(
        [next(g for g, ws in enumerate(vocab.group_words) for t in row if vocab.words[t] in ws) for row in pairs.tokens]
    )
    guess = 2 * torch.tensor([best[int(s)] for s in said]) + pairs.colour
    assert (guess == pairs.y).float().mean().item() == pytest.approx(c["text"], abs=0.02)


def test_vocabulary_for_other_datasets_groups_by_index() -> None:
    v = vocabulary([str(i) for i in range(10)])
    assert v.class_group[:4] == (0, 1, 2, 0) and len(set(v.words)) == len(v.words)


def test_pair_batches_keep_images_captions_and_labels_together() -> None:
    pairs = make_pairs(_images(50), noise=0.0, length=5, seed=3)
    b = PairBatches(pairs, 16, (0.5,), (0.25,), shuffle=True, seed=4).set_epoch(2)
    seen = []
    for (x, tokens), y in b:
        for xi, ti, yi in zip(x, tokens, y, strict=True):
            i = int(torch.nonzero((pairs.tokens == ti).all(1) & (pairs.y == yi)).flatten()[0])
            assert torch.allclose(xi, (pairs.images[i].float() / 255 - 0.5) / 0.25, atol=1e-5)
            seen.append(i)
    assert len(b) == 4 and sorted(seen) == list(range(50))


def test_two_modality_model_uses_each_input_it_is_given() -> None:
    torch.manual_seed(0)
    model = build_model("densenet-text", (1, 16, 16), 20, vocab_size=30, caption_len=5, growth=4, block_layers=(1,))
    model.eval()
    x, t = torch.randn(2, 1, 16, 16), torch.randint(1, 30, (2, 5))
    base = model((x, t))
    assert base.shape == (2, 20)
    assert not torch.allclose(model((x, torch.randint(1, 30, (2, 5)))), base)  # the caption matters
    assert not torch.allclose(model((torch.randn(2, 1, 16, 16), t)), base)  # so does the image
    image_only = build_model("densenet-text", (1, 16, 16), 20, vocab_size=30, modalities=("image",), growth=4)
    assert image_only.features.text is None
    text_only = build_model("densenet-text", (1, 16, 16), 20, vocab_size=30, modalities=("text",))
    assert text_only.features.image is None and text_only.features.fuse[0].in_features == 32
    with pytest.raises(DojoError):
        build_model("densenet-text", (1, 16, 16), 20, modalities=("audio",))


def test_experiment_smoke_reports_every_item(tmp_path) -> None:  # noqa: ANN001
    path = run_experiment(densenet_vs_resnet, scale="smoke", device="cpu", runs_root=tmp_path, verbose=False)
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary["models"]) == {"densenet", "resnet"}
    assert set(summary["grad_norms"]) == {"densenet_init", "densenet_trained", "resnet_init", "resnet_trained"}
    assert set(summary["pairs"]) == {"pair-image", "pair-text", "pair-both"}
    report = json.loads((path / "report.json").read_text())
    headings = [b["text"] for b in report["blocks"] if b["type"] == "heading"]
    for h in ("H1.1", "H1.2", "H1.3", "H1.4", "H1.5", "Question and answer"):
        assert any(x.startswith(h) for x in headings), h
    figs = {b["path"] for b in report["blocks"] if b["type"] == "figure"}
    assert figs == {"curves.png", "grad_norms.png", "feature_reuse.png", "pair_model.png", "pair_curves.png"}
    assert all((path / "figures" / f).is_file() for f in figs)
    calc_tables = [b for b in report["blocks"] if b["type"] == "table" and "per block" in b["caption"]]
    dense_blocks = [r[0] for r in calc_tables[0]["rows"]]
    assert dense_blocks[:3] == ["stem", "DenseBlock 1", "Transition 1"] and dense_blocks[-1] == "total"
    assert not any(b.startswith("cat") for b in dense_blocks)  # concatenations are counted in their block
    stages = json.loads((path / "config.json").read_text())["stages"]
    assert set(stages) == {"densenet", "resnet", "pair-image", "pair-text", "pair-both"}


def test_bad_settings_are_refused() -> None:
    for bad in ("caption_noise=1.0", "caption_len=1", "grad_batch=1", "train.cpu_fusion=false"):
        with pytest.raises(DojoError):
            build_config(densenet_vs_resnet, "smoke", overrides=[bad])
