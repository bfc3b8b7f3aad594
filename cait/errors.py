"""Errors the harness reports to users as one line, each with the exit status the CLI turns it into.

Exit statuses (documented in the README): 0 pass, 1 fail, 2 usage or input error,
3 inconclusive, 4 infrastructure (device, tracking or disk) error.
"""

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_INFRA = 4


class HarnessError(Exception):
    """A problem the user can fix; the message names the file or key and what to do."""

    exit_code = EXIT_USAGE


class ConfigError(HarnessError):
    """Invalid params.yaml or command-line arguments."""


class DataError(HarnessError):
    """Missing, corrupt or wrongly laid out data."""


class BaselineError(HarnessError):
    """A malformed or unusable baseline file, or runs that cannot make one."""


class CurveError(HarnessError):
    """A missing or malformed loss curve (curve CSV, or a curve's values a loss cannot take)."""


class RecordError(HarnessError):
    """A missing or malformed run record (train.json), or one that does not describe its curve."""


class VerdictError(HarnessError):
    """A missing, old or malformed verdict file."""


class StaleVerdictError(HarnessError):
    """A verdict (or the report rendered from it) that judged other files than those on disk now: it
    proves nothing about them, so the gate treats it as inconclusive."""

    exit_code = EXIT_INCONCLUSIVE


class DeviceError(HarnessError):
    """The requested device (or its plugin) is not available."""

    exit_code = EXIT_INFRA


class TrackingError(HarnessError):
    """The MLflow tracking store cannot be reached or written."""

    exit_code = EXIT_INFRA


class OutputError(HarnessError):
    """An output file or folder cannot be written (disk full, read-only, a file where a folder should be)."""

    exit_code = EXIT_INFRA
