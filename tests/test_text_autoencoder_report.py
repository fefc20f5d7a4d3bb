"""G3's texts from constructed results: the DAE against copying its input, each sentiment classifier against the
majority baseline, and the transfer comparison, which never sets an all-majority predictor against an
all-minority one as if both were results."""

from torchdojo.autoencoders.text_report import copy_verdict, sentiment_learned, transfer_text


def _rows(**accs: float) -> list[dict]:
    return [{"classifier": n, "test_acc": a} for n, a in accs.items()]


Y = [0] * 300 + [1] * 100  # 75% majority on 400 test tweets


def _hists(*names: str) -> dict:
    return {n: [{"train_loss": 0.7}, {"train_loss": 0.5}] for n in names}


def test_the_dae_beats_copying_only_beyond_noise():
    ok, text = copy_verdict(0.62, 0.55, 0.9, 100, 2000)
    assert ok and "restores 62.0%" in text and "copying the corrupted input puts the right token at 55.0%" in text
    assert "+7.00 points" in text and "beyond noise" in text
    ok, text = copy_verdict(0.555, 0.55, 0.9, 100, 2000)
    assert not ok and "does not restore more than copying does beyond noise" in text
    ok, text = copy_verdict(0.003, 0.31, 0.005, 128, 2585)
    assert not ok and "-30.70 points" in text


def test_an_all_majority_and_an_all_minority_predictor_are_both_flagged_and_not_compared():
    """The issue's G3: at smoke scale one classifier predicted the majority class for every tweet, the other the
    minority class; the old text called the difference (+0.508) a transfer gain."""
    rows = _rows(**{"dae-frozen": 0.75, "scratch": 0.25})
    learned = sentiment_learned(rows, _hists("dae-frozen", "scratch"), Y)
    assert not learned["dae-frozen"][0] and "within noise of the 75.0% majority/chance rate" in learned["dae-frozen"][1]
    assert not learned["scratch"][0] and "25.0% is below the 75.0%" in learned["scratch"][1]
    bullets, lines = transfer_text({r["classifier"]: r["test_acc"] for r in rows}, learned)
    (bullet,) = bullets
    assert (
        "dae-frozen did not learn" in bullet
        and "scratch did not learn" in bullet
        and "neither is called better" in bullet
    )
    assert "+50" not in " ".join(bullets + lines) and "Did not learn" in lines[0]


def test_learned_classifiers_from_one_seed_are_not_called():
    rows = _rows(**{"dae-frozen": 0.86, "dae-finetune": 0.88, "scratch": 0.84})
    learned = sentiment_learned(rows, _hists("dae-frozen", "dae-finetune", "scratch"), Y)
    assert all(ok for ok, _ in learned.values())
    bullets, lines = transfer_text({r["classifier"]: r["test_acc"] for r in rows}, learned)
    assert len(bullets) == 2 and all("one seed cannot decide this" in b for b in bullets)
    assert lines == ["One seed cannot decide whether DAE pretraining helps here: run with --seeds N (e.g. --seeds 5)."]


def test_a_flat_training_loss_is_not_learning():
    learned = sentiment_learned(_rows(scratch=0.9), {"scratch": [{"train_loss": 0.6}, {"train_loss": 0.6}]}, Y)
    assert not learned["scratch"][0] and "did not fall" in learned["scratch"][1]


def test_without_a_control_or_a_transferred_classifier_nothing_is_compared():
    learned = {"dae-frozen": (True, "ok"), "scratch": (True, "ok")}
    assert transfer_text({"dae-frozen": 0.8}, learned) == (
        [],
        ["No from-scratch classifier ran: the transfer question has no control here."],
    )
    assert transfer_text({"scratch": 0.8}, learned)[1] == [
        "No transferred classifier ran: nothing to compare with the from-scratch one."
    ]
