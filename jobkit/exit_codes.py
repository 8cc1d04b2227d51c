"""Every exit code of the ``jobkit`` command and its fronts, in one place (as Dramatiq's RET_*)."""

OK = 0
#: A jobkit error, shown as one line on stderr (bad input, an unknown id, a broker that
#: does not answer); also ``jobkit demo`` when a job did not end as planned.
ERROR = 1
#: Wrong command-line usage (argparse's own code).
USAGE = 2
#: ``jobkit embedded status``: no embedded server is running.
NOT_RUNNING = 3
#: Interrupted (Ctrl-C): 128 + SIGINT.
INTERRUPTED = 130
