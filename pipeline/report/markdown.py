"""Human-facing output: Markdown tables a person reads in seconds, PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.store import files
from pipeline.store.artifacts import atomic_path, jsonable


def md_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub Markdown table. `align`: one of l/r per column (default: first left, rest right)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, dest: Path) -> Path:
    plt = _pyplot()
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return dest


# --- inspect ----------------------------------------------------------------------------------


def tflite_json(info) -> str:
    """A TfliteInfo as indented JSON, with its operator counts."""
    import dataclasses
    import json

    return json.dumps(dataclasses.asdict(info) | {"op_counts": info.op_counts()}, indent=2)


def tflite_text(info) -> str:
    """A TfliteInfo as a person reads it: size, operators, then one line per tensor."""
    lines = [
        f"{info.path}: {info.size_bytes} bytes, schema v{info.version}, "
        f"{len(info.operators)} operators, {len(info.tensors)} tensors"
    ]
    if info.metadata:
        pre = info.metadata.get("preprocessing", {})
        lines.append(
            f"bnpipe metadata: mode {info.metadata.get('mode')}, inputs divided by "
            f"{pre.get('divisor')}, {info.metadata.get('num_classes')} classes"
        )
    lines.append("operators: " + ", ".join(f"{o.index}:{o.op}" for o in info.operators))
    lines.append(f"{'#':>3} {'name':<44} {'shape':<12} {'dtype':<8} quantization")
    for t in info.tensors:
        role = (
            " (input)" if t.index in info.inputs else " (output)" if t.index in info.outputs else ""
        )
        q = ""
        if t.scale:
            q = (
                f"scale={t.scale[0]:.6g} zp={t.zero_point[0]}"
                if len(t.scale) == 1
                else f"per-channel ×{len(t.scale)}"
            )
        name = (t.name[:40] + "…") if len(t.name) > 41 else t.name
        lines.append(f"{t.index:>3} {name + role:<44} {t.shape!s:<12} {t.dtype:<8} {q}")
    return "\n".join(lines)


# --- verify -----------------------------------------------------------------------------------


def _a_failed_gate(skipped: dict, failures: list[str]) -> bool:
    """Whether a run that did not happen is already listed under "Failed gates" (verify names a
    runtime's failure on an integer file there, and a file that ran nowhere): once is enough."""
    if not skipped["reason"].startswith("failed:"):
        return False
    mine = (f"{skipped['candidate']} on {skipped['target']}:", f"{skipped['candidate']} ran on no")
    return any(f.startswith(mine) for f in failures)


def verify_markdown(record: dict, plots: list[Path]) -> str:
    """verify.md: the verdict, failed gates, reference and gates, the table, what did not run."""
    if record.get("tasks"):  # an output that is not a classifier's (report/tasks.py)
        from pipeline.report.tasks import task_markdown

        return task_markdown(record, md_table)
    rec = jsonable(record)
    verdict = "PASS — fit to ship" if rec["passed"] else "FAIL — not fit to ship"
    ref = rec["reference"]
    cfg = rec["config"]
    lines = [f"# bnpipe verify: **{verdict}**", ""]
    if rec["failures"]:
        lines += ["Failed gates:", ""] + [f"- {f}" for f in rec["failures"]] + [""]
    lines += [
        f"Reference: `model.keras` (float, with BN) on TensorFlow, host CPU — accuracy "
        f"**{ref['accuracy']:.2%}** on {rec['n']} test samples of {rec['dataset']['name']}.",
        f"Gates: accuracy drop ≤ {cfg['max_drop']:g} pp, agreement ≥ {cfg['min_agreement']:.2%}, "
        f"integer outputs within {cfg['max_lsb']} logit step(s) of host-ref (carried through "
        f"SOFTMAX: ≤ the row's allowed output steps) where the kernels are reference ones "
        f"(host-ref's, TFLM's); optimized kernels' distance is shown, not gated.",
        "",
    ]
    lines.append(_verify_table(rec["rows"]))
    not_run = [s for s in rec["skipped"] if not _a_failed_gate(s, rec["failures"])]
    if not_run:
        lines += (
            ["Not run:", ""]
            + [f"- {s['target']} ({s['candidate']}): {s['reason']}" for s in not_run]
            + [""]
        )
    for p in plots:
        lines.append(f"![{p.stem}]({p.name})")
    lines += [
        "",
        "Δ is candidate − original on the same samples (paired); McNemar's exact test asks "
        "whether the two err on different samples more often than chance would.",
        "",
    ]
    return "\n".join(lines)


def _verify_table(rows: list[dict]) -> str:
    """One row per candidate × target: accuracy, paired difference, McNemar, agreement, LSB."""
    table = []
    for r in rows:
        lo, hi = r["accuracy_ci"]
        dlo, dhi = r["diff_ci_pp"]
        if r["lsb_max"] is None:
            lsb = "—"
        elif r.get("lsb_gated", True):
            lsb = f"{r['lsb_max']} of ≤{r['lsb_allowed']} ({r['lsb_share']:.1%})"
        else:  # optimized kernels: reported, not gated
            lsb = f"{r['lsb_max']}, not gated ({r['lsb_share']:.1%})"
        table.append(
            [
                f"`{r['candidate']}`",
                r["target"],
                f"{r['accuracy']:.2%} [{lo:.1%}, {hi:.1%}]",
                f"{r['diff_pp']:+.2f} [{dlo:+.2f}, {dhi:+.2f}]",
                f"{r['mcnemar_p']:.3g}",
                f"{r['agreement']:.2%}",
                lsb,
                "✗ " + ",".join(r["failures"]) if r["failures"] else "✓",
            ]
        )
    headers = [
        "candidate",
        "target",
        "accuracy [95 % CI]",
        "Δ pp vs original [95 % CI]",
        "McNemar p",
        "agreement",
        "max LSB vs host-ref (share ≠)",
        "gate",
    ]
    return md_table(headers, table, "llrrrrrl")


def verify_plots(record: dict, out: Path) -> list[Path]:
    """verify_accuracy.png (accuracy ± 95 % CI per candidate × target) and
    verify_disagreement.png (which reference classes each candidate disagrees on)."""
    rec = jsonable(record)
    rows = rec["rows"]
    if not rows or rec.get("tasks"):  # another task's measures are verify.md's table
        return []
    plt = _pyplot()
    paths = []
    labels = [
        f"{r['candidate'].removeprefix('model_').removesuffix('.tflite')}\n{r['target']}"
        for r in rows
    ]
    acc = [100 * r["accuracy"] for r in rows]
    err = [
        [100 * (r["accuracy"] - r["accuracy_ci"][0]) for r in rows],
        [100 * (r["accuracy_ci"][1] - r["accuracy"]) for r in rows],
    ]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4))
    colors = ["#c0392b" if r["failures"] else "#2e86c1" for r in rows]
    ax.bar(range(len(rows)), acc, yerr=err, color=colors, capsize=3)
    ref = 100 * rec["reference"]["accuracy"]
    ax.axhline(ref, color="black", lw=1, ls="--", label=f"original (model.keras) {ref:.2f} %")
    gate = ref - rec["config"]["max_drop"]
    ax.axhline(gate, color="grey", lw=1, ls=":", label="max-drop gate")
    lo = min(min(a - e for a, e in zip(acc, err[0], strict=True)), gate) - 1
    hi = max(a + e for a, e in zip(acc, err[1], strict=True)) + 0.5
    ax.set_ylim(max(0, lo), min(100.5, hi))
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy, % (95 % CI)")
    ax.set_title("Accuracy per candidate and target (red: a gate failed)")
    ax.legend(fontsize=7, loc="lower left")
    paths.append(save_figure(fig, out / files.VERIFY_ACCURACY_PLOT))
    paths.append(_disagreement_plot(plt, rows, out / files.VERIFY_DISAGREEMENT_PLOT))
    return paths


def _disagreement_plot(plt, rows: list[dict], path: Path) -> Path:
    """verify_disagreement.png: which reference classes each candidate disagrees on."""
    dis = [r for r in rows if any(r["disagreement_by_class"])]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if dis:
        n_cls = len(dis[0]["disagreement_by_class"])
        width = 0.8 / len(dis)
        for i, r in enumerate(dis):
            ax.bar(
                [c + i * width for c in range(n_cls)],
                r["disagreement_by_class"],
                width=width,
                label=f"{r['candidate']} · {r['target']}",
            )
        ax.set_xticks([c + 0.4 - width / 2 for c in range(n_cls)], [str(c) for c in range(n_cls)])
        ax.legend(fontsize=6)
    else:
        ax.text(
            0.5,
            0.5,
            "every candidate agrees with the original on every test sample",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("class predicted by the original model")
    ax.set_ylabel("samples with another top-1")
    ax.set_title("Where candidates disagree with the original")
    return save_figure(fig, path)


# --- bench ------------------------------------------------------------------------------------


def _fmt_us(v: float) -> str:
    return f"{v:,.1f} µs" if v < 1000 else f"{v / 1000:,.2f} ms"


def bench_markdown(record: dict, plots: list[Path]) -> str:
    """bench.md: the summary table per model, the Keras baseline, then every configuration."""
    rec = jsonable(record)
    m = rec.get("machine", {})
    cfg = rec["config"]
    lines = [
        "# bnpipe bench",
        "",
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; LiteRT with its default delegate "
        f"(XNNPACK); inputs: {rec['sample']}. Medians of {cfg['runs']} timed invokes "
        f"({cfg.get('max_seconds', '?')} s per configuration at most: see the timed invokes "
        f"column) after {cfg['warmup']} warm-up ones, models interleaved over "
        f"{cfg['rounds']} rounds. Ratios are to `{rec['baseline']}` in the same run.",
        "",
        _bench_summary(rec),
        *_mcu_view(rec),
        *_keras_baseline(rec),
        "",
        "## Every configuration",
        "",
        _every_configuration(rec),
    ]
    for rem in rec.get("remote", []):
        res = rem["report"].get("results", [])
        b1 = next((r for r in res if r["batch"] == 1), None)
        timing = (
            f"; batch-1 median {_fmt_us(b1['latency_us']['median'])}"
            if b1 and not rem["emulated"]
            else ""
        )
        lines.append(f"- {rem['target']} `{rem['model']}`: {rem['timing_meaning']}{timing}")
    for p in plots:
        lines += ["", f"![{p.stem}]({p.name})"]
    lines.append("")
    return "\n".join(lines)


def _find(rows: list[dict], model: str, threads: int | None, batch: int, runtime=None):
    """The bench row of `model` at (threads, batch) (threads None: any), or None."""
    for r in rows:
        if (
            r["model"] == model
            and r["batch"] == batch
            and (threads is None or r["threads"] == threads)
            and (runtime is None or r["runtime"] == runtime)
        ):
            return r
    return None


def _bench_summary(rec: dict) -> str:
    """One row per .tflite: size, cold start, latency at the smallest batch and fewest threads
    (batch 1, 1 thread by default), bulk throughput, memory, arena."""
    rows = rec["rows"]
    tmax, bmax = max(rec["threads_used"]), max(rec["config"]["batch_sizes"])
    tmin, bmin = min(rec["threads_used"]), min(rec["config"]["batch_sizes"])
    table = []
    for name, info in rec["models"].items():
        if name == files.MODEL:
            continue
        lat, thr = _find(rows, name, tmin, bmin), _find(rows, name, tmax, bmax)
        arena = info.get("tflm_arena", {})
        rss = info.get("peak_rss_added_kb")
        table.append(
            [
                f"`{name}`",
                f"{info['bytes']:,} B ({info.get('size_ratio', float('nan')):.2f}×)",
                f"{info['init_ms']:.2f} ms",
                _fmt_us(info["first_invoke_us"]),
                f"{_fmt_us(lat['latency_us']['median'])} / {_fmt_us(lat['latency_us']['p99'])}"
                + (f" ({lat['latency_ratio']:.2f}×)" if "latency_ratio" in lat else ""),
                f"{thr['throughput_per_s']:,.0f}/s"
                + (f" ({thr['throughput_ratio']:.2f}×)" if "throughput_ratio" in thr else ""),
                f"{rss:,} KiB" if rss is not None else "—",
                f"{arena['arena_bytes_used']:,} B" if "arena_bytes_used" in arena else "—",
                f"{info['macs']:,}" if info.get("macs") is not None else "—",
            ]
        )
    headers = [
        "model",
        "size (vs float32)",
        "init",
        "first invoke",
        f"batch-{bmin} latency median / p99, {tmin} thread{'s' if tmin > 1 else ''} (vs float32)",
        f"throughput, batch {bmax}, {tmax} threads (vs float32)",
        "peak RSS added",
        "TFLM arena",
        "MACs",
    ]
    return md_table(headers, table, "lrrrrrrrr")


def _mcu_view(rec: dict) -> list[str]:
    """What an integer model needs on a microcontroller: its bytes in flash, TFLM's tensor arena
    in RAM, and the MACs of one inference (one sample per invoke, as on an MCU)."""
    table = []
    for name, info in rec["models"].items():
        arena = info.get("tflm_arena", {})
        if not info.get("integer"):
            continue
        table.append(
            [
                f"`{name}`",
                f"{info['bytes']:,} B",
                f"{arena['arena_bytes_used']:,} B"
                if "arena_bytes_used" in arena
                else f"— ({arena.get('error', 'not measured')})",
                f"{info['macs']:,}" if info.get("macs") is not None else "—",
            ]
        )
    if not table:
        return []
    headers = ["integer model", "flash (file bytes)", "RAM (TFLM arena)", "MACs per inference"]
    return [
        "",
        "## MCU view",
        "",
        md_table(headers, table, "lrrr"),
        "",
        "The arena is what TFLM allocated on this host (64-bit, reference kernels) for one "
        "sample; a 32-bit build needs a little less, optimized kernels may add scratch memory: "
        "size the device's arena with a margin and confirm it there. `bnpipe export --c-array` "
        "writes each model as a C/C++ array with this figure.",
    ]


def _keras_baseline(rec: dict) -> list[str]:
    rows = rec["rows"]
    kc = _find(rows, files.MODEL, None, 1, "keras model(x)")
    kp = _find(rows, files.MODEL, None, 1, "keras predict")
    i8 = _find(rows, files.tflite_name("int8"), 1, 1)
    if not (kc and kp):
        return []
    lines = [
        "",
        f"Keras baseline (`{files.MODEL}`, TensorFlow, host): `model(x)` on one sample "
        f"{_fmt_us(kc['latency_us']['median'])}, `model.predict(x)` on one sample "
        f"{_fmt_us(kp['latency_us']['median'])}.",
    ]
    if i8:
        fast = i8["latency_us"]["median"]
        lines.append(
            f"int8 TFLite batch-1 latency is **{kp['latency_us']['median'] / fast:,.0f}×** "
            f"below Keras `predict` and {kc['latency_us']['median'] / fast:,.0f}× below `model(x)`."
        )
    return lines


def _every_configuration(rec: dict) -> str:
    full = [
        [
            f"`{r['model']}`",
            r["runtime"],
            r["threads"] if r["threads"] else "—",
            r["batch"],
            _fmt_us(r["latency_us"]["median"]),
            _fmt_us(r["latency_us"]["p90"]),
            _fmt_us(r["latency_us"]["p99"]),
            f"{r['throughput_per_s']:,.0f}",
            f"{r['latency_ratio']:.2f}" if "latency_ratio" in r else "—",
            f"{r['throughput_ratio']:.2f}" if "throughput_ratio" in r else "—",
            f"{r['latency_us']['n']:,}",  # fewer than --runs where the time budget ended
        ]
        for r in rec["rows"]
    ]
    headers = [
        "model",
        "runtime",
        "threads",
        "batch",
        "median",
        "p90",
        "p99",
        "samples/s",
        "latency ÷ float32",
        "throughput ÷ float32",
        "timed invokes",
    ]
    return md_table(headers, full, "llrrrrrrrrr")


def bench_plots(record: dict, out: Path) -> list[Path]:
    """bench_latency.png and bench_throughput.png: median latency / throughput vs batch size."""
    rec = jsonable(record)
    plt = _pyplot()
    paths = []
    for key, fname, ylabel in (
        ("latency", files.BENCH_LATENCY_PLOT, "median latency per invoke (µs)"),
        ("throughput", files.BENCH_THROUGHPUT_PLOT, "throughput (samples/s)"),
    ):
        fig, axes = plt.subplots(
            1, len(rec["threads_used"]), figsize=(5 * len(rec["threads_used"]), 3.8), squeeze=False
        )
        for ax, th in zip(axes[0], rec["threads_used"], strict=True):
            series: dict[str, list] = {}
            for r in rec["rows"]:
                if r["threads"] in (th, None) and r["runtime"] != "keras predict":
                    label = r["model"] if r["threads"] else f"{r['model']} ({r['runtime']})"
                    series.setdefault(label, []).append(r)
            for label, rs in series.items():
                rs = sorted(rs, key=lambda r: r["batch"])
                ys = [
                    r["latency_us"]["median"] if key == "latency" else r["throughput_per_s"]
                    for r in rs
                ]
                ax.plot([r["batch"] for r in rs], ys, marker="o", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_title(
                f"{th} thread{'s' if th > 1 else ''} (Keras: TensorFlow's own threads)", fontsize=9
            )
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=6)
        paths.append(save_figure(fig, out / fname))
    return paths
