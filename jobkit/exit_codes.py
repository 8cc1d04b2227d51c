"""Every exit code of the ``jobkit`` command and its fronts, in one place (as Dramatiq's RET_*).

The CLI reference (docs/cli.md, "Exit codes") lists the same table; a test keeps them equal.
"""

OK = 0
#: A jobkit error, shown as one line on stderr: an unknown or ambiguous dead letter id, a
#: job id prefix that several jobs share, a broker that does not answer, an app that
#: cannot be imported, a replay that failed, no job records to read; also ``jobkit demo``
#: when a job did not end as planned.
ERROR = 1
#: Wrong command-line usage, shown as one line naming the option: an unknown option or
#: command, a missing or invalid value (argparse's own code).
USAGE = 2
#: ``jobkit embedded status``: no embedded server is running.
NOT_RUNNING = 3
#: ``jobkit jobs``: no job has the id given (never sent, or its record expired).
NOT_FOUND = 4
#: ``jobkit jobs wait``: the job failed for good, was cancelled or was skipped.
JOB_FAILED = 5
#: ``jobkit jobs wait``: the job had not finished when ``--timeout`` ran out.
TIMED_OUT = 6
#: Interrupted (Ctrl-C): 128 + SIGINT.
INTERRUPTED = 130
#: ``jobkit demo`` stopped by SIGTERM: 128 + SIGTERM.
TERMINATED = 143
