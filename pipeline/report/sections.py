"""One section of report.html per stage record: fold, export, verify, layers, bench, fit.

Each function takes the record as read from its JSON file and returns the section's HTML; a
record of another shape raises KeyError, TypeError … and html.build_page leaves the section
out with a note. Every string from a record goes through `esc` (directly or via tags.table).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.report.layers import short_name
from pipeline.report.svg import Axis, Bar, auto_axis, bar_chart, esc
from pipeline.report.tags import Raw, mark, nbytes, num, para, pct, section, table

TITLES = {
    "lineage": "Lineage",
    "fold": "Fold",
    "export": "Export",
    "verify": "Verify",
    "layers": "Layers",
    "bench": "Bench",
    "fit": "Fit",
}
DIRECTIONS = {"after": "backward, into the {} before it", "before": "forward, into the {} after it"}


def fold(rec: dict) -> str:
    rep = rec["report"]
    rtol = float(rep["rtol"])
    rows, bars = [], []
    for p in rep["pairs"]:
        rel = float(p["max_rel_diff"])
        where = DIRECTIONS.get(p["direction"], "{}").format(p.get("layer_class", "layer"))
        via = " → ".join(str(v) for v in p.get("via") or [])
        rows.append((p["bn"], p["layer"], where, via or "—", f"{rel:.2e}", mark(rel <= rtol)))
        bars.append(
            Bar(f"{p['bn']} → {p['layer']}", max(rel, 1e-12), f"{rel:.1e}", marked=rel > rtol)
        )
    body = para(
        f"{len(rep['pairs'])} BatchNormalization layer(s) folded, {len(rep['skipped'])} left. "
        f"End to end on {rep.get('sample_source', rep.get('samples'))}: the folded model's "
        f"outputs differ from the original's by at most {float(rep['output_max_rel_diff']):.2e} "
        f"(relative; tolerance {rtol:g}): {'proved' if rep['passed'] else 'NOT proved'}."
    )
    if bars:
        axis = Axis(1e-9, max(1e-3, max(b.value for b in bars) * 10), log=True, unit="rel. diff")
        body += bar_chart("Largest relative difference per folded layer", bars, axis, (rtol, "tol"))
        body += table(["BN", "folded into", "direction", "via", "max rel. diff", "proof"], rows)
    if rep["skipped"]:
        body += "<h3>Left in the model</h3>" + table(
            ["BN", "why it stays"], [(s["bn"], s["reason"]) for s in rep["skipped"]]
        )
    if rep.get("equalized"):
        body += "<h3>Cross-layer equalization</h3>" + table(
            ["first", "second", "channel range ratio before", "after"],
            [
                (e["first"], e["second"], num(e["range_ratio_before"]), num(e["range_ratio_after"]))
                for e in rep["equalized"]
            ],
            "llrr",
        )
    for failure in rep.get("failures") or []:
        body += f'<p class="fail">{esc(failure)}</p>'
    return section("fold", "Fold", body, rec.get("created"))


def export(rec: dict) -> str:
    modes = rec["modes"]
    rows, bars = [], []
    for mode, m in modes.items():
        ops = ", ".join(f"{k}×{v}" for k, v in (m.get("operators") or {}).items())
        rows.append(
            (
                mode,
                m["file"],
                nbytes(m["size_bytes"]),
                m["input"]["dtype"],
                ops,
                pct(m.get("tflite_accuracy")),
                pct(m.get("agreement_with_float")),
            )
        )
        bars.append(Bar(m["file"], float(m["size_bytes"]), nbytes(m["size_bytes"])))
    body = ""
    auto = rec.get("auto")
    if isinstance(auto, dict):
        body += para(f"Chosen: {auto['chosen']}. {auto['reason']}.")
        body += "<h3>Modes tried (auto, on the validation split)</h3>" + table(
            ["mode", "passed", "accuracy", "drop, pp", "agreement", "why"],
            [
                (
                    t["mode"],
                    mark(bool(t["passed"]), "yes", "no"),
                    pct(t.get("accuracy")),
                    num(t.get("drop_pp"), ".2f"),
                    pct(t.get("agreement")),
                    t.get("reason", ""),
                )
                for t in auto["trials"]
            ],
            "llrrrl",
        )
    else:
        body += para(f"Modes asked for: {', '.join(str(m) for m in rec['config']['modes'])}.")
    body += bar_chart("File size", bars, unit_axis(bars, "bytes"))
    body += "<h3>Files written</h3>" + table(
        ["mode", "file", "size", "input", "operators", "accuracy", "agreement with float"],
        rows,
        "llrllrr",
    )
    if rec.get("kept_batch_norms"):
        body += para(f"BatchNormalization kept as operators: {rec['kept_batch_norms']}")
    return section("export", "Export", body, rec.get("created"))


def unit_axis(bars: list[Bar], unit: str) -> Axis:
    axis = auto_axis([b.value for b in bars], unit=unit)
    return Axis(axis.low, axis.high, axis.log, unit)


def verify(rec: dict) -> str:
    config, rows = rec["config"], rec["rows"]
    ref = float(rec["reference"]["accuracy"])
    body = para(
        f"Reference: {rec['reference']['model']} on {rec['reference']['runtime']}, "
        f"{pct(ref)} on {int(rec['n'])} test samples. Gates: accuracy drop ≤ "
        f"{float(config['max_drop']):g} pp, agreement ≥ {pct(config['min_agreement'])}, integer "
        f"outputs within {config['max_lsb']} step(s) of host-ref where gated."
    )
    bars = [
        Bar(
            f"{r['candidate']} · {r['target']}",
            100 * float(r["accuracy"]),
            pct(r["accuracy"]),
            100 * float(r["accuracy_ci"][0]),
            100 * float(r["accuracy_ci"][1]),
            marked=bool(r["failures"]),
        )
        for r in rows
    ]
    if bars:
        low = min(b.low for b in bars if b.low is not None)
        axis = Axis(max(0.0, low - 2), min(100.0, max(b.high or 0 for b in bars) + 1), unit="%")
        body += bar_chart("Accuracy with its 95 % interval", bars, axis, (100 * ref, "original"))
    body += table(
        [
            "file",
            "target",
            "accuracy [95 % CI]",
            "Δ pp [95 % CI]",
            "McNemar p",
            "agreement",
            "only the original right",
            "output steps (allowed)",
            "gates",
        ],
        [_verify_row(r) for r in rows],
        "llrrrrrrl",
    )
    body += _samples_note(rows)
    if rec.get("skipped"):
        body += "<h3>Not run</h3>" + table(
            ["file", "target", "why"],
            [(s.get("candidate", "*"), s.get("target"), s.get("reason")) for s in rec["skipped"]],
        )
    if rec.get("failures"):
        items = "".join(f"<li>{esc(f)}</li>" for f in rec["failures"])
        body += f'<h3 class="fail">Failed gates</h3><ul>{items}</ul>'
    return section("verify", "Verify", body, rec.get("created"))


def _verify_row(r: dict) -> tuple:
    lo, hi = r["accuracy_ci"]
    dlo, dhi = r["diff_ci_pp"]
    steps = "—"
    if r.get("lsb_max") is not None:
        gated = f"allowed {r['lsb_allowed']}" if r.get("lsb_gated") else "not gated"
        steps = f"{r['lsb_max']} ({gated})"
    gates = mark(not r["failures"], "pass", "FAIL: " + ", ".join(map(str, r["failures"])))
    return (
        r["candidate"],
        r["target"],
        f"{pct(r['accuracy'])} [{pct(lo, 1)}, {pct(hi, 1)}]",
        f"{float(r['diff_pp']):+.2f} [{float(dlo):+.2f}, {float(dhi):+.2f}]",
        num(r.get("mcnemar_p"), ".3g"),
        pct(r["agreement"]),
        r.get("only_reference_right", "—"),
        steps,
        gates,
    )


def _samples_note(rows: list[dict]) -> str:
    lost = sum(int(r.get("only_reference_right") or 0) for r in rows if "int" in r["candidate"])
    return (
        '<p class="note">Samples an integer model gets wrong that the original gets right: '
        f"{lost} over all integer rows. verify.json counts them but does not record which ones, "
        "so no picture grid is drawn; drawing it needs, per such sample, its test index, label, "
        "both predictions and its pixels (or the data set) in verify.json.</p>"
    )


def layers(rec: dict) -> str:
    worst = rec.get("worst") or {}
    culprit = worst.get("op_index")
    ops = rec["layers"]
    body = para(
        f"{Path(str(rec['model'])).name} against {Path(str(rec['reference'])).name} on "
        f"{int(rec['n'])} test samples: float "
        f"{pct(rec['float_accuracy'])}, integer {pct(rec['int8_accuracy'])}, top-1 agreement "
        f"{pct(rec['agreement'])}."
    )
    if worst:
        alone = worst.get("alone") or {}
        name = f"{worst['op']} #{culprit} ({short_name(worst['tensor'], worst['op'])})"
        if alone.get("agreement_cost") or alone.get("accuracy_cost_pp"):
            text = (
                f"Culprit: {name}: quantized alone it costs {pct(alone.get('agreement_cost'))} "
                f"agreement and {num(alone.get('accuracy_cost_pp'), '.2f')} pp accuracy."
            )
        else:
            text = (
                f"No layer alone changes a top-1 class; the one that moves the output most is "
                f"{name}, marked in red."
            )
        body += f"<p><b>{esc(text)}</b></p>"
    names = [f"#{o['op_index']} {o['op']} {short_name(o['tensor'], o['op'])}" for o in ops]
    sqnr = [
        Bar(
            n,
            float(o["sqnr_db"] if o["sqnr_db"] is not None else 99.0),
            "exact" if o["sqnr_db"] is None else f"{float(o['sqnr_db']):.1f} dB",
            marked=o["op_index"] == culprit,
        )
        for n, o in zip(names, ops, strict=True)
    ]
    used = [
        Bar(
            n,
            100 * float(o["range_used"]),
            pct(o["range_used"], 0),
            marked=o["op_index"] == culprit,
        )
        for n, o in zip(names, ops, strict=True)
    ]
    body += bar_chart(
        "SQNR of each operator output against the float twin (culprit in red)",
        sqnr,
        unit_axis(sqnr, "dB"),
    )
    body += bar_chart("Share of the int8 range the float values use", used, Axis(0, 100, unit="%"))
    body += _layers_table(names, ops, culprit)
    return section("layers", "Layers", body, rec.get("created"))


OPERATOR_HEADERS = ["operator", "SQNR dB (worst ch.)", "error steps rms / max"]
OPERATOR_HEADERS += ["range used (worst ch.)", "clipped"]


def _layers_table(names: list[str], ops: list[dict], culprit) -> str:
    rows = [
        (
            Raw(f"<b>{esc(n)}</b>") if o["op_index"] == culprit else n,
            f"{num(o['sqnr_db'], '.1f')} ({num(o.get('sqnr_db_worst_channel'), '.1f')})",
            f"{num(o['error_steps_rms'], '.2f')} / {num(o['error_steps_max'], '.1f')}",
            f"{pct(o['range_used'], 0)} ({pct(o.get('range_used_worst_channel'), 0)})",
            pct(o.get("clipped"), 2),
        )
        for n, o in zip(names, ops, strict=True)
    ]
    return table(OPERATOR_HEADERS, rows, "lrrrr")


def bench(rec: dict) -> str:
    models, rows = rec["models"], rec["rows"]
    body = para(f"On {rec.get('sample', 'the test data')}; threads used {rec['threads_used']}.")
    one = [r for r in rows if r["batch"] == 1 and r.get("threads") in (1, None)]
    bars = [_lat_bar(r) for r in one]
    if bars:
        body += bar_chart("Batch-1 latency, median (one thread)", bars, unit_axis(bars, "µs"))
    big = max((r["batch"] for r in rows), default=1)
    tput = [
        Bar(
            _config_label(r), float(r["throughput_per_s"]), f"{float(r['throughput_per_s']):,.0f}/s"
        )
        for r in rows
        if r["batch"] == big
    ]
    if tput:
        body += bar_chart(f"Throughput at batch {big}", tput, unit_axis(tput, "samples/s"))
    body += "<h3>Each model</h3>" + _models_table(models)
    body += "<h3>Every configuration</h3>" + _configs_table(rows)
    return section("bench", "Bench", body, rec.get("created"))


MODEL_HEADERS = ["file", "size", "÷ float32", "MACs", "load ms", "first invoke µs", "RSS added"]
MODEL_HEADERS += ["TFLM arena"]
CONFIG_HEADERS = ["file", "runtime", "threads", "batch", "median µs", "p90 µs", "per s"]
CONFIG_HEADERS += ["latency ÷ f32", "throughput ÷ f32"]


def _models_table(models: dict) -> str:
    rows = [
        (
            name,
            nbytes(m.get("bytes")),
            num(m.get("size_ratio"), ".2f"),
            num(m.get("macs"), ",.0f"),
            num(m.get("init_ms"), ".2f"),
            num(m.get("first_invoke_us"), ".1f"),
            f"{m['peak_rss_added_kb']:,} KB" if m.get("peak_rss_added_kb") is not None else "—",
            nbytes((m.get("tflm_arena") or {}).get("arena_bytes_used")),
        )
        for name, m in models.items()
    ]
    return table(MODEL_HEADERS, rows, "lrrrrrrr")


def _configs_table(rows: list[dict]) -> str:
    cells = [
        (
            r["model"],
            r["runtime"],
            r.get("threads") or "—",
            r["batch"],
            num(r["latency_us"]["median"], ",.1f"),
            num(r["latency_us"].get("p90"), ",.1f"),
            num(r["throughput_per_s"], ",.0f"),
            num(r.get("latency_ratio"), ".2f"),
            num(r.get("throughput_ratio"), ".2f"),
        )
        for r in rows
    ]
    return table(CONFIG_HEADERS, cells, "llrrrrrrr")


def _config_label(r: dict) -> str:
    threads = f" · {r['threads']} thr" if r.get("threads") else ""
    return f"{r['model']} · {r['runtime']}{threads}"


def _lat_bar(r: dict) -> Bar:
    median = float(r["latency_us"]["median"])
    return Bar(f"{r['model']} · {r['runtime']}", median, f"{median:,.1f} µs")


def fit(rec: dict) -> str:
    results = rec["results"]
    extra = ("sram_bytes", "npu_cycles", "inference_s", "cpu_ops")
    rows, flash, ram = [], [], []
    for r in results:
        label = f"{r['model']} · {r['board']}"
        fits = r["fits"] is True
        rows.append(
            (
                r["model"],
                r["board"],
                mark(fits, "fits", "does not fit"),
                nbytes(r["flash_bytes"]),
                nbytes(r["ram_bytes"]),
                "; ".join(f"{k} {r[k]}" for k in extra if k in r) or "—",
            )
        )
        flash.append(Bar(label, float(r["flash_bytes"]), nbytes(r["flash_bytes"]), marked=not fits))
        ram.append(Bar(label, float(r["ram_bytes"]), nbytes(r["ram_bytes"]), marked=not fits))
    fitting = sum(1 for r in results if r["fits"] is True)
    body = para(f"{fitting} of {len(results)} model × board pairs fit (red: does not fit).")
    if flash:
        body += bar_chart("Flash used", flash, unit_axis(flash, "bytes"))
        body += bar_chart("RAM used", ram, unit_axis(ram, "bytes"))
    body += table(["model", "board", "fits", "flash", "RAM", "NPU"], rows, "lllrrl")
    return section("fit", "Fit", body, rec.get("created"))


SECTIONS = {
    "fold": fold,
    "export": export,
    "verify": verify,
    "layers": layers,
    "bench": bench,
    "fit": fit,
}
