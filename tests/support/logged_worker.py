"""``dramatiq tests.support.logged_worker``: jobkit's actors plus the logging test actors."""

import actors
from tests.support.logged import declare_logged

logged = declare_logged(actors.broker)
