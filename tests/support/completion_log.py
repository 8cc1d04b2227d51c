"""Worker-side module for cross-process tests: ``dramatiq tests.support.completion_log``.

Loads jobkit's actors, then records every successfully processed message as
``<actor> <message_id>`` in the file named by ``JOBKIT_TEST_COMPLETION_LOG``,
so tests count completions outside the broker under test.
"""

import os

import dramatiq
from dramatiq import Broker, Message, Middleware

import actors

LOG_ENV = "JOBKIT_TEST_COMPLETION_LOG"


class CompletionLog(Middleware):
    """Appends one line per successful job (one O_APPEND write: atomic across processes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_process_message(
        self, broker: Broker, message: Message, *, result=None, exception=None
    ) -> None:
        if exception is not None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{message.actor_name} {message.message_id}\n".encode())
        finally:
            os.close(fd)


actors.broker.add_middleware(CompletionLog(os.environ[LOG_ENV]))


@dramatiq.actor(queue_name="jobkit-test", max_retries=0)
def record(token: str) -> None:
    """A job that only exists for cross-process tests."""
