"""G1/G2's texts from constructed numbers: the did-it-learn check against the mean image, the inverse loss's
reconstruction cost (paired per image; costs / lowers / no measurable difference), over seeds, and the discussion."""

from torchdojo.autoencoders.analysis import ae_learned, discussion, inverse_loss_cost, seeds_text

NOISE = [0.001 * k for k in (-2, -1, 1, 2)] * 10  # a fixed, zero-mean spread over 40 images


def _images(level: float, shift: float = 0.0) -> list[float]:
    return [level + shift + e for e in NOISE]


def test_an_autoencoder_below_the_mean_image_learned():
    ok, why = ae_learned(_images(0.02), _images(0.07), [1.0, 0.5, 0.3])
    assert ok and "held-out MSE 0.02 vs 0.07 for predicting the mean image" in why


def test_an_autoencoder_at_or_above_the_mean_image_did_not_learn():
    ok, why = ae_learned(_images(0.135), _images(0.074), [1.0, 0.9])
    assert not ok and "not lower beyond the 95% interval" in why
    ok, _ = ae_learned([0.07 + e for e in reversed(NOISE)], _images(0.07), [1.0, 0.9])  # same level: no
    assert not ok


def test_a_rising_or_non_finite_loss_did_not_learn():
    assert "did not fall" in ae_learned(_images(0.02), _images(0.07), [0.5, 0.6])[1]
    assert "diverged" in ae_learned(_images(0.02), _images(0.07), [0.5, float("nan")])[1]


def _summary(**inv: float) -> dict:
    return {n: {"mean_inverse_err": v, "learned": True} for n, v in inv.items()}


def test_the_inverse_loss_cost_is_stated_with_its_interval():
    per_image = {"fc-lam0": _images(0.020), "fc": _images(0.020, 0.003)}
    (line,) = inverse_loss_cost(_summary(**{"fc-lam0": 0.6, "fc": 0.05}), per_image, 0.1)
    assert line.startswith("- fc: lambda = 0.1 costs reconstruction MSE here: test MSE 0.023 (fc) vs 0.02 (fc-lam0)")
    assert "+15.0%" in line and "fc is higher beyond the 95% interval" in line
    assert "from 0.6 (lambda = 0) to 0.05 (0.08x)." in line


def test_no_measurable_cost_and_a_lower_mse_are_said_so():
    tie = {"conv-lam0": _images(0.03), "conv": [0.03 + e for e in reversed(NOISE)]}
    (line,) = inverse_loss_cost(_summary(**{"conv-lam0": 1.0, "conv": 0.9}), tie, 0.1)
    assert "has no measurable reconstruction cost here" in line and "no measurable difference over 40 images" in line
    lower = {"conv-lam0": _images(0.03), "conv": _images(0.03, -0.004)}
    (line,) = inverse_loss_cost(_summary(**{"conv-lam0": 1.0, "conv": 0.9}), lower, 0.1)
    assert "lowers the reconstruction MSE here" in line and "conv is lower beyond" in line


def test_a_failed_variant_and_a_missing_counterpart_are_said_so():
    s = _summary(**{"fc-lam0": 0.6, "fc": 0.05})
    s["fc"]["learned"] = False
    (line,) = inverse_loss_cost(s, {"fc-lam0": _images(0.02), "fc": _images(0.02, 0.003)}, 0.1)
    assert line.endswith("a variant did not learn (see the warnings), so this says little.")
    assert "not measured" in inverse_loss_cost(_summary(fc=0.1), {"fc": _images(0.02)}, 0.1)[0]


def test_seeds_text_compares_each_lambda_variant_with_its_lambda_0_one_by_seed():
    values = {"fc-lam0": [0.020, 0.025, 0.018, 0.022], "fc": [0.023, 0.028, 0.021, 0.025], "conv": [0.03] * 4}
    text = seeds_text([], values)
    assert "fc is worse than fc-lam0 on test MSE by 0.003" in text and "paired, 4 seeds" in text
    assert "- conv" not in text  # conv has no lambda = 0 counterpart in these values
    assert "not measured" in seeds_text([], {"conv": [0.03, 0.02]})


def test_the_discussion_reports_the_direction_the_numbers_show():
    summary = {"conv": {"mean_inverse_err": 0.4, "test_mse": 0.02}, "conv-relu": {"mean_inverse_err": 0.2}}
    rows = [{"variant": "conv-relu", "zeroed": 0.5}, {"variant": "conv-relu", "zeroed": 0.6}]
    text = discussion(summary, rows, [])
    assert "conv-relu 0.2 vs conv 0.4 (conv-relu 0.50x conv's)" in text
    assert discussion({}, [], []) == "Not enough variants ran for a side-by-side comparison."


def test_one_image_cannot_decide():
    ok, why = ae_learned([0.01], [0.07], [1.0, 0.5])
    assert not ok and "over 1 images" in why
