"""Architecture arithmetic (MISSION B1-B8): every textbook count as a formula, a number, and a measurement.

Each network is written in calc's spec language, built into real modules and measured from the graph;
every closed-form formula is checked against the measured value, and the report says which matched.
"""

import dataclasses
from typing import Any

import torch
from torch import nn

from torchdojo.calc import check_spec
from torchdojo.calc.receptive import gradient_map, support
from torchdojo.experiments.base import Context
from torchdojo.report import figures

MISSION_IDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8")
SUMMARY = "architecture arithmetic: params, multiplies, shapes and receptive fields, formula vs measured"

B2_CONVS = "conv 5 s2 p2 64 relu | conv 5 s2 p2 128 relu | conv 5 s2 p2 256 relu"
B3_CONVS = "conv 5 s2 p2 64 relu | dsconv 5 s2 p2 128 relu | dsconv 5 s2 p2 256 relu"
# Seed 002's report, rebuilt from its text: MLP 3x64x64 -> [200, 100, 50] (Linear with bias + BatchNorm,
# ReLU, dropout) -> 10; CNN: two unpadded 3x3 convs (20, 64 channels) with bias, BatchNorm and 2x2 max-pool,
# then FC 12544 -> 100 -> 50 -> 10 with dropout. Their per-layer lines group (Linear|Conv + BatchNorm).
B8_MLP = (
    "3x64x64 | flatten | fc 200 | bn | relu | dropout | fc 100 | bn | relu | dropout | fc 50 | bn | relu "
    "| dropout | fc 10"
)
B8_CNN = (
    "3x64x64 | conv 3 20 | bn | relu | maxpool 2 | conv 3 64 | bn | relu | maxpool 2 | flatten "
    "| fc 100 relu | dropout | fc 50 relu | dropout | fc 10"
)
B8_SEED = {"mlp": ([2458200, 20300, 5150, 510], 2484160), "cnn": ([600, 11712, 1254500, 5050, 510], 1272372)}


@dataclasses.dataclass
class Config:
    seed: int = 0
    input: str = "3x128x128"  # B2-B4's colour image
    classes: int = 200  # B4's softmax head
    # B1: (K, M, N, H) examples checked against the symbolic formulas (square HxH input)
    b1_cases: tuple[str, ...] = ("3,64,128,56", "5,3,64,128", "1,256,64,14", "7,3,64,224")
    # B5: seed 003's diagram is not in its text; a net that starts as its caption says (Conv2d(3, 5, 3))
    b5_spec: str = "3x28x28 | conv 3 5 relu | maxpool 2 | conv 3 10 relu | maxpool 2 | flatten | fc 10"
    erf_samples: int = 4  # random inputs averaged for B2's empirical receptive field


SCALES: dict[str, dict[str, Any]] = {"smoke": {"erf_samples": 1}, "small": {}, "full": {}}


class Checks:
    """Collects every formula-vs-measured row so the report and the summary can count them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def spec(self, text: str, section: str, batch: int = 1) -> tuple[Any, Any, list[dict[str, Any]]]:
        spec, analysis, rows = check_spec(text, batch=batch)
        self.rows += [{"section": section, **r} for r in rows]
        return spec, analysis, rows

    def add(self, section: str, what: str, formula: str, expected: Any, measured: Any) -> None:
        self.rows.append(
            {
                "section": section,
                "layer": "",
                "quantity": what,
                "formula": formula,
                "closed_form": expected,
                "measured": measured,
                "match": expected == measured,
            }
        )


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "layer": r["layer"],
            "quantity": r["quantity"],
            "formula": r["formula"],
            "measured": r["measured"],
            "match": "yes" if r["match"] else "NO",
        }
        for r in rows
    ]


def _layer_totals(spec: Any, analysis: Any) -> list[dict[str, Any]]:
    from torchdojo.calc.speccheck import measured

    out = []
    for layer in spec.layers:
        m = measured(analysis, layer)
        out.append(
            {
                "layer": f"{layer.index}: {layer.text}",
                "output": "x".join(map(str, m["out"])),
                "params": m["params"],
                "MACs": m["macs"],
                "rf": "x".join(str(int(v)) for v in m["rf"]) if m["rf"] else "all",
            }
        )
    return out


def b1(cfg: Config, ctx: Context, checks: Checks) -> None:
    ctx.report.heading("B1. A KxK, stride-1, same-padding conv from M to N channels on HxW")
    ctx.report.text(
        "Each of the N filters has K*K*M weights and one bias: params = K*K*M*N + N (K*K*M*N without bias). "
        "Same padding keeps the output HxW, and each output value is one K*K*M dot product: multiplies = "
        "H*W*K*K*M*N (adds the same number, so FLOPs = 2*H*W*K*K*M*N; the padded zeros are multiplied too). "
        "Checked on these cases by building the conv and measuring it:"
    )
    for case in cfg.b1_cases:
        k, m, n, h = (int(v) for v in case.split(","))
        checks.spec(f"{m}x{h}x{h} | conv {k} same {n}", "B1")
    ctx.report.table(
        _table(
            [r for r in checks.rows if r["section"] == "B1" and r["quantity"] in ("params", "MACs", "output shape")]
        ),
        caption="B1: formula vs measured",
    )


def b2_b3(cfg: Config, ctx: Context, checks: Checks) -> dict[str, Any]:
    ctx.report.heading(f"B2. Three 5x5 stride-2 convs (64, 128, 256 filters) on a {cfg.input} image")
    spec2, a2, rows2 = checks.spec(f"{cfg.input} | {B2_CONVS}", "B2")
    per2 = _layer_totals(spec2, a2)
    sides = " -> ".join([str(spec2.input_shape[1])] + [str(layer.out_shape[1]) for layer in spec2.layers])
    fields = [layer.rf for layer in spec2.layers]
    rf = "x".join(str(int(v)) for v in fields[-1])
    ctx.report.text(
        f"Output size (H + 2P - K)//S + 1: {sides}. Params K*K*M*N + N, multiplies Ho*Wo*K*K*M*N. Receptive "
        "field: r_l = r_(l-1) + (K - 1)*j_(l-1), j_l = j_(l-1)*S, from r_0 = j_0 = 1: "
        f"{', '.join(str(int(f[0])) for f in fields)}, so one unit of the last layer sees a {rf} window of the "
        f"input (through the zero padding at the borders). Totals: {a2.total_params:,} params, {a2.macs:,} "
        "multiplies."
    )
    ctx.report.table(per2, caption="B2 per layer (measured)")
    ctx.report.table(_table(rows2), caption="B2: every closed form against the measured value")
    last = a2.layers[-1]
    grad = gradient_map(a2.gm, a2.input_shape, last.node, samples=cfg.erf_samples, seed=cfg.seed)
    measured_rf = support(grad)
    checks.add(
        "B2",
        "empirical field (gradient support)",
        "nonzero extent of d unit / d input",
        tuple(int(v) for v in fields[-1]),
        measured_rf,
    )
    img = (grad / grad.max()).unsqueeze(0)
    figures.image_grid(
        [img],
        ctx.run.figure_path("b2_erf"),
        ncols=1,
        titles=[f"support {measured_rf[0]}x{measured_rf[1]} px"],
        cell=3.5,
    )
    ctx.report.figure(
        "b2_erf.png",
        f"B2: |gradient| of the centre unit of layer 3 w.r.t. the {cfg.input} input (mean over random "
        f"inputs); the analytic receptive field is {rf}",
    )
    ctx.report.table(_table(checks.rows[-1:]), caption="B2: the receptive field measured by gradients")

    ctx.report.heading("B3. Depthwise-separable convolution, and B2 with its 2nd and 3rd convs separable")
    ctx.report.text(
        "A depthwise KxK conv (one filter per input channel) then a pointwise 1x1 conv (M -> N): params "
        "K*K*M + M*N (+ M + N biases), multiplies Ho*Wo*K*K*M + Ho*Wo*M*N. Against a normal conv the cost "
        "ratio is (K*K*M + M*N)/(K*K*M*N) = 1/N + 1/K^2."
    )
    spec3, a3, rows3 = checks.spec(f"{cfg.input} | {B3_CONVS}", "B3")
    per3 = _layer_totals(spec3, a3)
    side = []
    for l2, l3 in zip(per2, per3, strict=True):
        side.append(
            {
                "layer": l2["layer"].split(":")[0],
                "B2 params": l2["params"],
                "B3 params": l3["params"],
                "params ratio": l3["params"] / l2["params"],
                "B2 MACs": l2["MACs"],
                "B3 MACs": l3["MACs"],
                "MACs ratio": l3["MACs"] / l2["MACs"],
                "rf": l3["rf"],
            }
        )
    ctx.report.table(side, caption="B2 vs B3 side by side (measured); the receptive field is unchanged")
    for i, n in ((1, 128), (2, 256)):
        expect = round(1 / n + 1 / 25, 6)
        ratio = per3[i]["MACs"] / per2[i]["MACs"]
        checks.add("B3", f"layer {i + 1} MACs ratio", f"1/N + 1/K^2 = 1/{n} + 1/25", expect, round(ratio, 6))
    ctx.report.table(_table(rows3 + checks.rows[-2:]), caption="B3: closed forms against measured values")
    return {"b2": per2, "b3": per3, "a2": a2, "a3": a3}


def b4(cfg: Config, ctx: Context, checks: Checks) -> list[dict[str, Any]]:
    ctx.report.heading(f"B4. A {cfg.classes}-class softmax head: the FC share, and how to shrink it")
    rows = []
    for base, convs in (("B2", B2_CONVS), ("B3", B3_CONVS)):
        for way, head in (
            ("flatten", "flatten"),
            ("1x1 conv to 16 channels", "conv 1 16 relu | flatten"),
            ("global average pool", "gap"),
        ):
            spec, a, _ = checks.spec(f"{cfg.input} | {convs} | {head} | fc {cfg.classes} softmax", "B4")
            fc = [r for r in a.layers if r.name.startswith(spec.layers[-1].name)]
            fc_params = sum(r.params for r in fc)
            rows.append(
                {
                    "convs": base,
                    "head": way,
                    "features into FC": spec.layers[-1].in_shape[0],
                    "total params": a.total_params,
                    "FC params": fc_params,
                    "FC share": fc_params / a.total_params,
                    "total MACs": a.macs,
                }
            )
    ctx.report.table(rows, caption="total params and the FC layer's share (measured)")
    flat, gap = rows[0], rows[2]
    ctx.report.text(
        f"After Flatten the FC layer sees {flat['features into FC']:,} features, so it holds "
        f"{flat['features into FC']:,}*{cfg.classes} + {cfg.classes} = {flat['FC params']:,} parameters: "
        f"{flat['FC share']:.1%} of B2's network and {rows[3]['FC share']:.1%} of B3's (whose convs are "
        "cheaper). Ways to reduce it: global average pooling (one feature per channel: "
        f"{gap['features into FC']}*{cfg.classes} + {cfg.classes} = {gap['FC params']:,} FC params, and the "
        "head becomes independent of the input size), a 1x1 conv that reduces the channels before "
        "flattening, or more downsampling (stride/pooling) before the head. Average pooling discards where "
        "in the image a feature fired, and the last layer's field is still small next to the image, so in "
        "practice one adds depth (or dilation) to grow the field before pooling."
    )
    return rows


def b5(cfg: Config, ctx: Context, checks: Checks) -> list[dict[str, Any]]:
    ctx.report.heading("B5. Tensor sizes through a small conv net for a b x 3 x 28 x 28 input")
    spec, a, rows = checks.spec(cfg.b5_spec, "B5", batch=2)
    shapes = [
        {
            "layer": f"{layer.index}: {layer.text}",
            "output": "b x " + " x ".join(map(str, layer.out_shape)),
            "formula": next((f.text() for k, f in layer.closed.items() if k.startswith("Ho")), ""),
        }
        for layer in spec.layers
    ]
    ctx.report.text(
        f"Spec: {cfg.b5_spec} (set b5_spec to the diagram's net; the seed's text names "
        "Conv2d(3, 5, 3) but its diagram is not in the text). Output side = (H + 2P - K)//S + 1; "
        "measured on a batch of 2, shown with the batch as b."
    )
    ctx.report.table(shapes, caption="B5: output tensor size after each layer")
    ctx.report.table(
        _table([r for r in rows if r["quantity"] in ("output shape", "Ho=Wo", "out")]),
        caption="B5: formulas against measured shapes",
    )
    return shapes


def b6(ctx: Context, checks: Checks) -> list[dict[str, Any]]:
    ctx.report.heading("B6. The parameter tensors of RNNCell(input_size=64, hidden_size=256, bias=True)")
    cell = nn.RNNCell(64, 256, bias=True)
    tensors = [
        {
            "name": n,
            "shape": " x ".join(map(str, p.shape)),
            "numel": p.numel(),
            "role": {
                "weight_ih": "W_ih: input -> hidden",
                "weight_hh": "W_hh: hidden -> hidden",
                "bias_ih": "b_ih",
                "bias_hh": "b_hh",
            }[n],
        }
        for n, p in cell.named_parameters()
    ]
    ctx.report.text(
        "h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh): four tensors, two biases (PyTorch keeps both, as cuDNN does)."
    )
    ctx.report.table(tensors, caption="RNNCell(64, 256) parameters, read from the module")
    _, _, rows = checks.spec("64 | rnncell 64 256", "B6")
    checks.add(
        "B6",
        "tensor shapes",
        "(H, I), (H, H), (H,), (H,)",
        ["256 x 64", "256 x 256", "256", "256"],
        [t["shape"] for t in tensors],
    )
    ctx.report.table(_table(rows + checks.rows[-1:]), caption="B6: formula vs measured")
    return tensors


def b7(ctx: Context, checks: Checks) -> list[dict[str, Any]]:
    ctx.report.heading("B7. Output depth of YOLOv1 and YOLOv3 for 80 classes")
    heads = [
        ("YOLOv1 (S=7, B=2 boxes per cell)", "4096 | yolo v1 classes=80 boxes=2 grid=7"),
        ("YOLOv3, scale 1 (13x13 at 416 px)", "1024x13x13 | yolo v3 classes=80"),
        ("YOLOv3, scale 2 (26x26)", "512x26x26 | yolo v3 classes=80"),
        ("YOLOv3, scale 3 (52x52)", "256x52x52 | yolo v3 classes=80"),
    ]
    rows = []
    for name, text in heads:
        spec, a, _ = checks.spec(text, "B7")
        depth = spec.layers[-1].closed["depth"]
        out = a.layers[-1].out_shape[1:]
        boxes = out[1] * out[2] * (2 if "v1" in text else 3)
        rows.append(
            {
                "head": name,
                "depth formula": depth.text(),
                "output (measured)": " x ".join(map(str, out)),
                "boxes predicted": boxes,
            }
        )
    ctx.report.table(rows, caption="B7: depth per grid cell, built and measured")
    ctx.report.text(
        "YOLOv1 predicts B boxes (x, y, w, h, confidence) per cell but one set of C class probabilities per "
        "cell: depth 5B + C = 90. YOLOv3 predicts class scores per anchor box (3 anchors per scale, each "
        "with its own "
        "objectness and 80 independent sigmoid class scores): depth 3*(5 + 80) = 255, at three scales."
    )
    return rows


def b8(ctx: Context, checks: Checks) -> dict[str, int]:
    ctx.report.heading("B8. Seed 002's hand counts, rebuilt and measured")
    totals = {}
    for key, text in (("mlp", B8_MLP), ("cnn", B8_CNN)):
        spec, a, _ = checks.spec(text, "B8")
        per, groups = _layer_totals(spec, a), []
        for row in per:  # the seed's "layer" = a Linear/Conv with the BatchNorm after it
            kind = row["layer"].split(": ")[1].split()[0]
            if kind in ("fc", "conv"):
                groups.append({"layer": row["layer"], "output": row["output"], "params": row["params"]})
            elif groups:  # bn adds its 2*C parameters; relu, pool and dropout only change the output
                groups[-1]["params"] += row["params"]
                groups[-1]["layer"] += f" + {kind}"
                groups[-1]["output"] = row["output"]
        hand, hand_total = B8_SEED[key]
        for g, h in zip(groups, hand, strict=True):
            g["seed's count"] = h
            checks.add("B8", f"{key} {g['layer']}", "seed 002 by hand", h, g["params"])
        checks.add("B8", f"{key} total", "seed 002 by hand", hand_total, a.total_params)
        totals[key] = a.total_params
        ctx.report.text(f"{key.upper()}: {text}")
        ctx.report.table(
            groups,
            caption=f"B8 {key.upper()}: per-layer parameters, measured vs the seed's hand "
            f"count (total {a.total_params:,}; seed: {hand_total:,})",
        )
    return totals


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    checks = Checks()
    ctx.report.text(
        "Every network below is written in calc's spec language (see `torchdojo calc --help`), "
        "built into real PyTorch modules and measured from its torch.fx graph; every closed-form "
        "formula is then compared with the measured value. Multiplies = MACs."
    )
    b1(cfg, ctx, checks)
    b23 = b2_b3(cfg, ctx, checks)
    b4_rows = b4(cfg, ctx, checks)
    b5(cfg, ctx, checks)
    b6(ctx, checks)
    b7(ctx, checks)
    b8_totals = b8(ctx, checks)
    bad = [r for r in checks.rows if not r["match"]]
    ctx.report.heading("All checks")
    ctx.report.text(f"{len(checks.rows)} formula-vs-measured checks, {len(bad)} mismatches.")
    if bad:
        ctx.report.warning("mismatches: " + "; ".join(f"{r['section']} {r['layer']} {r['quantity']}" for r in bad))
    return {
        "checks": len(checks.rows),
        "mismatches": len(bad),
        "b2": [{k: v for k, v in r.items()} for r in b23["b2"]],
        "b3": b23["b3"],
        "b2_macs": b23["a2"].macs,
        "b3_macs": b23["a3"].macs,
        "b4": b4_rows,
        "b8": b8_totals,
    }
