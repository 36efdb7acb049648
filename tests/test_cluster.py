"""cluster.py: TF_CONFIG checks and the workers' meeting (plain sockets on 127.0.0.1)."""

from __future__ import annotations

import socket
import threading

import pytest
from helpers import assert_one_line_error, free_ports, tf_config_json

from pipeline.core.errors import BnpipeError
from pipeline.training.cluster import parse_tf_config, wait_for_workers

# --- TF_CONFIG --------------------------------------------------------------------------------


def test_parse_tf_config_workers_and_chief():
    c = parse_tf_config(tf_config_json(["127.0.0.1:2000", "127.0.0.1:2001"], index=1))
    assert c.tasks == (("worker", "127.0.0.1:2000"), ("worker", "127.0.0.1:2001"))
    assert (c.position, c.address, c.is_chief, c.size) == (1, "127.0.0.1:2001", False, 2)
    assert (
        c.describe() == "worker 1 (127.0.0.1:2001)" and c.describe(0) == "worker 0 (127.0.0.1:2000)"
    )
    assert parse_tf_config(tf_config_json(["h:1", "h:2"], index=0)).is_chief

    # With a chief task, the chief comes first and worker 0 is not the chief.
    c = parse_tf_config(tf_config_json(["h:1"], index=0, chief="h:9"))
    assert c.tasks == (("chief", "h:9"), ("worker", "h:1")) and not c.is_chief and c.position == 1
    assert parse_tf_config(
        tf_config_json(["h:1"], index=0, task_type="chief", chief="h:9")
    ).is_chief


HINT = (
    'set it in each worker\'s environment, e.g. TF_CONFIG=\'{"cluster": {"worker": '
    '["HOST0:PORT0", "HOST1:PORT1"]}, "task": {"type": "worker", "index": 0}}\' on '
    "the first worker and index 1 on the second"
)


@pytest.mark.parametrize(
    "text,message",
    [
        (None, "--strategy multi-worker needs the environment variable TF_CONFIG; " + HINT),
        ("  ", "--strategy multi-worker needs the environment variable TF_CONFIG; " + HINT),
        ('{"cluster": ', "TF_CONFIG is not valid JSON (Expecting value at character 12); " + HINT),
        (
            '{"task": {"type": "worker", "index": 0}}',
            'TF_CONFIG has no "cluster" object listing the workers; ' + HINT,
        ),
        (
            '{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, '
            '"task": {"type": "worker", "index": 0}}',
            "TF_CONFIG's cluster has the job(s) ps; "
            "multi-worker training takes only chief and worker tasks",
        ),
        (
            '{"cluster": {"worker": ["h:1", "nohostport"]}, '
            '"task": {"type": "worker", "index": 0}}',
            "TF_CONFIG cluster.worker[1] is 'nohostport'; "
            'expected "HOST:PORT" with a port from 1 to 65535',
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:70000"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG cluster.worker[1] is 'h:70000'; "
            'expected "HOST:PORT" with a port from 1 to 65535',
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG lists h:1 twice; every task needs its own HOST:PORT",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}}',
            (
                'TF_CONFIG has no "task" object saying which worker this process is, e.g. "task": '
                '{"type": "worker", "index": 0}'
            ),
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
            "TF_CONFIG task index is 2; cluster.worker lists 2 address(es), "
            "so the index must be 0 to 1",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "evaluator", "index": 0}}',
            "TF_CONFIG task type is 'evaluator'; expected one of the cluster's jobs (worker)",
        ),
    ],
)
def test_parse_tf_config_refuses_with_one_clear_message(text, message):
    with pytest.raises(BnpipeError) as info:
        parse_tf_config(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "tf_config,expected",
    [
        (None, "--strategy multi-worker needs the environment variable TF_CONFIG; " + HINT),
        (
            "not json",
            "TF_CONFIG is not valid JSON (Expecting value at character 0); " + HINT,
        ),
    ],
)
def test_cli_multi_worker_without_a_valid_tf_config_is_exit_2(tmp_path, tf_config, expected):
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "out"
    result = CliRunner(env={"TF_CONFIG": tf_config}).invoke(
        cli, ["train", "--strategy", "multi-worker", "--artifacts", str(out)]
    )
    assert_one_line_error(result, expected)
    assert not out.exists()


def test_cli_refuses_resume_with_a_strategy(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(
        cli, ["train", "--strategy", "mirrored", "--resume", "--artifacts", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        (
            "Error: --resume works only with --strategy none; --strategy mirrored writes no "
            "per-epoch checkpoints (run it again without --resume)"
        )
    ]
    assert not (tmp_path / "out" / "model.keras").exists()


# --- meeting the other workers (plain sockets on 127.0.0.1, no TensorFlow) ---------------------


def _meet(configs, tokens, timeout_s=20.0):
    """Run wait_for_workers for each (TF_CONFIG, token) in its own thread; their errors or None."""

    results = [None] * len(configs)

    def run(i):
        try:
            wait_for_workers(parse_tf_config(configs[i]), tokens[i], timeout_s)
        except BnpipeError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    assert not any(t.is_alive() for t in threads)
    return results


def test_workers_meet_when_all_are_up_and_agree():
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    configs = [tf_config_json(addresses, index=i) for i in range(3)]
    assert _meet(configs, ["same"] * 3) == [None, None, None]


def test_workers_with_other_options_are_refused_on_both_sides():
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    configs = [tf_config_json(addresses, index=i) for i in range(2)]
    errors = _meet(configs, ["a", "b"])
    for i, error in enumerate(errors):
        assert error == (
            f"worker {1 - i} ({addresses[1 - i]}) runs with another cluster or other "
            "training options; start every worker with the same bnpipe train command "
            "and the same TF_CONFIG cluster (only the task index differs)"
        )


def test_a_missing_worker_is_named_after_the_timeout():
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    [error] = _meet([tf_config_json(addresses, index=0)], ["t"], timeout_s=1.0)
    assert error == (
        f"worker 0 ({addresses[0]}): no answer within 1 s from worker 1 "
        f"({addresses[1]}); start every task listed in TF_CONFIG (or raise "
        "BNPIPE_JOIN_TIMEOUT)"
    )


def test_a_taken_port_is_reported():

    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        other = f"127.0.0.1:{free_ports(1)[0]}"
        with pytest.raises(BnpipeError) as info:
            wait_for_workers(parse_tf_config(tf_config_json([address, other])), "t", 1.0)
    assert str(info.value).startswith(
        f"cannot listen on {address}, this task's address in TF_CONFIG: "
    )
