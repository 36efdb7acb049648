"""Target runtimes: one module per place a .tflite model runs.

Every runtime takes inputs that are already preprocessed *and* quantized to the model's input
tensor dtype (bnpipe does that once, on the host, exactly as recorded at export), and returns the
raw output tensor — int8 codes for an int8 model — so that outputs can be compared across targets
in quantization steps.

    host      LiteRT on this CPU, default delegate (XNNPACK)          runtimes/host.py
    host-ref  LiteRT, builtin reference kernels (numerical truth)     runtimes/host.py
    tflm      TensorFlow Lite Micro (microcontroller kernels)         runtimes/tflm.py
    arm64     aarch64 LiteRT under qemu-user (Cortex-A class)         runtimes/arm64.py
    ssh:U@H   the standalone runner on a real board over ssh          runtimes/ssh.py

No model ever runs in bnpipe's own process, whatever the file holds: host and host-ref run the
standalone runner (runtimes/device_runner.py, numpy and LiteRT only, so the same file runs in the
emulator and on a board) as a child process under this python, tflm its own runner
(runtimes/tflm_runner.py), arm64 the standalone runner under qemu, ssh on the board. A model
that crashes a runner is a ModelCrashed (exit 2), never a crash of bnpipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class RunResult:
    """What one target produced for one model on one batch of inputs."""

    target: str
    outputs: np.ndarray  # (N, classes), the raw output tensor values in the output dtype
    invoke_seconds: float  # wall time of the invoke calls only (no loading, no copying)
    info: dict[str, Any] = field(default_factory=dict)  # versions, arena bytes, machine, emulated


class Runtime(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, why not and how to set it up)."""

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (already quantized, model input dtype) through the model."""


def check_outputs(target: str, path, info, outputs: np.ndarray, n: int) -> None:
    """ModelError unless `outputs` are n rows of the output features the file declares (info: its
    TfliteInfo; where it declares them): a model whose kernels make another shape is damaged, and
    the callers index its outputs by the declared shape."""
    from pipeline.core.errors import ModelError

    declared = info.output_tensor().shape[1:]
    shape = tuple(outputs.shape)
    if shape[:1] != (n,) or (
        all(d >= 0 for d in declared) and shape[1:] != tuple(int(d) for d in declared)
    ):
        raise ModelError(
            f"{target}: {path} produced outputs of shape {shape} for {n} inputs, but its output "
            f"tensor declares (N, {', '.join(str(d) for d in declared)})"
        )
