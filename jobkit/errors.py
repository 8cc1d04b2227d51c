"""Errors that jobkit shows to users as one line (no traceback unless ``--verbose``)."""


class JobkitError(Exception):
    """Base class: ``str(error)`` is a complete one-line explanation with a fix."""


class BrokerConfigError(JobkitError, ValueError):
    """The broker configuration (usually ``JOBKIT_BROKER_URL``) cannot be used."""


class SettingsError(BrokerConfigError):
    """A variable of the settings table (``jobkit.settings``) holds a value jobkit cannot use.

    ``str()`` is one line, ``JOBKIT_<NAME>='value': what is accepted``, secrets masked.
    A ``BrokerConfigError`` so that handlers of configuration errors catch it too.
    """


class BrokerUnavailable(JobkitError, ConnectionError):
    """The configured broker did not answer, or refused our credentials."""


class BrokerRefused(BrokerUnavailable):
    """The broker answered but refused our credentials or access: retrying cannot help."""


class EmbeddedServerError(JobkitError, RuntimeError):
    """The embedded Valkey server could not be started, reached or stopped."""


class BrokerFull(JobkitError, RuntimeError):
    """The broker refused a message for lack of memory; nothing was enqueued."""


class BrokerBlocked(JobkitError, RuntimeError):
    """The broker blocked a publish (a memory or disk alarm) past the timeout; not confirmed."""


class UsageError(JobkitError, ValueError):
    """The command line asks for something it cannot mean (exit code ``USAGE``, not ``ERROR``)."""
