"""The queues of one demo run: its jobs go there only, its workers consume them only.

Each run sends to ``jobkit-demo-<run>.<queue>`` (``<queue>`` being the actor's own
queue) and deletes those queues when it ends, however it ends. So on a broker that
other workers share, they never take the demo's jobs (they consume the queues their
actors declare) and the demo's workers never take theirs; and whatever an interrupted
run left queued, delayed or dead-lettered goes with its queues instead of running in
the next run. Deleting whole queues is also the only way that works on RabbitMQ, which
cannot remove single messages; on Redis and the embedded server it removes every key
of the queue (``brokers.queue_deletion``).

The run's dead letters stay (``jobkit dead-letters list`` shows them), filed under
their actors' own queues (:func:`refile_dead_letters`): those outlive the run, so
``jobkit queues`` counts them there and ``jobkit dead-letters replay`` sends them
where a worker of the app takes them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from dramatiq import Broker, Message

from brokers.dead_letter_store import Filters, dead_letter_store, has_store

#: Every run's queue names start with this.
PREFIX = "jobkit-demo-"


@dataclass
class RunQueues:
    """Names this run's queues and remembers which it used."""

    run: str = field(default_factory=lambda: secrets.token_hex(4))
    used: set[str] = field(default_factory=set)

    def name(self, queue: str) -> str:
        """This run's queue for the actors' ``queue``."""
        name = f"{PREFIX}{self.run}.{queue}"
        self.used.add(name)
        return name

    def route(self, message: Message) -> Message:
        """``message`` on this run's queue instead of its actor's."""
        return message.copy(queue_name=self.name(message.queue_name))

    def home_of(self, name: str) -> str:
        """The actors' queue whose messages this run's queue ``name`` holds."""
        return name.removeprefix(f"{PREFIX}{self.run}.")

    @property
    def pattern(self) -> str:
        """How the run's queues are named, for people: ``jobkit-demo-<run>.*``."""
        return f"{PREFIX}{self.run}.*"


def refile_dead_letters(broker: Broker, queues: RunQueues) -> int:
    """File the run's dead letters under their actors' queues; returns how many moved.

    A record keeps its id and time; only its queue (and its message's, where a
    replay sends it) changes. Nothing to do without a dead-letter store.
    """
    if not has_store(broker):
        return 0
    store = dead_letter_store(broker)
    moved = 0
    for name in sorted(queues.used):
        home = queues.home_of(name)
        for record in list(store.iter(Filters(queue=name))):
            record["queue"] = home
            if isinstance(record.get("message"), dict):
                record["message"]["queue_name"] = home
            store.add(record)  # the same id: moved from the run's queue index to home's
            moved += 1
    return moved
