"""Emails: send through SMTP, or write ``.eml`` files to an outbox when no server is set.

    from actors.emails import send_email
    send_email("ada@example.com", "Your report is ready", "Hi Ada, it is attached.",
               html="<p>Hi Ada, it is attached.</p>")

``JOBKIT_SMTP_URL`` picks the server: ``smtp://user:password@host:587``
(STARTTLS whenever the server offers it; ``?starttls=require`` refuses a
server that does not, ``?starttls=off`` never uses it), ``smtps://host:465``
(TLS from the first byte). ``?timeout=S`` (default 30) and ``?cafile=PATH``
(a CA bundle for a private server's certificate) are accepted too. Unset, each
email is written to ``JOBKIT_EMAIL_OUTBOX`` (default ``.jobkit/outbox``) as
``<Message-ID>.eml``, like a file email backend.

Sending is rate-limited per recipient domain (``JOBKIT_EMAIL_RATE_LIMIT``,
default ``10/s``; a provider throttles a domain that receives too fast). A
4xx reply, a dropped connection or a timeout is retried with backoff; a 5xx
reply (unknown mailbox, refused sender, failed login) or an invalid address
raises ``EmailRejected`` and is dead-lettered at once, without retries.

The ``Message-ID`` is fixed when the job is sent, so a retry after a lost
reply carries the same id and a receiving server or the outbox can drop the
repeat.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email import errors
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import dramatiq

from actors.outputs import write_atomically
from jobkit.settings import current, mask_url

QUEUE = "emails"
SMTP_URL_ENV = "JOBKIT_SMTP_URL"
OUTBOX_ENV = "JOBKIT_EMAIL_OUTBOX"
SENDER_ENV = "JOBKIT_EMAIL_FROM"
RATE_LIMIT_ENV = "JOBKIT_EMAIL_RATE_LIMIT"
MAX_RECIPIENTS = 100

logger = logging.getLogger("jobkit.emails")


class EmailRejected(Exception):
    """The email cannot be sent as it is (5xx reply, bad address or header): not retried."""


class EmailDeferred(Exception):
    """The server or the network failed for now (4xx reply, connection, timeout): retried."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    implicit_tls: bool
    starttls: str  # "auto", "require" or "off"
    username: str | None
    password: str | None
    timeout_s: float
    cafile: str | None
    display: str

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """Settings from ``smtp://`` or ``smtps://`` URL; a malformed URL raises ``ValueError``."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                f"{SMTP_URL_ENV}={mask_url(url)!r}: write smtp://[user:password@]host[:port] "
                "or smtps://..."
            )
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        starttls = query.get("starttls", "auto")
        if starttls not in ("auto", "require", "off"):
            raise ValueError(f"{SMTP_URL_ENV}: starttls must be auto, require or off")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            implicit_tls=implicit,
            starttls="off" if implicit else starttls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout_s=float(query.get("timeout", 30)),
            cafile=query.get("cafile"),
            display=mask_url(url),
        )

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)


def recipient_domain(args: tuple, kwargs: dict) -> str:
    """The rate-limit key: the domain of the first recipient, lower-cased."""
    to = kwargs.get("to", args[0] if args else "")
    first = to[0] if isinstance(to, list | tuple) and to else to
    return str(first).rpartition("@")[2].strip().strip(">").lower() or "unknown"


def send_email(
    to: str | list[str],
    subject: str,
    body: str,
    *,
    html: str | None = None,
    sender: str | None = None,
    reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    priority: str | None = None,
) -> dramatiq.Message:
    """Enqueue an email; its ``Message-ID`` is chosen now and kept on every attempt."""
    options: dict[str, Any] = {"priority": priority} if priority else {}
    return deliver_email.send_with_options(
        args=(to, subject, body),
        kwargs={
            "html": html,
            "sender": sender,
            "reply_to": reply_to,
            "headers": headers or {},
            "message_id": make_msgid(domain="jobkit"),
        },
        **options,
    )


@dramatiq.actor(
    queue_name=QUEUE,
    max_retries=10,
    min_backoff=5_000,
    max_backoff=900_000,
    throws=(EmailRejected,),
    time_limit=300_000,
    rate_limit=current().email_rate_limit,
    rate_limit_key=recipient_domain,
)
def deliver_email(
    to: str | list[str],
    subject: str,
    body: str,
    html: str | None = None,
    sender: str | None = None,
    reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> None:
    """Send one email (plain text, plus an HTML part when ``html`` is given)."""
    email = build_email(to, subject, body, html, sender, reply_to, headers, message_id)
    settings = current()
    smtp_url = settings.smtp_url
    if not smtp_url:
        path = write_to_outbox(email, settings.email_outbox)
        logger.info("email %s written to %s", email["Message-ID"], path)
        return
    try:
        smtp = SmtpSettings.from_url(smtp_url)
    except ValueError as error:
        raise EmailRejected(str(error)) from None
    refused = send_over_smtp(email, smtp)
    recipients = len(recipients_of(email))
    logger.info(
        "email %s sent through %s to %d of %d recipients",
        email["Message-ID"],
        smtp.display,
        recipients - len(refused),
        recipients,
    )
    if refused:
        # The others already have it: a retry would send them a second copy.
        logger.warning("email %s: recipients refused: %s", email["Message-ID"], refused)


def build_email(
    to: str | list[str],
    subject: str,
    body: str,
    html: str | None = None,
    sender: str | None = None,
    reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """The message to send; a bad address or a header with a line break raises ``EmailRejected``."""
    recipients = [to] if isinstance(to, str) else list(to or [])
    if not recipients or len(recipients) > MAX_RECIPIENTS:
        raise EmailRejected(
            f"an email needs 1 to {MAX_RECIPIENTS} recipients, got {len(recipients)}"
        )
    if not isinstance(subject, str) or not isinstance(body, str):
        raise EmailRejected("subject and body must be strings")
    email = EmailMessage()
    try:
        email["From"] = _address(sender or current().email_from)
        email["To"] = [_address(recipient) for recipient in recipients]
        if reply_to:
            email["Reply-To"] = _address(reply_to)
        email["Subject"] = subject
        email["Date"] = formatdate(localtime=False, usegmt=True)
        email["Message-ID"] = message_id or make_msgid(domain="jobkit")
        for name, value in (headers or {}).items():
            email[name] = value
    except (ValueError, TypeError) as error:
        raise EmailRejected(f"cannot build the email: {error}") from None
    email.set_content(body)
    if html is not None:
        email.add_alternative(html, subtype="html")
    return email


def _address(text: str) -> Address:
    """One mailbox (``ada@example.com`` or ``Ada <ada@example.com>``), checked."""
    if not isinstance(text, str) or "\n" in text or "\r" in text or "," in text:
        raise ValueError(f"invalid address {text!r}")
    name, addr_spec = parseaddr(text)
    if "@" not in addr_spec:
        raise ValueError(f"invalid address {text!r}")
    try:
        return Address(display_name=name, addr_spec=addr_spec)
    except (errors.HeaderParseError, errors.MessageDefect) as error:
        raise ValueError(f"invalid address {text!r}: {error}") from None


def recipients_of(email: EmailMessage) -> list[str]:
    return [address.addr_spec for address in email["To"].addresses]


def write_to_outbox(email: EmailMessage, outbox: Path) -> Path:
    """Write ``email`` as ``<outbox>/<Message-ID>.eml`` atomically (a retry overwrites it)."""
    name = "".join(
        c if c.isalnum() or c in "-_.@" else "_" for c in email["Message-ID"].strip("<>")
    )
    path = outbox / f"{name}.eml"
    write_atomically(path, email.as_bytes())
    return path


def send_over_smtp(email: EmailMessage, settings: SmtpSettings) -> dict[str, Any]:
    """Send ``email``; returns recipients refused while others were accepted.

    Raises ``EmailDeferred`` for what may pass later and ``EmailRejected`` for
    what will not.
    """
    where = f"SMTP {settings.display}"
    try:
        if settings.implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                timeout=settings.timeout_s,
                context=settings.tls_context(),
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
        with client:
            client.ehlo()
            if settings.starttls != "off":
                if client.has_extn("starttls"):
                    client.starttls(context=settings.tls_context())
                    client.ehlo()
                elif settings.starttls == "require":
                    raise EmailRejected(f"{where}: the server does not offer STARTTLS")
            if settings.username:
                client.login(settings.username, settings.password or "")
            return client.send_message(email)
    except smtplib.SMTPRecipientsRefused as error:
        codes = {code for code, _ in error.recipients.values()}
        detail = f"{where}: every recipient refused: {_replies(error.recipients)}"
        if all(code >= 500 for code in codes):
            raise EmailRejected(detail) from None
        raise EmailDeferred(detail) from None
    except smtplib.SMTPResponseException as error:
        text = (
            error.smtp_error.decode(errors="replace")
            if isinstance(error.smtp_error, bytes)
            else str(error.smtp_error)
        )
        detail = f"{where}: {error.smtp_code} {text}"
        if 500 <= error.smtp_code < 600:
            raise EmailRejected(detail) from None
        raise EmailDeferred(detail) from None
    except smtplib.SMTPNotSupportedError as error:
        raise EmailRejected(f"{where}: {error}") from None
    except ssl.SSLCertVerificationError as error:
        raise EmailRejected(
            f"{where}: TLS certificate not trusted: {error.verify_message}"
        ) from None
    except (smtplib.SMTPException, OSError) as error:
        # Connection refused or dropped, timeout, TLS handshake failure: the network's fault.
        raise EmailDeferred(f"{where}: {type(error).__name__}: {error}") from None


def _replies(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{address}: {code} {reply.decode(errors='replace') if isinstance(reply, bytes) else reply}"
        for address, (code, reply) in recipients.items()
    )
