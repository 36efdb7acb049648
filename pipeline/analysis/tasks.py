"""What each output of a model is for, and so how it is judged: its task.

    classification  one score per class (softmax, sigmoid or logits) and class-id labels
    regression      float targets, one column per output value
    reconstruction  the output reproduces the input (an autoencoder); the anomaly score is the
                    per-sample reconstruction error, judged by AUC where 0/1 labels mark anomalies
    output          no targets: judged against the float model alone (SQNR, steps)

`decide` infers each output's task from plain facts (its shape, its last activation, the kind of
labels the data holds) and says why; `--task NAME=TASK` or `[verify] tasks = {NAME = "TASK"}`
overrides it. An output it cannot decide is a ModelError (exit 2) naming the output and the
option to set. Plain Python: no TensorFlow here (models.outputs describes a Keras model).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import ModelError

CLASSIFICATION = "classification"
REGRESSION = "regression"
RECONSTRUCTION = "reconstruction"
OUTPUT = "output"
TASKS = (CLASSIFICATION, REGRESSION, RECONSTRUCTION, OUTPUT)

# What the data's labels are, as dataset.py read them.
CLASS_IDS = "class ids"  # int64 (n,) class numbers 0 … num_classes − 1
FLOAT_TARGETS = "float targets"  # float32 (n, k)


@dataclass(frozen=True)
class OutputInfo:
    """One output of a model, as the task needs to know it."""

    name: str  # the Keras output's name (the TFLite signature's output key)
    shape: tuple[int, ...]  # without the batch axis
    activation: str  # the last layer's activation ("softmax", "sigmoid", "linear", …)


@dataclass(frozen=True)
class Labels:
    """What the data holds for the outputs to be judged against."""

    kind: str  # CLASS_IDS or FLOAT_TARGETS
    width: int  # classes (CLASS_IDS) or target columns (FLOAT_TARGETS)


@dataclass(frozen=True)
class Task:
    output: str
    task: str
    why: str  # "set by --task", "inferred: …"

    def describe(self) -> str:
        return f"output {self.output}: {self.task} ({self.why})"


def parse_overrides(items) -> dict[str, str]:
    """`("dense_3=regression", …)` (the CLI's --task) or a {name: task} table (bnpipe.toml) →
    {name: task}; ModelError naming the item that is not NAME=TASK with a known task."""
    pairs: list[tuple[str, str]] = []
    if isinstance(items, dict):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        for item in items or ():
            name, sep, task = str(item).partition("=")
            if not sep or not name.strip():
                raise ModelError(
                    f"--task {item!r} is not NAME=TASK (e.g. --task dense_3=regression)"
                )
            pairs.append((name.strip(), task.strip()))
    out = {}
    for name, task in pairs:
        if task not in TASKS:
            raise ModelError(f"task {task!r} for output {name} is not one of {', '.join(TASKS)}")
        out[name] = task
    return out


def decide(
    outputs: list[OutputInfo],
    input_shape: tuple[int, ...],
    labels: Labels,
    overrides: dict[str, str] | None = None,
) -> list[Task]:
    """Each output's task, in the model's output order. ModelError for an override naming no
    output, or an output whose task cannot be told (naming it and the option to set)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {o.name for o in outputs})
    if unknown:
        raise ModelError(
            f"--task names output(s) {', '.join(unknown)}, which the model does not have; its "
            f"outputs are {', '.join(o.name for o in outputs)}"
        )
    tasks = []
    for o in outputs:
        if o.name in overrides:
            tasks.append(Task(o.name, overrides[o.name], "set by --task / [verify] tasks"))
            continue
        tasks.append(_infer(o, tuple(input_shape), labels, len(outputs)))
    return tasks


def _infer(o: OutputInfo, input_shape: tuple, labels: Labels, n_outputs: int) -> Task:
    width = o.shape[-1] if o.shape else 1
    if labels.kind == FLOAT_TARGETS and n_outputs == 1:
        if len(o.shape) == 1 and width == labels.width:
            return Task(o.name, REGRESSION, f"inferred: float targets, {width} per sample")
        raise ModelError(
            f"output {o.name} has shape {o.shape} but the data holds {labels.width} float "
            f"target(s) per sample; set its task with --task {o.name}=TASK or [verify] tasks"
        )
    if o.shape == input_shape and o.activation != "softmax":
        return Task(o.name, RECONSTRUCTION, "inferred: output shape = input shape")
    if labels.kind == CLASS_IDS and len(o.shape) == 1 and width >= labels.width >= 2:
        how = o.activation if o.activation in ("softmax", "sigmoid") else "scores"
        return Task(o.name, CLASSIFICATION, f"inferred: {how} and class ids")
    raise ModelError(
        f"cannot tell the task of output {o.name} (shape {o.shape}, activation {o.activation}, "
        f"the data holds {labels.kind}, {labels.width} wide); set it with "
        f"--task {o.name}=classification|regression|reconstruction|output or "
        f'[verify] tasks = {{{o.name} = "output"}}'
    )


def only_task(tasks: list[Task]) -> Task:
    """The task of a one-output model (the stages after fold run one output)."""
    if len(tasks) != 1:
        raise ModelError(
            f"the model has {len(tasks)} outputs; the stages after fold take one output"
        )
    return tasks[0]


def outputs_of(model) -> list[OutputInfo]:
    """Each output of a Keras model (either Keras), in its order: the name of the layer that
    makes it (the TFLite signature's key for it), its shape and that layer's activation."""
    found = []
    for t in model.outputs:
        layer = t._keras_history[0]  # (layer or operation, node index, tensor index): both Keras
        shape = tuple(int(d) for d in t.shape[1:] if d is not None)
        found.append(OutputInfo(layer.name, shape, _activation(layer)))
    return found


def _activation(layer) -> str:
    if type(layer).__name__ == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return type(layer).__name__.lower()
    return str(getattr(act, "__name__", act))


def labels_of(ds) -> Labels:
    """What a data set (data.dataset.Dataset) holds: float targets (num_classes 0) or class ids."""
    if ds.num_classes == 0:
        return Labels(FLOAT_TARGETS, int(ds.y_train.reshape(len(ds.y_train), -1).shape[1]))
    return Labels(CLASS_IDS, int(ds.num_classes))


def anomaly_labels(y) -> object:
    """y as 0/1 anomaly marks (int8 (n,)) when it holds exactly the values 0 and 1, else None:
    class ids of several digits mark no anomaly."""
    import numpy as np

    y = np.asarray(y)
    if y.ndim != 1 or not len(y) or set(np.unique(y).tolist()) != {0, 1}:
        return None
    return y.astype(np.int8)


def model_tasks(model, ds, overrides=None) -> list[Task]:
    """decide() for a Keras model and the data set it is judged on."""
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    return decide(outputs_of(model), shape, labels_of(ds), parse_overrides(overrides or {}))
