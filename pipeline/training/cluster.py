"""The workers of `bnpipe train --strategy multi-worker`: who they are, and meeting them.

TF_CONFIG (JSON in each worker's environment) lists every task's HOST:PORT and says which one
this process is. MultiWorkerMirroredStrategy waits for a missing worker forever, inside C++
that holds the GIL, so before TensorFlow starts the workers meet here on the same ports
(`wait_for_workers`): a missing worker, or one started with other options, is a BnpipeError
(exit 2) naming it, not a hang. Only the standard library is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass

from pipeline.core.errors import BnpipeError

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["HOST0:PORT0", "HOST1:PORT1"]}, '
    '"task": {"type": "worker", "index": 0}}'
)
TF_CONFIG_HINT = (
    f"set it in each worker's environment, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
    "on the first worker and index 1 on the second"
)
JOBS = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains with
# How long a worker waits for every other worker in TF_CONFIG to start. Each worker imports
# TensorFlow first (≈ 6 s, more on a loaded machine); five minutes leaves time to start workers by
# hand on several machines. BNPIPE_JOIN_TIMEOUT (seconds) overrides it.
JOIN_TIMEOUT_S = 300.0
JOIN_TIMEOUT_ENV = "BNPIPE_JOIN_TIMEOUT"
# A collective (an all-reduce of one step) that waits longer than this has lost a worker; the

# ---------------------------------------------------------------------------------------------
# TF_CONFIG


@dataclass(frozen=True)
class Cluster:
    """The cluster TF_CONFIG describes and which of its tasks this process is."""

    tasks: tuple[tuple[str, str], ...]  # (job, "host:port"): the chief first, then the workers
    task_type: str  # "chief" or "worker"
    task_index: int

    @property
    def position(self) -> int:
        """This task's place in `tasks` (0 is the chief: the one that writes artifacts)."""
        order = [job for job, _ in self.tasks]
        return order.index(self.task_type) + self.task_index

    @property
    def address(self) -> str:
        return self.tasks[self.position][1]

    @property
    def is_chief(self) -> bool:
        return self.position == 0

    @property
    def size(self) -> int:
        return len(self.tasks)

    def describe(self, position: int | None = None) -> str:
        """ "worker 1 (HOST:PORT)": this task, or the task at `position` (0: the chief)."""
        position = self.position if position is None else position
        job, address = self.tasks[position]
        index = position - [j for j, _ in self.tasks].index(job)
        return f"{job} {index} ({address})"


def parse_tf_config(text: str | None) -> Cluster:
    """Check TF_CONFIG's JSON and return the Cluster; BnpipeError saying what is wrong otherwise."""
    if text is None or not text.strip():
        raise BnpipeError(
            f"--strategy multi-worker needs the environment variable {TF_CONFIG}; " + TF_CONFIG_HINT
        )
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BnpipeError(
            f"{TF_CONFIG} is not valid JSON ({exc.msg} at character {exc.pos}); " + TF_CONFIG_HINT
        ) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict) or not cfg["cluster"]:
        raise BnpipeError(
            f'{TF_CONFIG} has no "cluster" object listing the workers; ' + TF_CONFIG_HINT
        )
    cluster = cfg["cluster"]
    tasks = _tasks(cluster)
    task_type, index = _this_task(cfg.get("task"), cluster)
    return Cluster(tuple(tasks), task_type, index)


def _tasks(cluster: dict) -> list[tuple[str, str]]:
    """(job, HOST:PORT) of every task, the chief first; BnpipeError for a malformed list."""
    other = sorted(set(cluster) - set(JOBS))
    if other:
        raise BnpipeError(
            f"{TF_CONFIG}'s cluster has the job(s) {', '.join(other)}; multi-worker "
            "training takes only chief and worker tasks"
        )
    tasks, seen = [], set()
    for job in JOBS:
        if job not in cluster:
            continue
        addresses = cluster[job]
        if not isinstance(addresses, list) or not addresses:
            raise BnpipeError(
                f'{TF_CONFIG} cluster "{job}" is {addresses!r}; expected a list of '
                '"HOST:PORT" strings'
            )
        if job == "chief" and len(addresses) != 1:
            raise BnpipeError(
                f'{TF_CONFIG} cluster "chief" lists {len(addresses)} addresses; there is one chief'
            )
        for i, address in enumerate(addresses):
            _check_address(address, f"cluster.{job}[{i}]")
            if address in seen:
                raise BnpipeError(
                    f"{TF_CONFIG} lists {address} twice; every task needs its own HOST:PORT"
                )
            seen.add(address)
            tasks.append((job, address))
    return tasks


def _this_task(task, cluster: dict) -> tuple[str, int]:
    """(type, index) of this process's task, checked against the cluster."""
    if not isinstance(task, dict):
        raise BnpipeError(
            f'{TF_CONFIG} has no "task" object saying which worker this process '
            'is, e.g. "task": {"type": "worker", "index": 0}'
        )
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise BnpipeError(
            f"{TF_CONFIG} task type is {task_type!r}; expected one of the cluster's "
            f"jobs ({', '.join(j for j in JOBS if j in cluster)})"
        )
    count = len(cluster[task_type])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        allowed = "0" if count == 1 else f"0 to {count - 1}"
        raise BnpipeError(
            f"{TF_CONFIG} task index is {index!r}; cluster.{task_type} lists {count} "
            f"address(es), so the index must be {allowed}"
        )
    return task_type, index


def _check_address(address, where: str) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BnpipeError(
            f'{TF_CONFIG} {where} is {address!r}; expected "HOST:PORT" with a port from 1 to 65535'
        )


def current_cluster() -> Cluster:
    """The Cluster of this process's TF_CONFIG (BnpipeError if it is missing or malformed)."""
    return parse_tf_config(os.environ.get(TF_CONFIG))


def join_timeout() -> float:
    text = os.environ.get(JOIN_TIMEOUT_ENV)
    if text is None:
        return JOIN_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BnpipeError(f"{JOIN_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Meeting the other workers

_HELLO = "bnpipe-join"


def wait_for_workers(cluster: Cluster, token: str, timeout_s: float) -> None:
    """Block until every other task of `cluster` is up and runs the same job; BnpipeError if not.

    MultiWorkerMirroredStrategy waits for missing workers forever, inside C++ that holds the
    GIL, so bnpipe meets the others first on the same ports: each task listens on its own
    address and says hello (its position and `token`, a digest of the cluster and the training
    options) to every other task, until it has both reached and heard from all of them. A task
    closes its port only after every other task has reached it, so none is left waiting, and
    TensorFlow's server takes the port over. Workers started with different options are refused
    here, instead of deadlocking in their first all-reduce.
    """
    me = cluster.position
    others = {i: address for i, (_, address) in enumerate(cluster.tasks) if i != me}
    if not others:
        return
    host, _, port = cluster.address.rpartition(":")
    try:
        listener = socket.create_server((host.strip("[]"), int(port)), reuse_port=False)
    except OSError as exc:
        raise BnpipeError(
            f"cannot listen on {cluster.address}, this task's address in "
            f"{TF_CONFIG}: {exc.strerror or exc}"
        ) from None
    listener.settimeout(0.2)
    hello = f"{_HELLO} {me} {token}\n".encode()
    reached, heard = set(), set()
    deadline = time.monotonic() + timeout_s
    try:
        while reached != set(others) or heard != set(others):
            if time.monotonic() > deadline:
                missing = sorted(set(others) - (reached & heard))
                raise BnpipeError(
                    f"{cluster.describe()}: no answer within {timeout_s:g} s from "
                    + ", ".join(cluster.describe(i) for i in missing)
                    + f"; start every task listed in {TF_CONFIG} (or raise {JOIN_TIMEOUT_ENV})"
                )
            reached.update(i for i in sorted(set(others) - reached) if _say_hello(others[i], hello))
            them = _hello_from(listener)
            if them is None or them[0] not in others:
                continue  # nothing yet, or not one of our workers: ignore it
            if them[1] != token:
                if them[0] not in reached:  # so it learns of the mismatch too, not by timing out
                    _say_hello(others[them[0]], hello)
                raise BnpipeError(
                    f"{cluster.describe(them[0])} runs with another cluster or other "
                    "training options; start every worker with the same bnpipe train command and "
                    f"the same {TF_CONFIG} cluster (only the task index differs)"
                )
            heard.add(them[0])
    finally:
        listener.close()


def _hello_from(listener: socket.socket) -> tuple[int, str] | None:
    """(position, token) of the next task that says hello, None if none did in time or what
    came was not a bnpipe hello."""
    try:
        conn, _ = listener.accept()
    except (TimeoutError, BlockingIOError):
        return None
    with conn:
        conn.settimeout(2.0)
        try:
            words = _read_line(conn).split()
        except OSError:
            return None
    if len(words) != 3 or words[0] != _HELLO or not words[1].isdigit():
        return None
    return int(words[1]), words[2]


def _say_hello(address: str, hello: bytes) -> bool:
    """Send `hello` to the task at address; False if it is not listening (yet)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0) as conn:
            conn.sendall(hello)
    except OSError:
        return False
    return True


def _read_line(conn: socket.socket, limit: int = 256) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace")


def job_token(cluster: Cluster, options: dict) -> str:
    """A digest every worker of one job computes alike: the cluster and the training options."""
    text = json.dumps({"cluster": cluster.tasks, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
