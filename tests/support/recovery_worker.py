"""``dramatiq tests.support.recovery_worker``: jobkit's actors, the recovery ones, and a JobLog."""

import os

import actors
from tests.support.job_log import JobLog
from tests.support.recovery import (
    declare_blocking,
    declare_failing,
    declare_sleepy,
    declare_suicidal,
)

actors.broker.add_middleware(JobLog(os.environ["JOBKIT_TEST_JOB_LOG"]))
blocking = declare_blocking(actors.broker)
suicidal = declare_suicidal(actors.broker)
sleepy = declare_sleepy(actors.broker)
failing = declare_failing(actors.broker)
