#!/usr/bin/env python3
r"""Measure QAT settings side by side: accuracy and top-1 agreement of the int8 TFLite model.

    python scripts/measure_qat.py ARTIFACTS_DIR [--epochs 1,2,3] [--lr 1e-4,1e-5] \
        [--targets distill,labels]

ARTIFACTS_DIR must hold folded.keras and train.json (run `bnpipe train` and `bnpipe fold`).
Each setting exports into a scratch copy; the table compares every one with post-training int8
on the same data, so the defaults of `bnpipe export` can be chosen by measurement.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--epochs", default="1,2,3")
    ap.add_argument("--lr", default="1e-4,1e-5")
    ap.add_argument("--targets", default="distill,labels")
    args = ap.parse_args()
    from pipeline.core.config import ExportConfig
    from pipeline.stages.export import run_export

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for f in ("folded.keras", "train.json", "model.keras"):
            shutil.copy(args.artifacts / f, work / f)
        ptq = run_export(
            work / "folded.keras", work, config=ExportConfig(modes=("ptq-int8",))
        ).modes[0]
        rows.append(("ptq-int8", "-", "-", ptq.tflite_accuracy, ptq.agreement_with_float))
        for target in args.targets.split(","):
            for lr in (float(v) for v in args.lr.split(",")):
                for ep in (int(v) for v in args.epochs.split(",")):
                    cfg = ExportConfig(
                        modes=("int8",), qat_epochs=ep, qat_learning_rate=lr, qat_target=target
                    )
                    m = run_export(work / "folded.keras", work, config=cfg).modes[0]
                    rows.append(
                        (f"qat {target}", ep, lr, m.tflite_accuracy, m.agreement_with_float)
                    )
                    print(*rows[-1], file=sys.stderr, flush=True)
    print(f"{'setting':<14} {'epochs':>6} {'lr':>7} {'int8 acc':>9} {'agreement':>9}")
    for name, ep, lr, acc, agr in rows:
        print(f"{name:<14} {ep!s:>6} {lr!s:>7} {acc:>9.4f} {agr:>9.4f}")


if __name__ == "__main__":
    main()
