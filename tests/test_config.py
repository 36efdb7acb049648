"""config.py: every option checked on construction, and bnpipe.toml values of every wrong kind
refused with their table and key, before any stage runs."""

import pytest

from pipeline.core.config import (
    MAX_SEED,
    BenchConfig,
    ConfigError,
    ExportConfig,
    RunConfig,
    TrainConfig,
    VerifyConfig,
)
from pipeline.core.configfile import load_run_config
from pipeline.core.errors import BnpipeError


def test_train_config_checks_the_strategy():
    assert TrainConfig().strategy == "none"
    with pytest.raises(BnpipeError) as info:
        TrainConfig(strategy="horovod")
    assert (
        str(info.value) == "--strategy must be one of none, mirrored, multi-worker, got 'horovod'"
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: TrainConfig(seed=MAX_SEED + 1),
            "--seed must be an integer from 0 to 4,294,967,295",
        ),
        (lambda: TrainConfig(seed=-1), "--seed must be an integer from 0 to 4,294,967,295, got -1"),
        (lambda: TrainConfig(hidden=(10**9,)), "--hidden needs 1 to 64 widths from 1 to 8,192"),
        (lambda: TrainConfig(hidden=()), "--hidden needs 1 to 64 widths"),
        (lambda: TrainConfig(batch_size=10**12), "--batch-size must be an integer from 1 to"),
        (lambda: TrainConfig(learning_rate=float("nan")), "--learning-rate must be in (0, 1)"),
        (
            lambda: TrainConfig(epochs=True),
            "--epochs must be an integer from 1 to 10,000, got True",
        ),
        (lambda: ExportConfig(modes=("int9",)), "--mode must be one of int8, float32"),
        (lambda: ExportConfig(modes=()), "--mode needs at least one mode"),
        (lambda: ExportConfig(c_array="rust"), "--c-array must be one of c++, c (or absent)"),
        (lambda: TrainConfig(arch="rnn"), "--arch must be one of mlp, cnn, got 'rnn'"),
        (lambda: TrainConfig(arch="cnn", hidden=(8,)), "--hidden sets the MLP's Dense widths"),
        (lambda: VerifyConfig(max_drop=float("inf")), "--max-drop must be from 0 to 100"),
        (lambda: BenchConfig(batch_sizes=(1 << 30,)), "--batch-sizes must be integers from 1"),
        (lambda: BenchConfig(runs=2), "--runs must be an integer from 5"),
    ],
)
def test_absurd_values_are_refused_naming_the_option(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).startswith(message), str(info.value)


def _load(tmp_path, text: str | bytes):
    path = tmp_path / "bnpipe.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_run_config(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[train]\nepochs = "ten"\n', "[train] epochs must be an integer, got a string 'ten'"),
        ("[train]\nepochs = 1.5\n", "[train] epochs must be an integer, got a number 1.5"),
        ("[train]\nepochs = true\n", "[train] epochs must be an integer, got a boolean True"),
        ("[train]\nepochs = 0\n", "[train] epochs must be an integer from 1 to 10,000, got 0"),
        ("[train]\nseed = 99999999999999999\n", "[train] seed must be an integer from 0 to"),
        ("train = 3\n", "[train] must be a table of options, got int 3"),
        ('[train]\nhidden = [8, "a"]\n', "[train] hidden must be a list of integers, got [8, 'a']"),
        ("[train]\nhidden = 8\n", "[train] hidden must be a list, got an integer 8"),
        ("[train]\nepochs = {a = 1}\n", "[train] epochs must be an integer, got a table"),
        ("[verify]\nmax_drop = [1]\n", "[verify] max_drop must be a number, got a list [1]"),
        ('[verify]\ntargets = "host"\n', "[verify] targets must be a list, got a string 'host'"),
        ('[export]\nmodes = ["int9"]\n', "[export] modes must be one of int8"),
        ("[export]\nc_array = 1\n", "[export] c_array must be a string, got an integer 1"),
        ("[fold]\nstrict = 1\n", "[fold] strict must be true or false, got an integer 1"),
        ("[fold]\nequalize_from = 0.5\n", "[fold] equalize_from must be a ratio of at least 1"),
        ('[fold]\nequalize_from = "8"\n', "[fold] equalize_from must be a number, got a string"),
        ("[bench]\nmax_seconds = 0\n", "[bench] max_seconds must be a number of seconds above 0"),
        ("[trian]\nepochs = 1\n", "unknown table(s) trian"),
        ("[train]\nepoch = 1\n", "[train] has unknown key(s) epoch"),
        ("[train\n", "is not valid TOML"),
        (b"[train]\ndata = '\xff'\n", "is not UTF-8 text"),
    ],
)
def test_config_file_values_of_the_wrong_kind_name_table_and_key(tmp_path, text, message):
    with pytest.raises(BnpipeError) as info:
        _load(tmp_path, text)
    msg = str(info.value)
    assert message in msg, msg
    assert "\n" not in msg and "--" not in msg.split(":", 1)[1]  # the key, not the CLI flag


def test_a_valid_file_overrides_only_what_it_names(tmp_path):
    config = _load(tmp_path, '[train]\nepochs = 3\nhidden = [8, 8]\n[verify]\ntargets = ["host"]\n')
    assert config.train.epochs == 3 and config.train.hidden == (8, 8)
    assert config.verify.targets == ("host",)
    assert config.fold == RunConfig().fold and config.export.modes == RunConfig().export.modes


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BnpipeError, match="does not exist"):
        load_run_config(tmp_path / "nope.toml")
    with pytest.raises(BnpipeError, match="is a directory, not a regular file"):
        load_run_config(tmp_path)
