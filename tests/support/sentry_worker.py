"""``dramatiq tests.support.sentry_worker``: logging test actors plus a rate-limited one."""

import actors
from tests.support.limited import declare_limited
from tests.support.logged import declare_logged

logged = declare_logged(actors.broker)
limited = declare_limited(actors.broker)
