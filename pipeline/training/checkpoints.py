"""Per-epoch checkpoints of a training, so that `bnpipe train --resume` can continue it.

    <artifacts>/.resume/train/epoch-NNNN/   ckpt.* (weights and the optimizer's state),
                                            state.json (epoch, options, history, data)

A checkpoint directory is written under a temporary name and renamed, so one that exists is
complete whenever the process was stopped; only the newest is kept (the rename and the removal
of the older ones hold Ctrl-C back, so an interrupt never leaves two). A checkpoint continues only
the training it came from: same options (bar the epoch count) and same data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.core.config import TrainConfig
from pipeline.core.errors import ArtifactError
from pipeline.core.interrupts import interrupts_deferred
from pipeline.store import artifacts

_EPOCH_PREFIX = "epoch-"
_STATE_FILE = "state.json"


def _tf_checkpoint(model):
    from pipeline.core.tfenv import tf

    return tf().train.Checkpoint(model=model, optimizer=model.optimizer)


def save(root: Path, model, epoch: int, config: TrainConfig, fingerprint: str, hist: dict) -> None:
    """Write epoch-NNNN/ (weights, optimizer state, history) whole or not at all; drop older ones.

    The directory is written under a temporary name and renamed: a checkpoint that exists is
    complete, whenever the process is stopped.
    """
    final = root / f"{_EPOCH_PREFIX}{epoch:04d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=artifacts.TMP_PREFIX, dir=root))
    except OSError as exc:
        raise artifacts.write_error(final, exc) from None
    try:
        _write_tf_checkpoint(model, tmp / "ckpt", final)
        # Written in place, not through artifacts.write_json: the directory rename below is what
        # makes the checkpoint appear whole, and it must not wait for the stage's transaction.
        state = {
            "epoch": epoch,
            "config": config.to_dict(),
            "history": hist,
            "inputs": {"data": fingerprint},
        }
        (tmp / _STATE_FILE).write_text(json.dumps(artifacts.jsonable(state)))
        # The swap holds Ctrl-C back: a signal between the rename and the removal of the older
        # checkpoints would leave two of them.
        with interrupts_deferred():
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in root.glob(f"{_EPOCH_PREFIX}*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a read-only directory
            raise artifacts.write_error(final, exc) from None
        raise


def _write_tf_checkpoint(model, prefix: Path, final: Path) -> None:
    """TensorFlow's checkpoint writer; its errors from the file system (OpError: "File too
    large", "No space left on device" …) become the ArtifactError of a failed write."""
    from pipeline.core.tfenv import tf

    try:
        _tf_checkpoint(model).write(str(prefix))
    except tf().errors.OpError as exc:
        # e.g. "{{function_node …}} /path/part-…; No space left on device [Op:SaveV2]"
        reason = exc.message.rsplit("; ", 1)[-1].split(" [Op:")[0].strip()
        raise ArtifactError(f"cannot write {final}: {reason[:200]}") from None


def resume_point(
    model, root: Path, config: TrainConfig, fingerprint: str, resume: bool | str, say
) -> tuple[int, dict]:
    """(epochs done, history so far) to continue from, restored into `model` (mutated).

    resume: False starts afresh; True continues the last checkpoint (ArtifactError if it belongs
    to other options or data; a note and a fresh start if there is none); "auto" continues a
    matching checkpoint and starts afresh otherwise.
    """
    if not resume:
        return 0, {}
    found = latest(root)
    if found is None:
        say(f"no interrupted training to resume in {root}; training from the start")
        return 0, {}
    why = mismatch(artifacts.read_json(found / _STATE_FILE), config, fingerprint)
    if why and resume != "auto":
        raise ArtifactError(
            f"cannot resume from {found}: {why}; run without --resume to train from the start"
        )
    if why:
        return 0, {}
    start, hist = restore(model, found)
    say(f"resuming after epoch {start} of {config.epochs} ({found})")
    return start, hist


def latest(root: Path) -> Path | None:
    done = sorted(p for p in root.glob(f"{_EPOCH_PREFIX}*") if (p / _STATE_FILE).is_file())
    return done[-1] if done else None


def mismatch(state: dict, config: TrainConfig, fingerprint: str) -> str:
    """Why a checkpoint cannot continue this training ("" if it can).

    Every option but the epoch count must match: more epochs continue the same run, because an
    epoch's order and updates do not depend on how many epochs follow it.
    """
    mine = json.loads(json.dumps(config.to_dict()))
    theirs = state.get("config", {})
    diff = sorted(
        k for k in set(mine) | set(theirs) if k != "epochs" and mine.get(k) != theirs.get(k)
    )
    if diff:
        return (
            "it was trained with other options ("
            + ", ".join(f"{k}={theirs.get(k)!r}, now {mine.get(k)!r}" for k in diff)
            + ")"
        )
    if state.get("inputs", {}).get("data") != fingerprint:
        return "it was trained on other data"
    if state.get("epoch", 0) > config.epochs:
        return f"it has already done {state['epoch']} epochs, more than --epochs {config.epochs}"
    return ""


def restore(model, found: Path) -> tuple[int, dict]:
    state = artifacts.read_json(found / _STATE_FILE)
    model.optimizer.build(model.trainable_variables)  # slots exist before values are read in
    try:
        _tf_checkpoint(model).read(str(found / "ckpt")).assert_existing_objects_matched()
    except Exception as exc:
        raise ArtifactError(
            f"checkpoint {found} is damaged: {str(exc).splitlines()[0][:200]}; "
            "run without --resume to train from the start"
        ) from None
    return int(state["epoch"]), {k: list(v) for k, v in state.get("history", {}).items()}


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # .resume/, if nothing else is resumable
