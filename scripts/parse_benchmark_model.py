#!/usr/bin/env python3
"""Parse the console output of TFLite/LiteRT's ``benchmark_model`` into JSON.

Reads the output on stdin (or from FILE) and prints one JSON object on stdout.
Standard library only, so it runs on any host that has Python 3.

Formats understood (all found in the tool's own sources and its documentation):

* current (TF 2.x, LiteRT ``tflite/tools/benchmark``): every line is prefixed
  ``INFO: `` / ``WARN: `` (stdout) or ``ERROR: `` (stderr); lines too long for
  this page are wrapped here, the continuation indented (the tool prints each
  as one line)::

      INFO: Log parameter values verbosely: [0]
      INFO: Num threads: [4]
      INFO: Graph: [/data/local/tmp/bnpipe/model_int8.tflite]
      INFO: Use xnnpack: [1]
      INFO: The input model file size (MB): 0.062
      INFO: Initialized session in 3.245ms.
      INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but
          terminate if exceeding 150 seconds.
      INFO: count=1 curr=8901 p5=8901 median=8901 p95=8901
      INFO: Running benchmark for at least 100 iterations and at least 1 seconds but
          terminate if exceeding 150 seconds.
      INFO: count=100 first=1180 curr=1090 min=1052 max=1411 avg=1100.2 std=41 p5=1060
          median=1093 p95=1170
      INFO: Inference timings in us: Init: 3245, First inference: 8901,
          Warmup (avg): 1234.5, Inference (avg): 1100.2
      INFO: Memory footprint delta from the start of the tool (MB): init=2.125 overall=3.5
      INFO: Overall peak memory footprint (MB) via periodic monitoring: 7.2

  The ``count=`` statistics line omits first/min/max/avg/std when every sample
  was the same (``count=1 curr=8901``), has no percentiles before
  ``StatWithPercentiles``, and large numbers come in C++ stream notation
  (``avg=1.24027e+06``).
* older TF 2.x: the same lines without the ``INFO: `` prefix; the memory line
  once read ``Peak memory footprint (MB): init=… overall=…``.
* legacy TF 1.x: ``Average inference timings in us: Warmup: W, Init: I, no
  stats: N`` (the Android app variant says ``Inference: N``) and no first
  inference in the summary (it is taken from the warm-up ``count=`` line).
* lines copied from logcat (``I tflite  : …``) or with timestamps: every
  pattern is searched anywhere in a line, so prefixes do not matter.

Output keys (times in microseconds, memory in MB; a value the tool did not
print is ``null``): init_us, first_inference_us, warmup_avg_us, steady_avg_us,
std_us, memory_init_mb, memory_overall_mb, peak_memory_mb, model_size_mb,
warmup (the warm-up ``count=`` statistics), steady (the timed runs' statistics),
runs_requested ([min iterations, min seconds, max seconds] per phase), params
(the ``Name: [value]`` header lines), format.

Exit codes: 0 parsed; 2 the text is not a finished benchmark_model run (the
binary failed, or this is not its output) -- one ``Error: …`` line on stderr
that names ``--label`` and quotes what the binary reported.

Example:
    adb shell /data/local/tmp/benchmark_model --graph=m.tflite > out.txt
    python3 scripts/parse_benchmark_model.py --label "threads=4 xnnpack=true" out.txt
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

# A number as a C++ ostream prints it: 1100, 1100.2, 1.24027e+06, nan, inf.
_NUM = r"(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|-?nan|-?inf)"

_SUMMARY = re.compile(
    r"Inference timings in us: Init: "
    + _NUM
    + r", First inference: "
    + _NUM
    + r", Warmup \(avg\): "
    + _NUM
    + r", Inference \(avg\): "
    + _NUM
)
# TF 1.x binary: "... Warmup: W, Init: I, no stats: N"; Android app: "Inference: N".
_LEGACY_SUMMARY = re.compile(
    r"Average inference timings in us: Warmup: "
    + _NUM
    + r", Init: "
    + _NUM
    + r", (?:no stats|Inference): "
    + _NUM
)
_MEMORY = re.compile(
    r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    r"init=" + _NUM + r" overall=" + _NUM
)
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_MODEL_SIZE = re.compile(r"The input model file size \(MB\): " + _NUM)
_RUNNING = re.compile(
    r"Running benchmark for at least (\d+) iterations and at least "
    + _NUM
    + r" seconds but terminate if exceeding "
    + _NUM
    + r" seconds"
)
# A statistics line holds "count=N" and otherwise only key=value pairs.
_STAT_LINE = re.compile(r"(?:^|\s|:)count=\d+")
_STAT_PAIR = re.compile(r"\b([a-z0-9]+)=" + _NUM)
# "Num threads: [4]" -- the parameter header printed after "Log parameter values verbosely".
_PARAM = re.compile(r"^(?:[A-Z]+: )?([A-Za-z#(][^:\[\]]*?)\s*: \[(.*)\]\s*$")
_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|FATAL): ")
# Lines that say why a run failed; quoted in the error message.
_FAILURE = re.compile(
    r"^(?:ERROR|FATAL): |Failed to |failed|Aborted|Segmentation fault|not found|"
    r"No such file|Permission denied|CANNOT LINK EXECUTABLE|not executable",
    re.IGNORECASE,
)


class ParseError(ValueError):
    """The text is not the output of a finished benchmark_model run."""


def _number(text: str) -> Any:
    """'3245' -> 3245, '1100.2' -> 1100.2, '1.24027e+06' -> 1240270.0; nan/inf -> None."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        # JSON has no NaN/Infinity; the tool prints nan for an empty statistic.
        return None if value != value or value in (float("inf"), float("-inf")) else value


def _parse_stat_line(line: str) -> dict:
    stats = {key: _number(value) for key, value in _STAT_PAIR.findall(line)}
    if "(all same)" in line:
        stats["all_same"] = True
    # "count=1 curr=X" or "count=N curr=X(all same)": every sample equals curr.
    if stats.get("count", 0) >= 1 and "avg" not in stats and "curr" in stats:
        stats.setdefault("first", stats["curr"])
        stats.setdefault("min", stats["curr"])
        stats.setdefault("max", stats["curr"])
        stats.setdefault("avg", stats["curr"])
        stats.setdefault("std", 0)
    return stats


def failure_lines(text: str, limit: int = 3) -> list:
    """The first `limit` lines of `text` that report an error, stripped."""
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and _FAILURE.search(line):
            found.append(line)
            if len(found) == limit:
                break
    return found


def parse(text: str, label: str = "benchmark_model output") -> dict:
    """Parse one run's console output; raise ParseError naming `label` if it did not finish.

    Pure function: returns a new dict, does not touch `text`.
    """
    lines = text.replace("\r", "").splitlines()
    summary = legacy = memory = peak = model_size = None
    stat_lines: list = []
    runs_requested: list = []
    params: dict = {}
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if summary is None and (m := _SUMMARY.search(line)):
            summary = m
        elif legacy is None and (m := _LEGACY_SUMMARY.search(line)):
            legacy = m
        elif memory is None and (m := _MEMORY.search(line)):
            memory = m
        elif peak is None and (m := _PEAK.search(line)):
            peak = m
        elif model_size is None and (m := _MODEL_SIZE.search(line)):
            model_size = m
        elif m := _RUNNING.search(line):
            runs_requested.append(
                {
                    "min_iterations": int(m.group(1)),
                    "min_secs": _number(m.group(2)),
                    "max_secs": _number(m.group(3)),
                }
            )
        elif _STAT_LINE.search(line) and "=" in line:
            stat_lines.append(_parse_stat_line(line))
        elif m := _PARAM.match(line):
            params[m.group(1).strip()] = m.group(2)

    if summary is None and legacy is None:
        reported = failure_lines(text)
        if reported:
            why = "the binary reported: " + " | ".join(reported)
        elif not text.strip():
            why = "the output is empty"
        else:
            last = [ln.strip() for ln in lines if ln.strip()][-1]
            why = f"no 'Inference timings in us' line; last line: {last!r}"
        raise ParseError(f"benchmark_model did not finish for {label}: {why}")

    # Warm-up statistics come first, the timed runs second (benchmark_model.cc Run()).
    warmup = stat_lines[0] if len(stat_lines) >= 2 else None
    steady = stat_lines[-1] if stat_lines else None

    result: dict = {"format": "current" if summary is not None else "legacy"}
    if summary is not None:
        init, first, warm_avg, steady_avg = (_number(g) for g in summary.groups())
    else:
        warm_avg, init, steady_avg = (_number(g) for g in legacy.groups())
        first = warmup.get("first") if warmup else None
    result.update(
        init_us=init,
        first_inference_us=first,
        warmup_avg_us=warm_avg,
        steady_avg_us=steady_avg,
        std_us=steady.get("std") if steady else None,
        memory_init_mb=_number(memory.group(1)) if memory else None,
        memory_overall_mb=_number(memory.group(2)) if memory else None,
        peak_memory_mb=_number(peak.group(1)) if peak else None,
        model_size_mb=_number(model_size.group(1)) if model_size else None,
        warmup=warmup,
        steady=steady,
        runs_requested=runs_requested,
        params=params,
    )
    return result


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Parse benchmark_model output (stdin or FILE) into JSON on stdout.",
        epilog=(
            "Example: python3 scripts/parse_benchmark_model.py "
            "--label 'threads=1 xnnpack=true' out.txt"
        ),
    )
    parser.add_argument("file", nargs="?", help="benchmark_model output; stdin if omitted")
    parser.add_argument(
        "--label",
        default="benchmark_model output",
        help="names the configuration in error messages",
    )
    args = parser.parse_args(argv)
    try:
        if args.file:
            with open(args.file, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        else:
            text = sys.stdin.read()
        result = parse(text, args.label)
    except OSError as exc:
        print(f"Error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except ParseError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
