"""KL divergence vs cross-entropy on concrete distributions: CE(p, q) = H(p) + KL(p || q), the same gradient
in q's logits for a fixed p, and a different one when p itself is learned."""

import torch


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def cross_entropy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -(p * q.clamp_min(1e-300).log()).sum(-1)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum(-1)


EXAMPLES: dict[str, tuple[list[float], list[float]]] = {
    "one-hot label, confident right": ([1, 0, 0], [0.9, 0.05, 0.05]),
    "one-hot label, confident wrong": ([1, 0, 0], [0.05, 0.9, 0.05]),
    "soft label (smoothing 0.1), q = p": ([0.9333, 0.0333, 0.0334], [0.9333, 0.0333, 0.0334]),
    "soft label (smoothing 0.1), q one-hot-ish": ([0.9333, 0.0333, 0.0334], [0.98, 0.01, 0.01]),
    "uniform p, peaked q": ([1 / 3, 1 / 3, 1 / 3], [0.8, 0.1, 0.1]),
}


def example_table() -> list[dict[str, object]]:
    """H(p), CE(p, q), KL(p || q) and CE - (H + KL) for each example pair, in nats (float64)."""
    rows = []
    for name, (p, q) in EXAMPLES.items():
        pt, qt = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
        pt, qt = pt / pt.sum(), qt / qt.sum()
        h, ce, d = entropy(pt), cross_entropy(pt, qt), kl(pt, qt)
        rows.append(
            {
                "case": name,
                "p": ", ".join(f"{v:.3f}" for v in pt.tolist()),
                "q": ", ".join(f"{v:.3f}" for v in qt.tolist()),
                "H(p)": float(h),
                "CE(p, q)": float(ce),
                "KL(p || q)": float(d),
                "CE - H - KL": float(ce - h - d),
            }
        )
    return rows


def gradients(seed: int = 0, n: int = 64, k: int = 10) -> dict[str, float]:
    """On random distributions (float64): the largest |d CE/d q-logits - d KL/d q-logits| with p fixed (0 up to
    rounding: H(p) does not depend on q), and the largest difference in p's logits when p is learned too (not 0:
    KL's gradient in p carries the -H(p) term CE lacks)."""
    g = torch.Generator().manual_seed(seed)
    p_logits = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    q_logits = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)

    def grads(fn) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        p, q = p_logits.softmax(-1), q_logits.softmax(-1)
        gp, gq = torch.autograd.grad(fn(p, q).sum(), (p_logits, q_logits))
        return gp, gq

    ce_p, ce_q = grads(cross_entropy)
    kl_p, kl_q = grads(kl)
    return {
        "q_grad_max_diff": float((ce_q - kl_q).abs().max()),
        "q_grad_max": float(ce_q.abs().max()),
        "p_grad_max_diff": float((ce_p - kl_p).abs().max()),
        "p_grad_max": float(ce_p.abs().max()),
    }
