"""The errors a user can cause. The CLI turns them into one red line and an exit code."""


class CarcliError(Exception):
    """Something went wrong at run time because of the user's input or environment (exit code 1)."""

    exit_code = 1


class UsageError(CarcliError):
    """A flag or argument value that cannot work (exit code 2)."""

    exit_code = 2


class Interrupted(CarcliError):
    """The user stopped a run (Ctrl-C); its resumable state was saved (exit code 130, as for SIGINT)."""

    exit_code = 130
