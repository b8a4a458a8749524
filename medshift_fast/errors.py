"""The one exception type for errors a user can cause (bad file, unknown domain, wrong shape...).

The message must say what is wrong and what to do; the CLI prints it as one line on stderr and
exits with status 2.
"""


class MedShiftError(Exception):
    """A user-caused error: bad input file, unknown domain, wrong shape, incompatible checkpoint."""


class BackendUnavailableError(MedShiftError, RuntimeError):
    """An explicitly requested backend (cuda / triton / cpp) is not available here."""
