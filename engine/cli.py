"""Entry points' error handling: a mistake in the input or the config is one readable line, not a traceback."""
from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
#: Set to 1 to get the full traceback of a user error too.
DEBUG_ENV = "GENREFUSION_DEBUG"


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
    """
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 — classified below; anything else is re-raised
            from omegaconf.errors import OmegaConfBaseException

            user = _user_error(error)
            if user is None or os.environ.get(DEBUG_ENV) == "1":
                raise
            frame = traceback.extract_tb(user.__traceback__)[-1] if user.__traceback__ else None
            where = f" [{os.path.relpath(frame.filename)}:{frame.lineno}]" if frame else ""
            message = str(user)
            if isinstance(user, OmegaConfBaseException):  # its first line says it; full_key/object_type lines follow
                message = message.splitlines()[0]
            print(f"error: {message}{where}\n(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
            sys.exit(2)
    return wrapper  # type: ignore[return-value]
