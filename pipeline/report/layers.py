"""layers.md and layers.png: `bnpipe layers`' record as a person reads it.

The Markdown leads with the verdict (the culprit and what it costs), then the two tables: the
layers quantized one at a time (where error is made), and every operator output of the integer
model (where error shows). The plot puts the two side by side, with the culprit's channels.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from pipeline.report.markdown import md_table
from pipeline.store.artifacts import atomic_path, jsonable

# Below this share of the int8 range, a channel gets fewer than ~25 of the 256 levels.
FEW_LEVELS_SHARE = 0.1
CULPRIT_COLOR, OTHER_COLOR = "#c0392b", "#2e86c1"
PYPLOT_JOIN_S = 30  # importing pyplot takes ≈ 0.5 s; the block's end waits at most this long


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def pyplot_loading() -> Iterator[None]:
    """Import matplotlib's pyplot in a thread during the block (while this process waits for
    LiteRT's child, the GIL is free), and wait for it at the block's end, whatever happened, so
    that no thread is left importing at exit."""
    thread = threading.Thread(target=_pyplot, name="bnpipe-pyplot-import", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(PYPLOT_JOIN_S)


def short_name(tensor: str, op: str = "") -> str:
    """The Keras layer a converter's tensor name points at: 'model/dense_1/MatMul;…' → 'dense_1';
    `op` in lower case for a name with no layer in it ('StatefulPartitionedCall:0')."""
    parts = tensor.split(";")[0].split("/")
    if len(parts) < 2:
        return op.lower() or parts[0]
    name = parts[-2] if len(parts) >= 3 else parts[-1]
    return name if len(name) <= 32 else name[:31] + "…"


def _db(v) -> str:
    return "exact" if v is None else f"{v:.1f}"


def _pct(v, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f} %"


def _label(e: dict) -> str:
    return f"{e['op']} #{e['op_index']} (`{short_name(e['tensor'], e['op'])}`)"


def _why(e: dict) -> str:
    """One sentence on what the culprit's output figures show."""
    median = e["range_used_median_channel"]
    if median is not None and median < FEW_LEVELS_SHARE:
        return (
            f"its output channels span a median {_pct(median, 1)} of the {e['dtype']} range (worst "
            f"{_pct(e['range_used_worst_channel'], 1)}, channel {e['worst_channel']}): the "
            f"per-tensor scale is set by a few wide channels and the others get about "
            f"{max(1, round(255 * median))} levels"
        )
    if e["clipped"] > 0.01:
        return f"{_pct(e['clipped'], 1)} of its output values lie beyond its {e['dtype']} range"
    return (
        f"its output SQNR is {_db(e['sqnr_db'])} dB ({_db(e['sqnr_db_worst_channel'])} dB in "
        "its worst channel)"
    )


def _verdict(worst: dict, alone: dict) -> str:
    if alone["agreement_cost"] == 0 and not alone["accuracy_cost_pp"] > 0:
        return (
            f"**No layer alone changes a top-1 class.** The one that moves the model's output "
            f"most is {_label(worst)} (output SQNR {_db(alone['output_sqnr_db'])} dB); "
            f"{_why(worst)}."
        )
    return (
        f"**Culprit: {_label(worst)}.** Quantized alone (every other layer float) it costs "
        f"{_pct(alone['agreement_cost'])} agreement and {alone['accuracy_cost_pp']:.2f} pp "
        f"accuracy; {_why(worst)}."
    )


def layers_markdown(record: dict, plot: Path | None) -> str:
    rec = jsonable(record)
    worst, alone = rec["worst"], rec["worst"]["alone"]
    drop = 100 * (rec["float_accuracy"] - rec["int8_accuracy"])
    sim = rec["simulation"]
    lines = [
        f"# bnpipe layers: `{Path(rec['model']).name}` against `{Path(rec['reference']).name}`",
        "",
        f"On {rec['n']:,} test samples of {rec['dataset']['name']}: the float twin "
        f"{_pct(rec['float_accuracy'])}, the integer model {_pct(rec['int8_accuracy'])} "
        f"({-drop:+.2f} pp), top-1 agreement {_pct(rec['agreement'])}.",
        "",
        _verdict(worst, alone),
        "",
        "## Each layer quantized alone (the others float): where error is made",
        "",
        _alone_table(rec),
        "## Every operator output of the integer model: where error shows",
        "",
        "Errors of earlier layers included. Steps: the error in units of the tensor's scale "
        "(rounding alone: rms 0.29). Range used: the share of the integer grid the float values "
        "span (worst channel).",
        "",
        _output_table(rec),
        f"Check of the method: the float twin with every layer and the input quantized as in the "
        f"file agrees with it on {_pct(sim['agreement'])} of top-1; its last output codes differ "
        f"by at most {sim['steps_max']} step(s) ({_pct(sim['share_differ'], 3)} of them).",
        "",
    ]
    if plot is not None:
        lines += [f"![layers]({plot.name})", ""]
    return "\n".join(lines)


def _alone_table(rec: dict) -> str:
    rows = []
    for e in sorted(rec["layers"], key=lambda e: e["alone"]["rank"]):
        a = e["alone"]
        rows.append([a["rank"], _label(e), _pct(a["agreement_cost"]),
                     f"{a['accuracy_cost_pp']:+.2f}", _db(a["sqnr_db"]),
                     _db(a["output_sqnr_db"])])  # fmt: skip
    headers = ["rank", "layer", "agreement lost", "accuracy lost, pp", "its output SQNR, dB",
               "model output SQNR, dB"]  # fmt: skip
    return md_table(headers, rows, "rlrrrr")


def _output_table(rec: dict) -> str:
    rows = []
    for e in rec["layers"]:
        rows.append([
            e["op_index"], e["op"], f"`{short_name(e['tensor'], e['op'])}`",
            f"{_db(e['sqnr_db'])} ({_db(e['sqnr_db_worst_channel'])})",
            f"{e['error_steps_rms']:.2f} / {e['error_steps_max']:.1f}",
            f"{_pct(e['range_used'], 1)} ({_pct(e['range_used_worst_channel'], 1)})",
            _pct(e["clipped"]), f"{e['scale']:.4g}", e["zero_point"],
        ])  # fmt: skip
    headers = ["#", "op", "tensor", "SQNR dB (worst channel)", "error steps rms / max",
               "range used (worst channel)", "clipped", "scale", "zero point"]  # fmt: skip
    return md_table(headers, rows, "rllrrrrrr")


def layers_plot(record: dict, dest: Path) -> Path:
    """Three panels: SQNR of each operator output (where error shows), the agreement each layer
    alone costs (where it is made), and the range each channel of the culprit's output uses."""
    rec = jsonable(record)
    plt = _pyplot()
    layers, worst = rec["layers"], rec["worst"]
    labels = [f"#{e['op_index']} {short_name(e['tensor'], e['op'])}" for e in layers]
    colors = [CULPRIT_COLOR if e["op_index"] == worst["op_index"] else OTHER_COLOR for e in layers]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    ax = axes[0]
    ax.bar(range(len(layers)), [e["sqnr_db"] or 0 for e in layers], color=OTHER_COLOR,
           label="whole tensor")  # fmt: skip
    ax.plot(range(len(layers)), [e["sqnr_db_worst_channel"] or 0 for e in layers], "kv",
            label="worst channel")  # fmt: skip
    ax.set_title("Where error shows: SQNR of each output\n(integer model, earlier errors in)",
                 fontsize=9)  # fmt: skip
    ax.set_ylabel("SQNR vs float twin, dB")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.bar(range(len(layers)), [100 * e["alone"]["agreement_cost"] for e in layers], color=colors)
    ax.set_title("Where error is made: agreement lost\nwith only this layer quantized", fontsize=9)
    ax.set_ylabel("top-1 agreement lost, %")
    for a in axes[:2]:
        a.set_xticks(range(len(layers)), labels, rotation=30, ha="right", fontsize=7)
    ax = axes[2]
    shares = worst["range_used_per_channel"]
    ax.bar(range(len(shares)), [100 * s for s in shares], color=CULPRIT_COLOR, width=1.0)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("output channel")
    ax.set_ylabel(f"share of the {worst['dtype']} range used, %")
    ax.set_title(f"The culprit's output channels\n{_label(worst).replace('`', '')}", fontsize=9)
    # The constrained layout already fits the figure: no bbox_inches="tight" (report.save_figure),
    # which draws it a second time (≈ 0.3 s of the ≈ 0.8 s this plot costs).
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
    return dest
