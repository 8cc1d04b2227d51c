"""``dramatiq tests.support.limited_worker``: jobkit's actors, the limited ones, and a JobLog."""

import os

import actors
from tests.support.job_log import JobLog
from tests.support.limited import declare_limited

actors.broker.add_middleware(JobLog(os.environ["JOBKIT_TEST_JOB_LOG"]))
limited = declare_limited(actors.broker)
