"""Configuration dataclasses: every default says why; each validates itself on construction.

A stage saves its config beside its outputs (in its JSON record), so a result can be reproduced.
`bnpipe run --config bnpipe.toml` reads one table per stage, keyed by the options' names
(`load_run_config`). A value of the wrong type or out of range is a ConfigError naming the
option: as a CLI flag (`--epochs must be ≥ 1, got 0`) or, from a file, as its table and key.
The upper bounds keep a typo (`epochs = 1000000`, `hidden = [10000000]`) from turning into an
allocation that takes the machine down: they are far beyond what a small edge classifier needs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import BnpipeError


class ConfigError(BnpipeError):
    """An option with a value it cannot take. `field` is the dataclass field, `problem` the
    rest of the sentence ("must be ≥ 1, got 0")."""

    def __init__(self, field: str, problem: str, flag: bool | str = True):
        self.field, self.problem = field, problem
        if isinstance(flag, str):  # the CLI spells this option otherwise (--mode for modes)
            name = flag
        else:
            name = "--" + field.replace("_", "-") if flag else field
        super().__init__(f"{name} {problem}")

    def in_file(self, where: str, table: str) -> BnpipeError:
        """The same problem, named as a config file's table and key."""
        return BnpipeError(f"{where}: [{table}] {self.field} {self.problem}")


def _check(cond: bool, field: str, problem: str, flag: bool | str = True) -> None:
    if not cond:
        raise ConfigError(field, problem, flag)


def _int_in(value: Any, field: str, lo: int, hi: int, flag: bool = True) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    _check(ok, field, f"must be an integer from {lo:,} to {hi:,}, got {value!r}", flag)


MAX_SEED = 2**32 - 1  # numpy's legacy seeding (and so Keras's set_random_seed) takes 32 bits
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20  # samples per step; a bigger batch is a typo on a 24 GiB machine
MAX_WIDTH = 8192  # units per hidden layer: 8192 × 8192 weights with Adam's state is ~800 MB
MAX_LAYERS = 64
TRAIN_STRATEGIES = ("none", "mirrored", "multi-worker")  # see pipeline/training/distribute.py
ARCHITECTURES = ("mlp",)


# Each architecture's recipe: what `train` uses for an option not given.
#   mlp  the seed article's: Dense(64) → BN → ReLU twice, Adam at 1e-3, batch 32, 10 epochs
#        (digits reaches ≥ 95 % test accuracy)
#   cnn  model.build_cnn, Adam at 2e-3, batch 128, 15 epochs, images of 16×16 or more shifted
#        by up to 2 pixels: on 8,000 real MNIST training images (7,200 trained on) test
#        accuracy after the 15th epoch was 98.25 % (seed 0, 2,000 test images; the validation
#        accuracy moved by up to ±1 % from one epoch to the next at the constant rate).
#        Digits (8×8, never shifted): 94.7 %.
RECIPES = {
    "mlp": {"hidden": (64, 64), "epochs": 10, "batch_size": 32, "learning_rate": 1e-3, "shift": 0},
    "cnn": {"hidden": (), "epochs": 15, "batch_size": 128, "learning_rate": 2e-3, "shift": 2},
}
MAX_SHIFT = 8  # pixels; a digit moved further than this leaves a 28×28 frame


@dataclass(frozen=True)
class TrainConfig:
    data: str = "digits"  # bundled with scikit-learn: works offline, trains in seconds
    test_data: str | None = None  # a separate test file, for formats that carry no split
    arch: str = "mlp"  # "mlp": the seed article's network; "cnn": model.build_cnn for images
    # None: the architecture's recipe (RECIPES). hidden is the MLP's Dense widths.
    hidden: tuple[int, ...] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    bn: str = "keras"  # "keras": tf.keras BatchNormalization; "custom": the article's layer, fixed
    # Each training image moves by a random whole number of pixels in [-shift, shift] along each
    # axis, a fresh draw per epoch (train.shifted); only images of at least 16×16
    # (train.SHIFT_MIN_SIDE) and only the CNN: None takes the recipe's (cnn 2, mlp 0).
    shift: int | None = None
    seed: int = 0  # seeds the split, the initial weights and the shuffling
    val_fraction: float = 0.1  # of the training part, for the per-epoch validation curve
    test_fraction: float = 0.2  # only where the source has no test split (digits, CSV)
    # "none": one process without tf.distribute, the only way that is bit-for-bit reproducible
    # across runs and resumable (--resume); digits and MNIST train in seconds on one CPU.
    # "mirrored" / "multi-worker" (pipeline/training/distribute.py) are for data or models that
    # outgrow it.
    strategy: str = "none"
    # A model trained elsewhere (`bnpipe run --model M.keras`): imported instead of trained, so
    # the options above but the data and its split have no effect.
    model: str | None = None

    def __post_init__(self):
        _check(
            self.arch in RECIPES, "arch", f"must be one of {', '.join(RECIPES)}, got {self.arch!r}"
        )
        _check(
            self.arch == "mlp" or not self.hidden,
            "hidden",
            f"sets the MLP's Dense widths; --arch {self.arch} takes none",
        )
        for name, value in RECIPES[self.arch].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        _check(isinstance(self.data, str) and self.data != "", "data", "must name a data set")
        _check(
            self.model is None or (isinstance(self.model, str) and self.model != ""),
            "model",
            f"must be the path of a .keras file, got {self.model!r}",
        )
        hidden = self.hidden if isinstance(self.hidden, (tuple, list)) else (0,)
        _check(
            (bool(hidden) or self.arch != "mlp")
            and len(hidden) <= MAX_LAYERS
            and all(
                isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_WIDTH
                for h in hidden
            ),
            "hidden",
            f"needs 1 to {MAX_LAYERS} widths from 1 to {MAX_WIDTH:,}, got {_listed(self.hidden)}",
        )
        object.__setattr__(self, "hidden", tuple(hidden))
        _int_in(self.epochs, "epochs", 1, MAX_EPOCHS)
        _int_in(self.batch_size, "batch_size", 1, MAX_BATCH)
        _check(
            _number(self.learning_rate) and 0 < self.learning_rate < 1,
            "learning_rate",
            f"must be in (0, 1), got {self.learning_rate!r}",
        )
        _check(self.bn in ("keras", "custom"), "bn", f"must be keras or custom, got {self.bn!r}")
        _check_shift(self.shift, self.arch)
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _check(
                _number(value) and 0 < value < 0.5,
                name,
                f"must be in (0, 0.5), got {value!r}",
                flag=False,
            )
        _int_in(self.seed, "seed", 0, MAX_SEED)
        _check(
            self.strategy == "none" or self.arch == "mlp",
            "strategy",
            f"{self.strategy} trains the MLP only; --arch {self.arch} takes --strategy none",
        )
        _check(
            self.strategy in TRAIN_STRATEGIES,
            "strategy",
            f"must be one of {', '.join(TRAIN_STRATEGIES)}, got {self.strategy!r}",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_shift(shift: Any, arch: str) -> None:
    _int_in(shift, "shift", 0, MAX_SHIFT, flag=False)
    _check(
        arch != "mlp" or shift == 0,
        "shift",
        f"moves images for --arch cnn; --arch mlp takes flat samples, so 0, got {shift}",
        flag=False,
    )


def _names(config: Any, field: str) -> None:
    """config.field must be a list of names (strings); stored as a tuple (frozen dataclass)."""
    value = getattr(config, field)
    _check(
        isinstance(value, (tuple, list)) and all(isinstance(t, str) for t in value),
        field,
        f"must be a list of target names, got {value!r}",
    )
    object.__setattr__(config, field, tuple(value))


def _listed(value: Any) -> str:
    """16,0 for (16, 0), as the option was typed; repr for anything else."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return repr(value)


def _number(value: Any) -> bool:
    """A finite int or float (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    # Where rtol fails, hold the item to 4× the float32 round-off the original itself carries
    # there (models/roundoff.py): a deep net's round-off exceeds 1e-5 and is no fold error.
    roundoff: bool = True
    check_samples: int = 10_000  # outputs compared on at most this many test samples
    random_samples: int = 512  # when no data is known: uniform [0, 1) inputs of the model's shape
    # Cross-layer equalization of ReLU-joined Dense pairs after folding (equalize.py): exact in
    # real arithmetic, and it keeps one outlier channel from setting an int8 scale for all.
    equalize: bool = True
    # Only pairs whose first layer's channel ranges (max |W| per output channel) span at least
    # this ratio are equalized: there a per-tensor int8 grid leaves the narrowest channel 3 bits
    # short. Trained models sit near 2 (digits and MNIST MLPs: 1.8–2.7), where equalizing only
    # reshuffles rounding (measured: it moved agreement by ±1 sample of 2,000 either way); the
    # issue's outlier case is 118.
    equalize_from: float = 8.0

    def __post_init__(self):
        _check(
            _number(self.equalize_from) and 1 <= self.equalize_from <= 1e12,
            "equalize_from",
            f"must be a ratio of at least 1, got {self.equalize_from!r}",
            flag=False,
        )
        for name in ("strict", "equalize", "roundoff"):
            value = getattr(self, name)
            _check(isinstance(value, bool), name, f"must be true or false, got {value!r}")
        _check(
            _number(self.rtol) and 0 < self.rtol < 1,
            "rtol",
            f"must be in (0, 1), got {self.rtol!r}",
            flag=False,
        )
        _int_in(self.check_samples, "check_samples", 1, 10_000_000, flag=False)
        _int_in(self.random_samples, "random_samples", 1, 1_000_000, flag=False)


# Verification gates. The defaults are what a model fit to ship must meet on the test split.
MAX_DROP_PP = 0.5  # accuracy may fall at most 0.5 percentage points below the original
MIN_AGREEMENT = 0.99  # at least 99 % of test samples get the original model's top-1 class
# Regression: an int8 file's RMSE against the targets may exceed the original's by 2 % of it on
# every target (the goal; on the digits regressor of tests/test_tasks.py QAT int8 stays
# well inside it). Reconstruction: the anomaly AUC may fall 0.005 (the goal; a
# post-training int8 of MLPerf Tiny's autoencoder loses < 0.001), and reconstruction and `output`
# tasks need an output SQNR of 25 dB (error rms 5.6 % of the signal's; int8 autoencoders measure
# 30–40 dB, the convolutional goal is 25).
MAX_RMSE_INCREASE = 0.02
MAX_AUC_DROP = 0.005
MIN_SQNR_DB = 25.0
MAX_LSB = 1  # one integer model's raw outputs may differ across targets by one quantization step
# (XNNPACK and the reference kernels round the requantization differently: ±1 step is expected,
# 2 or more means a kernel computes something else).


EXPORT_MODES = ("int8", "float32", "ptq-dynamic", "ptq-float16", "ptq-int8", "ptq-int16x8")
# `--mode auto` tries these in turn, smallest and fastest first, and keeps the first whose
# validation score passes the gates; mixed-int8 (the culprit layer kept in float) comes when no
# full-integer mode passes, before giving up on integers.
AUTO = "auto"
MIXED = "mixed-int8"
# The modes whose files hold integer arithmetic a microcontroller runs (C arrays are written for
# these): full-integer ones, and mixed-int8 (one layer in float).
INTEGER_MODES = ("int8", "ptq-int8", "ptq-int16x8", MIXED)
C_LANGUAGES = ("c++", "c")
AUTO_ORDER = ("int8", "ptq-int8", "ptq-int16x8", MIXED, "ptq-dynamic", "ptq-float16", "float32")
QAT_TARGETS = ("distill", "labels")


@dataclass(frozen=True)
class ExportConfig:
    modes: tuple[str, ...] = ("int8",)  # int8 = quantization-aware training, full integer
    # Measured with scripts/measure_qat.py on digits (64 inputs) and digits28 (784 inputs), 360
    # test samples each: 3 distillation epochs at 1e-5 kept 100 % top-1 agreement on both (PTQ
    # int8: 100 % and 99.72 %); fitting labels reached 97.5–99.4 % agreement.
    qat_epochs: int = 3
    qat_learning_rate: float = 1e-5  # 100× below training's: QAT nudges the ranges, not retrains
    qat_target: str = "distill"  # fit the float model's probabilities, not the labels
    qat_batch_size: int = 32  # as in training
    calibration_samples: int = 500  # representative data: enough for stable min/max on 64 units
    float_io: bool = False  # True keeps float32 input/output (QUANTIZE/DEQUANTIZE at the edges)
    # "c++" / "c": beside each integer model, its bytes as a C++ / C source and header (carray.py)
    c_array: str | None = None
    seed: int = 0  # QAT shuffling and calibration sample choice
    # `--mode auto`'s gates, on the validation split: verify's defaults (the test split stays
    # verify's alone, the honest final judge).
    auto_max_drop: float = MAX_DROP_PP
    auto_min_agreement: float = MIN_AGREEMENT

    def __post_init__(self):
        modes = tuple(self.modes) if isinstance(self.modes, (tuple, list)) else (self.modes,)
        if "all" in modes:
            modes = tuple(m for m in modes if m == AUTO) + EXPORT_MODES
        object.__setattr__(self, "modes", tuple(dict.fromkeys(modes)))
        _check(bool(self.modes), "modes", "needs at least one mode", "--mode")
        for m in self.modes:
            _check(
                m in (*EXPORT_MODES, AUTO),
                "modes",
                f"must be one of {', '.join(EXPORT_MODES)}, auto or all, got {m!r}",
                "--mode",
            )
        for name in ("auto_max_drop", "auto_min_agreement"):
            value, hi = getattr(self, name), 100 if name == "auto_max_drop" else 1
            _check(
                _number(value) and 0 <= value <= hi,
                name,
                f"must be in [0, {hi}], got {value!r}",
                flag=False,
            )
        _int_in(self.qat_epochs, "qat_epochs", 0, MAX_EPOCHS)
        _check(
            _number(self.qat_learning_rate) and 0 < self.qat_learning_rate < 1,
            "qat_learning_rate",
            f"must be in (0, 1), got {self.qat_learning_rate!r}",
        )
        _check(
            self.qat_target in QAT_TARGETS,
            "qat_target",
            f"must be one of {', '.join(QAT_TARGETS)}, got {self.qat_target!r}",
        )
        _int_in(self.calibration_samples, "calibration_samples", 1, 1_000_000)
        _int_in(self.qat_batch_size, "qat_batch_size", 1, MAX_BATCH, flag=False)
        _check(
            isinstance(self.float_io, bool),
            "float_io",
            f"must be true or false, got {self.float_io!r}",
        )
        _check(
            self.c_array is None or self.c_array in C_LANGUAGES,
            "c_array",
            f"must be one of {', '.join(C_LANGUAGES)} (or absent), got {self.c_array!r}",
        )
        _int_in(self.seed, "seed", 0, MAX_SEED)


@dataclass(frozen=True)
class VerifyConfig:
    targets: tuple[str, ...] | None = None  # None: every target available here
    max_drop: float = MAX_DROP_PP
    min_agreement: float = MIN_AGREEMENT
    max_lsb: int = MAX_LSB
    max_samples: int | None = None  # cap on test samples (None: the whole test split)
    # Each output's task where inference should not decide it: {output name: task}
    # (analysis/tasks.py); the gates of the tasks other than classification follow.
    tasks: dict = field(default_factory=dict)
    max_rmse_increase: float = MAX_RMSE_INCREASE
    max_auc_drop: float = MAX_AUC_DROP
    min_sqnr_db: float = MIN_SQNR_DB

    def __post_init__(self):
        if self.targets is not None:
            _names(self, "targets")
        _check(
            isinstance(self.tasks, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.tasks.items()),
            "tasks",
            f"must be a table of output name = task, got {self.tasks!r}",
        )
        for name, hi in (("max_rmse_increase", 10.0), ("max_auc_drop", 1.0), ("min_sqnr_db", 200)):
            value = getattr(self, name)
            _check(_number(value) and 0 <= value <= hi, name, f"must be 0 to {hi:g}, got {value!r}")
        _check(
            _number(self.max_drop) and 0 <= self.max_drop <= 100,
            "max_drop",
            f"must be from 0 to 100 percentage points, got {self.max_drop!r}",
        )
        _check(
            _number(self.min_agreement) and 0 <= self.min_agreement <= 1,
            "min_agreement",
            f"must be in [0, 1], got {self.min_agreement!r}",
        )
        _int_in(self.max_lsb, "max_lsb", 0, 65_535)
        if self.max_samples is not None:
            _int_in(self.max_samples, "max_samples", 1, 100_000_000)


@dataclass(frozen=True)
class LayersConfig:
    """`bnpipe layers` (a diagnosis, not a stage: `bnpipe run` does not run it)."""

    # Cap on test samples (None: the whole test split). Every operator output of 10,000
    # MNIST-sized samples is ~15 MB for the MLP; wider models may need a cap (layers says so).
    max_samples: int | None = None

    def __post_init__(self):
        if self.max_samples is not None:
            _int_in(self.max_samples, "max_samples", 1, 100_000_000)


MAX_BENCH_BATCH = 65_536  # × 784 float32 inputs is 200 MB per interpreter


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 32, 1024)  # one request; a small batch; bulk scoring
    threads: tuple[int, ...] = (1, 0)  # 0 = every core; 1 = what a phone app often gets
    warmup: int = 20  # untimed invokes per configuration before timing (caches, XNNPACK packing)
    runs: int = 200  # timed invokes per configuration, split across the interleaved rounds
    rounds: int = 5  # the models take turns this many times, so drift hits every model alike
    keras_runs: int = 30  # Keras calls take milliseconds: fewer runs give as stable a median
    # Timed seconds per configuration at most, all rounds together (its warm-up gets as much):
    # runs is the most invokes, and a large model at batch 1,024 stops short of it rather than
    # take minutes. A small model never meets the budget (the MLP at 1,024: 200 runs ≈ 0.05 s).
    max_seconds: float = 1.0
    targets: tuple[str, ...] = ("host",)  # where to time; arm64 is emulated (not device timing)

    def __post_init__(self):
        for name, lo, hi in (("batch_sizes", 1, MAX_BENCH_BATCH), ("threads", 0, 1024)):
            values = getattr(self, name)
            ok = (
                isinstance(values, (tuple, list))
                and bool(values)
                and all(
                    isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values
                )
            )
            _check(ok, name, f"must be integers from {lo} to {hi:,}, got {values!r}")
            object.__setattr__(self, name, tuple(values))
        _int_in(self.warmup, "warmup", 0, 1_000_000)
        _int_in(self.rounds, "rounds", 1, 1_000, flag=False)
        _int_in(self.runs, "runs", self.rounds, 10_000_000)
        _int_in(self.keras_runs, "keras_runs", 1, 100_000, flag=False)
        _check(
            _number(self.max_seconds) and 0 < self.max_seconds <= 86_400,
            "max_seconds",
            f"must be a number of seconds above 0 and at most a day, got {self.max_seconds!r}",
        )
        _names(self, "targets")


MAX_FIRMWARE_KIB = 1 << 20  # a gigabyte: more than any firmware; a larger value is a typo


@dataclass(frozen=True)
class FitConfig:
    """`bnpipe fit`: which boards each integer model must fit (pipeline/fit/boards.toml)."""

    boards: tuple[str, ...] = ()  # none: `bnpipe run` skips fit; `bnpipe fit` needs --board
    # What your firmware needs beside the model. bnpipe cannot know it; 0 reports the model's
    # own needs, and the headroom left is then what the rest of your firmware may use.
    firmware_flash_kib: int = 0
    firmware_ram_kib: int = 0
    # Your own boards, [fit.profiles.NAME] tables with boards.toml's keys (checked when fit runs).
    profiles: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _names(self, "boards")
        _int_in(self.firmware_flash_kib, "firmware_flash_kib", 0, MAX_FIRMWARE_KIB, flag=False)
        _int_in(self.firmware_ram_kib, "firmware_ram_kib", 0, MAX_FIRMWARE_KIB, flag=False)
        ok = isinstance(self.profiles, dict) and all(
            isinstance(v, dict) for v in self.profiles.values()
        )
        _check(ok, "profiles", f"must be tables of board keys, got {self.profiles!r}", flag=False)


@dataclass(frozen=True)
class ReportConfig:
    """`bnpipe report`: nothing to choose; the page shows every record the artifacts dir holds."""


@dataclass(frozen=True)
class RunConfig:
    """One config per stage: what `bnpipe run` runs."""

    train: TrainConfig = TrainConfig()
    fold: FoldConfig = FoldConfig()
    # The first mode, smallest and fastest first, that keeps the model's accuracy on the
    # validation split, and its float32 twin: run ends with a model fit to ship whenever one is.
    export: ExportConfig = ExportConfig(modes=("auto",))
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()
    fit: FitConfig = FitConfig()  # run only when [fit] boards names some
    report: ReportConfig = ReportConfig()


# Each stage's config class by its table name (the annotations resolved: with postponed
# evaluation a dataclass field's type is only its name).
STAGE_CONFIGS: dict[str, type] = dict(typing.get_type_hints(RunConfig))
