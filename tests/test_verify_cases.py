"""Case seeds: an edge case's value seed reveals nothing of the grading seed, and a printed case reproduces exactly.

Feedback shows a failing case (with its value seed) so the student can rerun it with `--case`; with hidden
grading seeds that seed must not give the grading seed back by arithmetic.
"""

import dataclasses
import json

import torch

from torchdojo.verify import grade, intake
from torchdojo.verify.cases import draw_cases, edge_seed, prepare
from torchdojo.verify.rubric import default_rubric
from torchdojo.verify.targets import TARGETS

HIDDEN = (4711, 90210, 123456789)


def _edges(target: str, seed: int) -> list[dict]:
    return draw_cases(TARGETS[target], [seed], 0)


def test_an_edge_case_seed_does_not_contain_the_grading_seed() -> None:
    for seed in HIDDEN:
        for case in _edges("conv2d", seed):
            assert case["seed"] // 1000 != seed and case["seed"] - seed * 1000 not in range(1000)
            assert 0 <= case["seed"] < 2**31


def test_edge_seeds_are_a_hash_of_seed_index_and_target() -> None:
    cases = _edges("conv2d", 4711)
    assert [c["seed"] for c in cases] == [edge_seed(4711, k, "conv2d") for k in range(len(cases))]
    assert len({c["seed"] for c in cases}) == len(cases)  # every label x dtype its own values
    # consecutive grading seeds do not give consecutive (or overlapping) case seeds
    assert not {c["seed"] for c in cases} & {c["seed"] for c in _edges("conv2d", 4712)}
    # the same label under another target draws other values
    fn = _edges("conv2d-backward", 4711)
    assert edge_seed(4711, 0, "conv2d") != edge_seed(4711, 0, "conv2d-backward")
    assert fn[0]["seed"] == edge_seed(4711, 0, "conv2d-backward")


def test_the_derivation_is_fixed() -> None:
    """The same seed gives the same cases on every machine and in every release of this scheme: a changed
    derivation must change SEED_SCHEME (the grading cache key) and this number."""
    assert edge_seed(0, 0, "conv2d") == 988539677
    assert _edges("conv2d", 0) == _edges("conv2d", 0)


def test_a_printed_case_reproduces_its_tensors_exactly() -> None:
    for case in _edges("conv2d", 4711)[:4]:
        printed = json.loads(json.dumps(case))  # what --case carries
        a, b = prepare(TARGETS["conv2d"], case), prepare(TARGETS["conv2d"], printed)
        for x, y in [*zip(a.inputs, b.inputs, strict=True), (a.grad_out, b.grad_out), (a.ref_out, b.ref_out)]:
            assert torch.equal(x, y)
        assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def test_the_grading_cache_key_names_the_seed_scheme(monkeypatch) -> None:  # noqa: ANN001
    @dataclasses.dataclass(frozen=True)
    class L:
        wall_s: float = 5.0

    st = grade.Settings("conv2d", intake.Entry("*.py", "Conv2d"), default_rubric(["forward"]), (1,), 5, False, L())
    before = st.key("abc")
    monkeypatch.setattr("torchdojo.verify.cases.SEED_SCHEME", "another")
    assert st.key("abc") != before  # results graded under another derivation are never reused
