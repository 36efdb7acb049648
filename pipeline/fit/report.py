"""fit.json as a person reads it: one Markdown table (fit.md) and a chart of each board's budget
used (fit.png)."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.markdown import md_table, save_figure


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def _used(need: int, budget: int) -> str:
    return f"{_kib(need)} / {_kib(budget)} ({100 * need / budget:.0f} %)"


def _speed(r: dict) -> str:
    if "inference_s" not in r:
        return "—"
    return f"{r['inference_s'] * 1e6:,.1f} µs ({r['inferences_per_s']:,.0f}/s)"


def _cpu(r: dict) -> str:
    if "cpu_ops" not in r:
        return "TFLM: " + ", ".join(r["ops"])
    if not r["cpu_ops"]:
        return "all on the NPU"
    return "CPU: " + ", ".join(f"{c['op']} ({c['reason']})" for c in r["cpu_ops"])


def fit_table(record: dict) -> str:
    """The verdict table: one row per model and board."""
    headers = ["model", "board", "fits", "flash KiB used / budget", "RAM KiB used / budget"]
    headers += ["NPU time (rate)", "operators"]
    rows = [
        [
            r["model"],
            r["board"],
            "yes" if r["fits"] else "**NO**",
            _used(r["flash_bytes"], r["flash_budget_bytes"]),
            _used(r["ram_bytes"], r["ram_budget_bytes"]),
            _speed(r),
            _cpu(r),
        ]
        for r in record["results"]
    ]
    return md_table(headers, rows, "lllrrrl")


def fit_markdown(record: dict, plot_name: str) -> str:
    config = record["config"]
    lines = ["# Will it fit?", "", fit_table(record)]
    lines.append(
        f"Firmware allowance added: {config['firmware_flash_kib']} KiB flash, "
        f"{config['firmware_ram_kib']} KiB RAM ([fit] firmware_flash_kib, firmware_ram_kib). "
        "RAM is the TFLM tensor arena on a microcontroller"
        + (
            f" and Vela's SRAM on an NPU; NPU figures are Vela {record['vela_version']}'s "
            "estimates at its system config's clock."
            if record.get("vela_version")
            else "."
        )
    )
    for failure in record["failures"]:
        lines.append(f"- {failure}")
    lines += ["", "## Boards", ""]
    lines.append(boards_table(record["boards"]))
    lines += [f"![budget used per board]({plot_name})", ""]
    return "\n".join(lines)


def boards_table(boards: dict[str, dict]) -> str:
    """The boards (name → Board as a dict) as a table: figures, Vela's options, sources."""
    rows = [
        [
            f"`{name}`",
            b["title"],
            b["cpu"],
            f"{b['ram_kib']:,}",
            f"{b['flash_kib']:,}",
            f"Vela: {b['accelerator']}, `{b['system_config']}`, `{b['memory_mode']}`"
            if b["kind"] == "ethos-u"
            else "TFLM on the CPU",
            b["source"],
        ]
        for name, b in boards.items()
    ]
    headers = ["board", "part", "CPU / NPU", "RAM KiB", "flash KiB", "runs on", "source"]
    return md_table(headers, rows, "lllrrll")


def fit_plot(record: dict, dest: Path) -> Path:
    """Horizontal bars: the share of each board's flash and RAM each model needs (100 % is the
    board's budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    labels = [f"{r['model']} on {r['board']}" for r in results]
    flash = [100 * r["flash_bytes"] / r["flash_budget_bytes"] for r in results]
    ram = [100 * r["ram_bytes"] / r["ram_budget_bytes"] for r in results]
    fig, ax = plt.subplots(figsize=(8, 1 + 0.5 * len(results)))
    ys = range(len(results))
    ax.barh([y - 0.2 for y in ys], flash, height=0.4, label="flash")
    ax.barh([y + 0.2 for y in ys], ram, height=0.4, label="RAM / SRAM")
    ax.axvline(100, color="red", linestyle="--", linewidth=1)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("% of the board's budget used (red: the budget)")
    ax.legend(loc="lower right")
    return save_figure(fig, dest)
