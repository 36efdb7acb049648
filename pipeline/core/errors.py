"""The exception hierarchy the CLI turns into exit codes.

BnpipeError          exit 2: bad input or usage; the message is one line, no traceback
  DataError          a data set that cannot be read or does not fit
  ModelError         a model file that cannot be read, or a model bnpipe cannot handle
  ArtifactError      an artifact missing, stale or tampered with
  TargetUnavailable  a requested runtime target that is not set up here
  ModelCrashed       a model that crashed or exhausted a runtime's child process
GateFailed           exit 1: the model was measured and is not fit to ship
KeyboardInterrupt    exit 130 (Ctrl-C); Terminated, exit 143 (SIGTERM, SIGHUP)
anything else        exit BUG_EXIT_CODE: a bug in bnpipe, never mistaken for a failed gate
"""

# EX_SOFTWARE from sysexits.h ("internal software error"): not 1, which is a failed gate, nor 2.
BUG_EXIT_CODE = 70
DEBUG_ENV = "BNPIPE_DEBUG"  # set (to 1) to see an internal error's traceback, as with --debug


class BnpipeError(Exception):
    """Bad input or usage. The CLI prints `Error: <message>` and exits 2."""

    exit_code = 2


class DataError(BnpipeError):
    """A data set that cannot be read, is malformed, or does not fit the model."""


class ModelError(BnpipeError):
    """A model file that cannot be read, or a model bnpipe cannot process."""


class ArtifactError(BnpipeError):
    """An artifact that is missing, stale, or does not match the manifest."""


class TargetUnavailable(BnpipeError):
    """A runtime target that was asked for but is not set up on this machine."""


class ModelCrashed(BnpipeError):
    """A model that crashed a runtime's child process (a signal, the memory limit): the file is
    bad input. Not a ModelError, which a stage may record as one target's failure and go on:
    a crash ends the stage with exit 2, so it never reads as a failed gate (exit 1)."""


class GateFailed(Exception):
    """A verification gate failed: the candidate is not fit to ship. Exit 1."""

    exit_code = 1

    def __init__(self, message: str, failures: list[str] | None = None):
        super().__init__(message)
        self.failures = list(failures or [])


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP): handled like Ctrl-C, so a stage's pending files are discarded. Exit 143.

    A KeyboardInterrupt, so every cleanup that runs on Ctrl-C runs on it too."""

    exit_code = 143
