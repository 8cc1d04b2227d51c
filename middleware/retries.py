"""Retries whose next attempt is never lost to a broker outage.

Dramatiq's ``Retries`` sends a failed job's next attempt from the worker
thread, in ``after_process_message``. If the broker refuses that send (down,
blocked by an alarm, full), Dramatiq logs the error and the worker then acks
the failed delivery: the job is gone (dramatiq#545). Here the failed delivery
stays unacknowledged until its retry is accepted: the send is repeated, with
backoff, for as long as the broker refuses it for a reason that passes (the
worker thread waits, as Dramatiq's own acks do during an outage). A send
refused for good (the retry is over the size limit, say) fails the job
instead, so it is dead-lettered with its reason rather than dropped.

A worker stopped meanwhile leaves the delivery unacknowledged, so the broker
gives it back (RabbitMQ at once, Redis after the heartbeat timeout).
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq.errors
import dramatiq.middleware
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy

from jobkit.errors import BrokerBlocked, BrokerFull

from .job_records import JobCancelled, cancel_requested

#: Refusals that pass: the broker is unreachable, blocked by an alarm, or at its memory limit.
TRANSIENT = (ConnectionError, dramatiq.errors.BrokerConnectionError, BrokerBlocked, BrokerFull)
FIRST_RESEND_S = 0.5
MAX_RESEND_S = 10.0


class Retries(dramatiq.middleware.Retries):
    """Dramatiq's Retries (same options); the next attempt is sent until the broker takes it."""

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or cancel_requested() or isinstance(exception, JobCancelled):
            return  # a cancelled job is not retried (nor dead-lettered): it ends cancelled
        super().after_process_message(
            _UntilAccepted(broker, self), message, result=result, exception=exception
        )


class _UntilAccepted:
    """The broker as Dramatiq's Retries sees it: ``enqueue`` returns once the message is in."""

    def __init__(self, broker: Broker, retries: Retries) -> None:
        self._broker = broker
        self._logger = retries.logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        wait_s = FIRST_RESEND_S
        while True:
            try:
                return self._broker.enqueue(message, delay=delay)
            except TRANSIENT as error:
                if wait_s == FIRST_RESEND_S:
                    self._logger.warning(
                        "the retry of job %s %s was not accepted (%s); its failed attempt "
                        "stays unacknowledged and the retry is sent again until it is",
                        message.actor_name,
                        message.message_id,
                        _line(error),
                    )
                time.sleep(wait_s)
                wait_s = min(wait_s * 2, MAX_RESEND_S)
            except Exception as error:  # noqa: BLE001 - refused for good: dead-letter, not drop
                self._logger.error(
                    "the retry of job %s %s was refused (%s); the job fails and is dead-lettered",
                    message.actor_name,
                    message.message_id,
                    _line(error),
                )
                # Dramatiq's Retries enqueues the worker's MessageProxy, which has fail().
                message.fail()  # type: ignore[attr-defined]
                return message


def _line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
