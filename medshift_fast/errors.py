"""The one exception type for errors a user can cause (bad file, unknown domain, wrong shape...),
and the one warning type for what a user should know but that does not stop the work.

The message must say what is wrong and what to do; the CLI prints an error as one line on stderr
and exits with status 2, a warning as one line on stderr.
"""


class MedShiftError(Exception):
    """A user-caused error: bad input file, unknown domain, wrong shape, incompatible checkpoint."""


class BackendUnavailableError(MedShiftError, RuntimeError):
    """An explicitly requested backend (cuda / triton / cpp) is not available here."""


class MedShiftWarning(UserWarning):
    """Something a user should know that does not stop the work (e.g. a run saved without the
    hashes that verify it); the CLI prints it as one line on stderr."""
