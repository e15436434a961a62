"""Entry points' error handling: a mistake in the input or the config is one readable line, not a traceback."""
from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
#: Set to 1 to get the full traceback of a user error too.
DEBUG_ENV = "GENREFUSION_DEBUG"
#: In a failed job of a Hydra multirun, why it failed (the error line, or a bug's traceback).
FAILURE_FILE = "error.txt"


class SweepJobError(RuntimeError):
    """One sweep job's input or config error, already printed: Hydra marks the job failed, runs the
    others, and ends the sweep with a non-zero exit status."""


def _user_error(error: BaseException) -> BaseException | None:
    """The innermost error in ``error``'s chain that is about the input or the config, if any."""
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    # HydraException: an override or config group that does not compose (drivers that compose many configs).
    user_types = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ConfigKeyError,
                  MissingMandatoryValue, ValidationError, HydraException)
    found, current, seen = None, error, set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # OmegaConf raises its error formatted (the key filled in) from an unformatted original: keep the former.
        if isinstance(current, user_types) and "$FULL_KEY" not in str(current):
            found = current
        # ``raise … from None`` means the earlier error is not the story (a friendlier message replaced it).
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return found


def report_user_errors(function: F) -> F:
    """Run ``function``; an input or config error ends it with ``error: <message>`` and exit status 2.

    The message is the innermost such error's (a missing data root inside a config interpolation
    reads as the missing data root), with where it was raised. Other exceptions (bugs) keep their
    traceback; so does everything when ``GENREFUSION_DEBUG=1``.

    In one job of a Hydra multirun, an error fails that job alone: it is printed, written to the
    job's :data:`FAILURE_FILE`, and raised to Hydra, which runs the other jobs before it reports it.
    """
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 — classified below; anything else is re-raised
            from omegaconf.errors import OmegaConfBaseException

            user = _user_error(error)
            job_dir = _multirun_job_dir()
            if user is None or os.environ.get(DEBUG_ENV) == "1":
                if job_dir is not None:
                    (job_dir / FAILURE_FILE).write_text("".join(traceback.format_exception(error)))
                raise
            frame = traceback.extract_tb(user.__traceback__)[-1] if user.__traceback__ else None
            where = f" [{os.path.relpath(frame.filename)}:{frame.lineno}]" if frame else ""
            message = str(user)
            if isinstance(user, OmegaConfBaseException):  # its first line says it; full_key/object_type lines follow
                message = message.splitlines()[0]
            print(f"error: {message}{where}\n(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
            if job_dir is not None:
                (job_dir / FAILURE_FILE).write_text(f"error: {message}{where}\n")
                raise SweepJobError(message) from None
            sys.exit(2)
    return wrapper  # type: ignore[return-value]


def _multirun_job_dir() -> Path | None:
    """The job's output folder when this call is one job of a Hydra multirun, else ``None``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir)
