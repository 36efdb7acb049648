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
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import BnpipeError
from pipeline.core.safeio import read_bytes


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
        for name in ("strict", "equalize"):
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

    def __post_init__(self):
        if self.targets is not None:
            _names(self, "targets")
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
    report: ReportConfig = ReportConfig()


# Each stage's config class by its table name (the annotations resolved: with postponed
# evaluation a dataclass field's type is only its name).
STAGE_CONFIGS: dict[str, type] = dict(typing.get_type_hints(RunConfig))
# bnpipe.toml holds a few dozen options; a megabyte is thousands of times that.
CONFIG_FILE_MAX_BYTES = 1 << 20


def load_run_config(
    path: Path | None, overrides: dict[str, dict[str, Any]] | None = None
) -> RunConfig:
    """RunConfig from a TOML file whose tables [train], [fold], … take the options' names as keys.

    Every value is checked against its option's type before any stage runs: ConfigError naming
    the file, the table and the key.
    """
    data = _read_toml(path) if path is not None else {}
    where = f"config file {path}" if path is not None else "the options"
    unknown = sorted(set(data) - set(STAGE_CONFIGS))
    if unknown:
        raise BnpipeError(
            f"{where}: unknown table(s) {', '.join(unknown)}; expected {', '.join(STAGE_CONFIGS)}"
        )
    defaults = RunConfig()
    parts = {}
    for name in STAGE_CONFIGS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise BnpipeError(
                f"{where}: [{name}] must be a table of options, got {type(section).__name__} "
                f"{section!r}"
            )
        section = {**section, **(overrides or {}).get(name, {})}
        parts[name] = _section(where, name, getattr(defaults, name), section)
    return RunConfig(**parts)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    # A FIFO, a device or a directory is refused before reading; a real config is a few lines.
    text = read_bytes(path, "config file", BnpipeError, max_bytes=CONFIG_FILE_MAX_BYTES)
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BnpipeError(
            f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise BnpipeError(f"config file {path} is not valid TOML: {exc}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        reason = " ".join(str(exc).split())[:200]
        raise BnpipeError(f"config file {path} cannot be read: {reason}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise BnpipeError(f"config file {path} nests arrays or tables too deeply") from None


def _section(where: str, table: str, default: Any, section: dict[str, Any]) -> Any:
    cls = type(default)
    hints = typing.get_type_hints(cls)
    keys = [f.name for f in dataclasses.fields(cls)]
    bad = sorted(set(section) - set(keys))
    if bad:
        raise BnpipeError(
            f"{where}: [{table}] has unknown key(s) {', '.join(bad)}; "
            f"expected some of {', '.join(sorted(keys))}"
        )
    values = {}
    for key, value in section.items():
        problem = _type_problem(hints[key], value)
        if problem:
            raise ConfigError(key, problem).in_file(where, table) from None
        values[key] = tuple(value) if isinstance(value, list) else value
    # The stage's own defaults (RunConfig's, where they differ from the class's), then the
    # file's values, given to the class: options a file leaves out that depend on another
    # (train's recipe on its arch) are then resolved from what the file says.
    base = cls()
    given = {
        f.name: getattr(default, f.name)
        for f in dataclasses.fields(cls)
        if getattr(default, f.name) != getattr(base, f.name)
    }
    try:
        return cls(**{**given, **values})
    except ConfigError as exc:
        raise exc.in_file(where, table) from None


def _type_problem(hint: Any, value: Any) -> str:
    """Why `value` (as TOML gives it) cannot be an option of type `hint` ("" if it can)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]  # TOML has no null: the inner type
        return _type_problem(inner[0], value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            return f"must be a list, got {_toml_kind(value)} {value!r}"
        for item in value:
            if _type_problem(args[0], item):
                return f"must be a list of {_kind_name(args[0], plural=True)}, got {value!r}"
        return ""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return "" if ok else f"must be {_kind_name(hint)}, got {_toml_kind(value)} {value!r}"


def _kind_name(hint: Any, plural: bool = False) -> str:
    if plural:
        return {int: "integers", float: "numbers", str: "strings"}.get(hint, str(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
