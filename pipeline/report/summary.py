"""The top of report.html: the verdict banner with the numbers behind it, and the lineage.

The verdict is verify's (verify.json "passed"), never recomputed: the page says what the gates
said. The file it names as shipped is the one export's auto mode chose, else model_int8.tflite,
else the first integer file verify checked.
"""

from __future__ import annotations

from pipeline.report.svg import esc
from pipeline.report.tags import nbytes, pct, section, sha, table
from pipeline.store import files

VERSION_KEYS: tuple[str, ...] = ("bnpipe", "python", "tensorflow", "tf-keras")
VERSION_KEYS += ("tensorflow-model-optimization", "ai-edge-litert", "tflite-micro", "numpy")
VERSION_KEYS += ("scikit-learn",)


def verdict_word(verify: dict | None) -> str:
    if not isinstance(verify, dict) or "passed" not in verify:
        return "no verdict"
    return "ship" if verify["passed"] is True else "do not ship"


def no_verdict() -> str:
    return (
        '<header class="banner none" id="verdict"><h1>No verdict</h1><p>verify.json is missing '
        "or unreadable, so nothing here says whether a model is fit to ship; run "
        "<code>bnpipe verify</code>.</p></header>"
    )


def shipped_file(records: dict, rows: list[dict]) -> str:
    """The .tflite the verdict is about (see the module docstring)."""
    candidates = [r["candidate"] for r in rows]
    chosen = (records.get("export") or {}).get("auto", {}).get("chosen")
    for name in (files.tflite_name(chosen) if chosen else "", files.tflite_name("int8")):
        if name in candidates:
            return name
    integer = [c for c in candidates if "int" in c]
    return (integer or candidates or ["no file"])[0]


def verdict(records: dict) -> str:
    """The banner: SHIP or DO NOT SHIP, one sentence why, and the facts behind it."""
    v = records.get("verify")
    if v is None:
        return ""
    rows = [r for r in v["rows"] if isinstance(r, dict)]
    ship = shipped_file(records, rows)
    mine = [r for r in rows if r["candidate"] == ship]
    passed = v["passed"] is True
    data = v.get("dataset", {}).get("name", "the test data")
    if passed:
        config = v["config"]
        worst = max((-float(r["diff_pp"]) for r in mine), default=0.0) + 0.0  # no "-0.00"
        least = min((float(r["agreement"]) for r in mine), default=1.0)
        targets = ", ".join(str(r["target"]) for r in mine) or "no target"
        why = (
            f"{ship} keeps the original's accuracy ({pct(v['reference']['accuracy'])}) on "
            f"{targets} — at worst {worst:.2f} pp below "
            f"model.keras (allowed {float(config['max_drop']):g}) and agreeing with it on at "
            f"least {pct(least)} of {int(v['n'])} test samples of {data} (required "
            f"{pct(config['min_agreement'], 0)}): every gate holds."
        )
    else:
        failures = [str(f) for f in v.get("failures", [])] or ["verify did not pass"]
        more = f" (and {len(failures) - 1} more failed gate(s), listed under Verify)"
        why = f"{failures[0]}{more if len(failures) > 1 else ''}."
    word = "Ship" if passed else "Do not ship"
    sub = f"verify.json of {v.get('created', '?')}; the original model.keras is the reference."
    return (
        f'<header class="banner {"ship" if passed else "noship"}" id="verdict">'
        f"<h1>{esc(word)}: {esc(ship)}</h1><p>{esc(why)}</p>"
        f'<p class="sub">{esc(sub)}</p></header>' + _facts(records, v, mine, ship)
    )


def _facts(records: dict, v: dict, mine: list[dict], ship: str) -> str:
    """Four boxes under the banner: accuracy, agreement, size, latency of the shipped file."""
    facts = []
    if mine:
        lo = min(float(r["accuracy"]) for r in mine)
        ref = float(v["reference"]["accuracy"])
        facts.append((pct(lo), f"accuracy of {ship} (least over targets); original {pct(ref)}"))
        least = min(float(r["agreement"]) for r in mine)
        facts.append((pct(least), "top-1 agreement with the original (least over targets)"))
    bench = records.get("bench") or {}
    model = bench.get("models", {}).get(ship) or {}
    size = model.get("bytes") or (records.get("export") or {}).get("modes", {}).get(
        ship.removeprefix(files.TFLITE_PREFIX).removesuffix(files.TFLITE_SUFFIX), {}
    ).get("size_bytes")
    if size:
        ratio = model.get("size_ratio")
        facts.append((nbytes(size), f"file size{f', {ratio:.2f}× float32' if ratio else ''}"))
    one = [
        r
        for r in bench.get("rows", [])
        if r.get("model") == ship and r.get("batch") == 1 and r.get("threads") == 1
    ]
    if one:
        r = one[0]
        facts.append(
            (
                f"{float(r['latency_us']['median']):.1f} µs",
                f"batch-1 latency on {r['runtime']}, {float(r['latency_ratio']):.2f}× float32",
            )
        )
    boxes = "".join(
        f'<div class="fact"><b>{esc(a)}</b><span>{esc(b)}</span></div>' for a, b in facts
    )
    return f'<div class="facts">{boxes}</div>' if boxes else ""


def lineage(records: dict) -> str:
    """Model, data, versions, machine; then how each artifact was made (manifest.json)."""
    newest: dict = max(
        (r for n, r in records.items() if n != "manifest" and isinstance(r.get("versions"), dict)),
        key=lambda r: str(r.get("created", "")),
        default={},
    )
    rows = _model_rows(records) + _data_rows(records)
    versions = newest.get("versions", {})
    shown = ", ".join(f"{k} {versions[k]}" for k in VERSION_KEYS if versions.get(k))
    rows.append(("versions", shown or "—"))
    machine = newest.get("machine", {})
    if machine:
        rows.append(("machine", f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"))
    body = table(["", ""], rows) + _made_by(records)
    return section("lineage", "Lineage", body)


def _model_rows(records: dict) -> list[tuple[str, str]]:
    train = records.get("train")
    stages = (records.get("manifest") or {}).get("stages", {})
    model_sha = stages.get("train", {}).get("outputs", {}).get(files.MODEL)
    if not train:
        return [("model", f"{files.MODEL} sha256 {sha(model_sha)}")]
    config = train["config"]
    if config.get("model"):
        what = f"imported from {config['model']}"
    else:
        hidden = ",".join(str(h) for h in config.get("hidden") or [])
        what = f"trained here: {config.get('arch')} {hidden} (BN: {config.get('bn')})"
    params = train.get("parameters")
    return [
        (
            "model",
            f"{files.MODEL}, {what}, {params:,} parameters, sha256 {sha(model_sha)}"
            if isinstance(params, int)
            else f"{files.MODEL}, {what}, sha256 {sha(model_sha)}",
        )
    ]


def _data_rows(records: dict) -> list[tuple[str, str]]:
    for name in ("train", "verify", "export"):
        dataset = (records.get(name) or {}).get("dataset")
        if isinstance(dataset, dict):
            sizes = ", ".join(f"{k} {v}" for k, v in dataset.get("sizes", {}).items())
            return [
                (
                    "data",
                    f"{dataset.get('source', dataset.get('name'))} ({sizes}), shape "
                    f"{dataset.get('sample_shape')}, sha256 {sha(dataset.get('fingerprint'))}",
                )
            ]
    return []


def _made_by(records: dict) -> str:
    stages = (records.get("manifest") or {}).get("stages", {})
    rows = []
    for stage, entry in stages.items():
        params = entry.get("params", {})
        options = ", ".join(f"{k}={v}" for k, v in params.items() if v not in (None, False, []))
        wrote = ", ".join(f"{f} {sha(s)}" for f, s in entry.get("outputs", {}).items())
        rows.append((f"bnpipe {stage}", options, entry.get("ended", "?"), wrote))
    layers = records.get("layers")
    if isinstance(layers, dict):
        options = ", ".join(f"{k}={v}" for k, v in (layers.get("config") or {}).items())
        rows.append(("bnpipe layers", options, layers.get("created", "?"), files.LAYERS_RECORD))
    if not rows:
        return "<p class='note'>manifest.json is missing: no record of how the files were made.</p>"
    return "<h3>How each artifact was made</h3>" + table(
        ["command", "its options", "ended", "wrote (sha256)"], rows
    )
