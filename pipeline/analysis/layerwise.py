"""Where an integer model loses accuracy: every operator output against the float twin, and the
layer that costs the most when it alone is quantized.

Two views, because error shows where it accumulates, not where it is made:

1. The integer file as it is (LiteRT's reference kernels, every intermediate tensor kept) against
   its float twin (fakequant.match_operators pairs the operators): for each operator output,
   the statistics of layerstats.py. An operator's figures include what earlier layers did.
2. The culprit: for each operator alone, the float twin with only that operator quantized as the
   integer file quantizes it (fakequant.FakeQuant: its weights and its output grid), run on the
   test split; the accuracy and the top-1 agreement with the float twin it costs, its own
   output's SQNR, and the model output's. Layers are ranked by agreement lost, then accuracy
   lost, then output SQNR (lowest first): the first is the culprit.

Every model runs in one child process (runtimes/tensors.py). Float models run on LiteRT's
optimized builtin kernels (no delegate), about 5× faster than the reference kernels on a 784-input
MLP and equal to them up to float32 summation order; the integer file runs on the reference
kernels, the numerical truth `verify` compares with. As a check of the method, the float twin with
every operator and the input fake-quantized is compared with the integer file (`Simulation`):
their outputs should be the same codes but for the kernels' rounding of the requantization.

A QAT file's float twin is the folded model before the fine-tune; the fine-tune's small weight
changes count as quantization error here (they are part of what the integer file does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.analysis.consistency import check_computed_shapes, check_constants
from pipeline.analysis.fakequant import Built, FakeQuant, OpPair, match_operators
from pipeline.analysis.layerstats import TensorStats, sqnr_db, tensor_stats
from pipeline.core.errors import DataError, ModelError
from pipeline.core.quantize import to_input
from pipeline.core.safeio import read_bytes
from pipeline.runtimes.tensors import TensorJob, TensorRunner, run_jobs
from pipeline.tflite.file import TfliteInfo, check_io, parse_tflite, quant_params

# The tensors of one run are held in memory whole (N samples × every operator output, twice):
# ~15 MB for a 784-input MLP on 10,000 samples. Past this, --max-samples is asked for.
MAX_TENSOR_BYTES = 2 << 30
_INTEGER = ("int8", "uint8", "int16")


@dataclass
class LayerCost:
    """What one operator costs when it alone is quantized (the others float)."""

    position: int  # in the matched sequence
    op_index: int  # operator index in the integer file
    op: str
    tensor: str  # the operator's output tensor in the integer file
    accuracy: float
    agreement: float  # share of samples with the float twin's top-1
    accuracy_cost_pp: float  # float twin's accuracy − accuracy, percentage points
    agreement_cost: float  # 1 − agreement
    sqnr_db: float | None  # this operator's output vs the float twin's (None: exact)
    output_sqnr_db: float | None  # the model's output vs the float twin's
    rank: int = 0  # 1 = the culprit


@dataclass
class Ranking:
    """The layers by what each alone costs; the library answer for cross-layer equalization and
    `--mode auto` (which layer to fix, or to keep in higher precision)."""

    costs: list[LayerCost]  # in graph order
    float_accuracy: float  # the float twin's, on the same samples
    n: int

    @property
    def order(self) -> list[LayerCost]:
        return sorted(self.costs, key=lambda c: c.rank)

    @property
    def culprit(self) -> LayerCost:
        return self.order[0]


@dataclass
class Simulation:
    """The float twin with everything fake-quantized against the integer file itself."""

    agreement: float  # top-1
    steps_max: int  # largest difference of the last operator's output codes
    share_differ: float  # share of those codes that differ at all


@dataclass(kw_only=True)
class LayerReport:
    """One operator output of the integer file: where it is, its grid, and its statistics."""

    position: int
    op_index: int
    float_op_index: int
    op: str
    tensor: str
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int
    stats: TensorStats
    alone: LayerCost


@dataclass(kw_only=True)
class LayerAnalysis:
    layers: list[LayerReport]  # graph order
    ranking: Ranking
    int8_accuracy: float
    agreement: float  # the integer file's top-1 against the float twin's
    simulation: Simulation
    n: int


@dataclass
class _Twins:
    int8: TfliteInfo
    float_: TfliteInfo
    int8_bytes: bytes
    float_bytes: bytes
    pairs: list[OpPair]


Model = Path | str | bytes  # a .tflite file, or a model's bytes (export's converter gives bytes)


def _read(model: Model, what: str) -> tuple[bytes, str]:
    """(the model's bytes, what messages call it)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), what
    return read_bytes(model, what, ModelError), str(model)


def _load_twins(int8_model: Model, float_model: Model) -> _Twins:
    """Both models read, checked structurally, and paired; ModelError otherwise."""
    q_bytes, int8_path = _read(int8_model, "the integer model")
    f_bytes, float_path = _read(float_model, "the float twin")
    qi = check_io(parse_tflite(q_bytes, int8_path))
    fi = check_io(parse_tflite(f_bytes, float_path))
    check_constants(q_bytes, int8_path)  # weights are read out of them: sizes must agree
    check_constants(f_bytes, float_path)
    if fi.input_tensor().dtype != "float32":
        raise ModelError(f"the reference {float_path} takes {fi.input_tensor().dtype} input; "
                         "it must be the float twin (model_float32.tflite)")  # fmt: skip
    pairs = match_operators(qi, fi)
    for p in pairs:
        q_out, f_out = qi.tensors[p.int8_output], fi.tensors[p.float_output]
        if q_out.dtype not in _INTEGER or len(q_out.scale) != 1:
            raise ModelError(
                f"{int8_path} is not an integer model: {p.op} #{p.int8_op} outputs "
                f"{q_out.dtype}{'' if len(q_out.scale) < 2 else ' per channel'}; `bnpipe "
                "layers` compares an int8 or int16x8 model with its float twin"
            )
        if f_out.dtype != "float32":
            raise ModelError(f"the reference {float_path} is not a float model: {p.op} "
                             f"#{p.float_op} outputs {f_out.dtype}")  # fmt: skip
    return _Twins(qi, fi, q_bytes, f_bytes, pairs)


def check_twins(int8_path: Model, float_path: Model) -> list[OpPair]:
    """The paired operators of the integer file and its float twin: ModelError, naming what is
    wrong, when they cannot be compared (unreadable, not integer / not float, not twins)."""
    return _load_twins(int8_path, float_path).pairs


def _check_memory(twins: _Twins, n: int) -> None:
    per_sample = sum(
        (4 + 2) * int(np.prod([max(d, 1) for d in twins.int8.tensors[p.int8_output].shape[1:]]))
        for p in twins.pairs
    )  # the float twin's float32, the file's codes and the alone run's float32, roughly
    if n * per_sample * 2 > MAX_TENSOR_BYTES:
        fits = max(1, MAX_TENSOR_BYTES // (2 * per_sample))
        raise DataError(
            f"{n:,} samples × {per_sample:,} bytes of tensors per sample exceed "
            f"{MAX_TENSOR_BYTES:,} bytes; pass --max-samples {fits:,} or fewer"
        )


def _float_job(twins: _Twins, x: np.ndarray) -> TensorJob:
    """The float twin, every matched operator output and the model output kept."""
    keep = (*[p.float_output for p in twins.pairs], twins.float_.outputs[0])
    return TensorJob(twins.float_bytes, x, keep, f"the float twin {twins.float_.path}", False)


def _int8_job(twins: _Twins, xq: np.ndarray) -> TensorJob:
    """The integer file on the reference kernels, every operator output and the model output."""
    keep = (*[p.int8_output for p in twins.pairs], twins.int8.outputs[0])
    return TensorJob(twins.int8_bytes, xq, keep, twins.int8.path)


def _built_job(twins: _Twins, x: np.ndarray, b: Built, position: int, what: str) -> TensorJob:
    """A FakeQuant model: the output of the operator at `position` and the model's output."""
    label = f"the float twin with {what} of {Path(twins.int8.path).name} quantized"
    return TensorJob(b.data, x, (b.quantized[position], b.output), label, reference=False)


def _alone_jobs(twins: _Twins, x: np.ndarray, built: list[Built]) -> list[TensorJob]:
    return [
        _built_job(twins, x, b, p.position, f"{p.op} #{p.int8_op}")
        for p, b in zip(twins.pairs, built, strict=True)
    ]


def _top1(out: np.ndarray) -> np.ndarray:
    return out.reshape(len(out), -1).argmax(axis=1)


def _accuracy(pred: np.ndarray, y: np.ndarray | None) -> float:
    return float(np.mean(pred == y)) if y is not None else float("nan")


def _costs(twins: _Twins, ref: dict, alone: list[dict], built: list[Built], y) -> list[LayerCost]:
    """LayerCost of each operator from its single-layer run and the float twin's run `ref`."""
    ref_out = ref[twins.float_.outputs[0]]
    ref_pred = _top1(ref_out)
    float_acc = _accuracy(ref_pred, y)
    costs = []
    for p, run, b in zip(twins.pairs, alone, built, strict=True):
        own, out = run[b.quantized[p.position]], run[b.output]
        pred = _top1(out)
        acc, agree = _accuracy(pred, y), float(np.mean(pred == ref_pred))
        costs.append(LayerCost(
            p.position, p.int8_op, p.op, twins.int8.tensors[p.int8_output].name, acc, agree,
            100 * (float_acc - acc), 1 - agree, sqnr_db(ref[p.float_output], own),
            sqnr_db(ref_out, out),
        ))  # fmt: skip
    return costs


def rank(costs: list[LayerCost]) -> list[LayerCost]:
    """Set each cost's rank (1 = culprit): agreement lost, then accuracy lost (NaN, no labels:
    0), then the lowest output SQNR (None, an exact output, last). Mutates and returns `costs`."""

    def badness(c: LayerCost):
        sqnr = c.output_sqnr_db if c.output_sqnr_db is not None else float("inf")
        acc = c.accuracy_cost_pp if c.accuracy_cost_pp == c.accuracy_cost_pp else 0.0
        return (-c.agreement_cost, -acc, sqnr, c.position)

    for r, c in enumerate(sorted(costs, key=badness), start=1):
        c.rank = r
    return costs


def _simulation(twins: _Twins, q_run: dict, s_run: dict, sim: Built) -> Simulation:
    last = twins.pairs[-1]
    t = twins.int8.tensors[last.int8_output]
    codes = q_run[last.int8_output].astype(np.int64)
    sim_codes = np.rint(s_run[sim.quantized[last.position]] / t.scale[0]).astype(np.int64)
    diff = np.abs(sim_codes + t.zero_point[0] - codes)
    agree = np.mean(_top1(s_run[sim.output]) == _top1(q_run[twins.int8.outputs[0]]))
    return Simulation(float(agree), int(diff.max()), float(np.mean(diff > 0)))


def _report(twins: _Twins, p: OpPair, ref: dict, q_run: dict, cost: LayerCost) -> LayerReport:
    t = twins.int8.tensors[p.int8_output]
    stats = tensor_stats(
        ref[p.float_output], q_run[p.int8_output], t.scale[0], t.zero_point[0], t.dtype
    )
    return LayerReport(
        position=p.position,
        op_index=p.int8_op,
        float_op_index=p.float_op,
        op=p.op,
        tensor=t.name,
        shape=list(t.shape),
        dtype=t.dtype,
        scale=float(t.scale[0]),
        zero_point=int(t.zero_point[0]),
        stats=stats,
        alone=cost,
    )


def _check_fit(twins: _Twins, x: np.ndarray) -> None:
    for info in (twins.int8, twins.float_):
        features = [max(d, 1) for d in info.input_tensor().shape[1:]]
        if list(x.shape[1:]) != features:
            raise DataError(
                f"{info.path} takes inputs of shape (N, {', '.join(map(str, features))}) but "
                f"the data has {tuple(x.shape)}"
            )
    if len(x) == 0:
        raise DataError("no samples to compare the models on")


def _prepare(int8_path, float_path, x: np.ndarray):
    """(twins, FakeQuant) for the two files, checked against the data x."""
    twins = _load_twins(int8_path, float_path)
    _check_fit(twins, x)
    _check_memory(twins, len(x))
    fq = FakeQuant(twins.int8_bytes, twins.float_bytes, twins.pairs,
                   (twins.int8.path, twins.float_.path))  # fmt: skip
    return twins, fq


def analyse_layers(
    int8_path: Model,
    float_path: Model,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    codes: np.ndarray | None = None,
    values: np.ndarray | None = None,
    say: Callable[[str], None] | None = None,
    runner: TensorRunner | None = None,
) -> LayerAnalysis:
    """Both views of the module docstring for the integer file `int8_path` against its float twin
    `float_path`, on x: float32 (N, features) preprocessed; y: (N,) labels or None (then the
    accuracies are NaN and agreement alone ranks). codes, values: the integer pixels behind x,
    as quantize.to_input takes them (a faster input quantization, the same codes). runner: a
    TensorRunner started ahead (else one is started here). Writes nothing.

    ModelError for files that cannot be read, paired, or run (LiteRT crashing included)."""
    say = say or (lambda m: None)
    twins, fq = _prepare(int8_path, float_path, x)
    built = [fq.model([p.position]) for p in twins.pairs]
    sim = fq.model(range(len(twins.pairs)), quantize_input=True)
    xq = to_input(x, quant_params(twins.int8.input_tensor()), codes, values)
    say(f"LiteRT: {len(built) + 3} models on {len(x):,} samples, in a child process")
    last = len(twins.pairs) - 1
    jobs = [_float_job(twins, x), _int8_job(twins, xq), *_alone_jobs(twins, x, built),
            _built_job(twins, x, sim, last, "every operator and the input")]  # fmt: skip
    runs = runner.run(jobs) if runner is not None else run_jobs(jobs)
    check_computed_shapes(jobs, runs)  # a file whose operators compute other shapes than it says
    ref, q_run, alone, s_run = runs[0], runs[1], runs[2:-1], runs[-1]
    costs = rank(_costs(twins, ref, alone, built, y))
    q_pred, ref_pred = _top1(q_run[twins.int8.outputs[0]]), _top1(ref[twins.float_.outputs[0]])
    return LayerAnalysis(
        layers=[_report(twins, p, ref, q_run, c) for p, c in zip(twins.pairs, costs, strict=True)],
        ranking=Ranking(costs, _accuracy(ref_pred, y), len(x)),
        int8_accuracy=_accuracy(q_pred, y),
        agreement=float(np.mean(q_pred == ref_pred)),
        simulation=_simulation(twins, q_run, s_run, sim),
        n=len(x),
    )


def rank_layers(
    int8_path: Model,
    float_path: Model,
    x: np.ndarray,
    y: np.ndarray | None = None,
    say: Callable[[str], None] | None = None,
) -> Ranking:
    """The culprit ranking alone (view 2) for the integer file against its float twin on x
    (float32, preprocessed) and labels y (or None): which layer, quantized alone as in the file,
    costs the most. For cross-layer equalization and `--mode auto`: either model may be bytes
    (export's converter output) instead of a file. Writes nothing."""
    say = say or (lambda m: None)
    twins, fq = _prepare(int8_path, float_path, x)
    built = [fq.model([p.position]) for p in twins.pairs]
    say(f"LiteRT: {len(built) + 1} models on {len(x):,} samples, in a child process")
    jobs = [_float_job(twins, x), *_alone_jobs(twins, x, built)]
    runs = run_jobs(jobs)
    check_computed_shapes(jobs, runs)
    costs = rank(_costs(twins, runs[0], runs[1:], built, y))
    return Ranking(costs, _accuracy(_top1(runs[0][twins.float_.outputs[0]]), y), len(x))
