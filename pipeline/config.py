"""Configuration dataclasses: every default says why; each validates itself on construction.

A stage saves its config beside its outputs (in its JSON record), so a result can be reproduced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import BnpipeError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise BnpipeError(message)


TRAIN_STRATEGIES = ("none", "mirrored", "multi-worker")  # see pipeline/distribute.py


@dataclass(frozen=True)
class TrainConfig:
    data: str = "digits"  # bundled with scikit-learn: works offline, trains in seconds
    test_data: str | None = None  # a separate test file, for formats that carry no split
    hidden: tuple[int, ...] = (64, 64)  # the article's two Dense(64) blocks
    epochs: int = 10  # the article's recipe; digits reaches ≥ 95 % test accuracy
    batch_size: int = 32  # the article's recipe (and Keras's default)
    learning_rate: float = 1e-3  # Adam's default, as in the article
    bn: str = "keras"  # "keras": tf.keras BatchNormalization; "custom": the article's layer, fixed
    seed: int = 0  # seeds the split, the initial weights and the shuffling
    val_fraction: float = 0.1  # of the training part, for the per-epoch validation curve
    test_fraction: float = 0.2  # only where the source has no test split (digits, CSV)
    # "none": one process without tf.distribute, the only way that is bit-for-bit reproducible
    # across runs and resumable (--resume); digits and MNIST train in seconds on one CPU.
    # "mirrored" / "multi-worker" (pipeline/distribute.py) are for data or models that outgrow it.
    strategy: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        _check(
            len(self.hidden) >= 1 and min(self.hidden) >= 1,
            f"--hidden needs one or more positive widths, got {','.join(map(str, self.hidden))}",
        )
        _check(self.epochs >= 1, f"--epochs must be ≥ 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"--batch-size must be ≥ 1, got {self.batch_size}")
        _check(
            0 < self.learning_rate < 1,
            f"--learning-rate must be in (0, 1), got {self.learning_rate}",
        )
        _check(self.bn in ("keras", "custom"), f"--bn must be keras or custom, got {self.bn!r}")
        _check(
            0 < self.val_fraction < 0.5,
            f"val_fraction must be in (0, 0.5), got {self.val_fraction}",
        )
        _check(
            0 < self.test_fraction < 0.5,
            f"test_fraction must be in (0, 0.5), got {self.test_fraction}",
        )
        _check(self.seed >= 0, f"--seed must be ≥ 0, got {self.seed}")
        _check(
            self.strategy in TRAIN_STRATEGIES,
            f"--strategy must be one of {', '.join(TRAIN_STRATEGIES)}, got {self.strategy!r}",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Largest relative difference tolerated between the original and the folded model's outputs.
# The fold is computed in float64 and rounded once to float32; the folded network then does one
# multiply-add fewer per unit, so the difference is float32 round-off (≈ 1e-7 relative per op,
# a few ulps through three layers). 1e-5 leaves ~100× headroom yet catches any wrong formula
# (a wrong ε or a transposed scale moves outputs by 1e-3 or more).
FOLD_RTOL = 1e-5


@dataclass(frozen=True)
class FoldConfig:
    strict: bool = False  # refuse (exit 2) instead of warn when a BN cannot be folded exactly
    rtol: float = FOLD_RTOL
    check_samples: int = 10_000  # outputs compared on at most this many test samples
    random_samples: int = 512  # when no data is known: uniform [0, 1) inputs of the model's shape

    def __post_init__(self):
        _check(self.rtol > 0, f"rtol must be > 0, got {self.rtol}")
        _check(self.check_samples >= 1, f"check_samples must be ≥ 1, got {self.check_samples}")


EXPORT_MODES = ("int8", "float32", "ptq-dynamic", "ptq-float16", "ptq-int8", "ptq-int16x8")
QAT_TARGETS = ("distill", "labels")


@dataclass(frozen=True)
class ExportConfig:
    modes: tuple[str, ...] = ("int8",)  # int8 = quantization-aware training, full integer
    # Measured with scripts/measure_qat.py on digits (64 inputs) and digits28 (784 inputs), 360
    # test samples each: 3 distillation epochs at 1e-5 kept 100 % top-1 agreement on both (PTQ
    # int8: 100 % and 99.72 %); fitting labels reached 97.5–99.4 % agreement.
    qat_epochs: int = 3
    qat_learning_rate: float = (
        1e-5  # 100× below training's: QAT nudges the ranges, it does not retrain
    )
    qat_target: str = (
        "distill"  # fit the float model's probabilities, not the labels: keeps its predictions
    )
    qat_batch_size: int = 32  # as in training
    calibration_samples: int = 500  # representative data: enough for stable min/max on 64 units
    float_io: bool = False  # True keeps float32 input/output (QUANTIZE/DEQUANTIZE at the edges)
    seed: int = 0  # QAT shuffling and calibration sample choice

    def __post_init__(self):
        modes = tuple(self.modes)
        if "all" in modes:
            modes = EXPORT_MODES
        object.__setattr__(self, "modes", tuple(dict.fromkeys(modes)))
        for m in self.modes:
            _check(
                m in EXPORT_MODES,
                f"unknown mode {m!r}; expected one of {', '.join(EXPORT_MODES)} or all",
            )
        _check(self.qat_epochs >= 0, f"--qat-epochs must be ≥ 0, got {self.qat_epochs}")
        _check(
            0 < self.qat_learning_rate < 1,
            f"--qat-learning-rate must be in (0, 1), got {self.qat_learning_rate}",
        )
        _check(
            self.qat_target in QAT_TARGETS,
            f"--qat-target must be one of {', '.join(QAT_TARGETS)}, got {self.qat_target!r}",
        )
        _check(
            self.calibration_samples >= 1,
            f"--calibration-samples must be ≥ 1, got {self.calibration_samples}",
        )
        _check(self.qat_batch_size >= 1, f"qat batch size must be ≥ 1, got {self.qat_batch_size}")


# Verification gates. The defaults are what a model fit to ship must meet on the test split.
MAX_DROP_PP = 0.5  # accuracy may fall at most 0.5 percentage points below the original
MIN_AGREEMENT = 0.99  # at least 99 % of test samples get the original model's top-1 class
MAX_LSB = 1  # one integer model's raw outputs may differ across targets by one quantization step
# (XNNPACK and the reference kernels round the requantization differently: ±1 step is expected,
# 2 or more means a kernel computes something else).


@dataclass(frozen=True)
class VerifyConfig:
    targets: tuple[str, ...] | None = None  # None: every target available here
    max_drop: float = MAX_DROP_PP
    min_agreement: float = MIN_AGREEMENT
    max_lsb: int = MAX_LSB
    max_samples: int | None = None  # cap on test samples (None: the whole test split)

    def __post_init__(self):
        _check(self.max_drop >= 0, f"--max-drop must be ≥ 0 percentage points, got {self.max_drop}")
        _check(
            0 <= self.min_agreement <= 1,
            f"--min-agreement must be in [0, 1], got {self.min_agreement}",
        )
        _check(self.max_lsb >= 0, f"--max-lsb must be ≥ 0, got {self.max_lsb}")
        _check(
            self.max_samples is None or self.max_samples >= 1,
            f"--max-samples must be ≥ 1, got {self.max_samples}",
        )


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 32, 1024)  # one request; a small batch; bulk scoring
    threads: tuple[int, ...] = (
        1,
        0,
    )  # 0 = every core of this machine; 1 = what a phone app often gets
    warmup: int = 20  # untimed invokes per configuration before timing (caches, XNNPACK packing)
    runs: int = 200  # timed invokes per configuration, split across the interleaved rounds
    rounds: int = 5  # the models take turns this many times, so drift hits every model alike
    keras_runs: int = 30  # Keras calls take milliseconds: fewer runs give as stable a median
    targets: tuple[str, ...] = ("host",)  # where to time; arm64 is emulated (not device timing)

    def __post_init__(self):
        _check(
            bool(self.batch_sizes) and min(self.batch_sizes) >= 1,
            f"--batch-sizes must be positive integers, got {self.batch_sizes}",
        )
        _check(
            bool(self.threads) and min(self.threads) >= 0,
            f"--threads must be ≥ 0, got {self.threads}",
        )
        _check(self.warmup >= 0, f"--warmup must be ≥ 0, got {self.warmup}")
        _check(
            self.runs >= self.rounds >= 1,
            f"--runs must be ≥ rounds ({self.rounds}) ≥ 1, got {self.runs}",
        )
        _check(self.keras_runs >= 1, f"keras_runs must be ≥ 1, got {self.keras_runs}")
