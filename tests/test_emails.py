"""The email job against a real SMTP server (aiosmtpd) and the file outbox."""

from __future__ import annotations

import email
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dramatiq import Broker

from actors.emails import (
    EmailDeferred,
    EmailRejected,
    SmtpSettings,
    build_email,
    deliver_email,
    recipient_domain,
    send_over_smtp,
)
from benchmarks.harness import free_port
from brokers.dead_letter_store import dead_letter_store
from tests.support.processes import wait_until, worker
from tests.support.shipped import redeclare

QUEUE = "jobkit-test"


class Mailbox:
    """An aiosmtpd handler: keeps each accepted email; replies from a script per recipient."""

    def __init__(self) -> None:
        #: Replies to RCPT, consumed in order (then "250 OK" for every one).
        self.rcpt_replies: list[str] = []
        self.accepted: list[tuple[str, list[str], email.message.EmailMessage, float]] = []
        self.rcpt_attempts = 0
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:  # noqa: E501, N802 - aiosmtpd's hook name
        with self.lock:
            self.rcpt_attempts += 1
            reply = self.rcpt_replies.pop(0) if self.rcpt_replies else "250 OK"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.accepted.append((envelope.mail_from, list(envelope.rcpt_tos), parsed, time.time()))
        return "250 Message accepted"


class SmtpServer:
    def __init__(self, **smtp_options: Any) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, **smtp_options
        )
        self.controller.start()

    def url(self, userinfo: str = "", query: str = "starttls=off") -> str:
        return f"smtp://{userinfo}127.0.0.1:{self.port}?{query}"

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    try:
        yield server
    finally:
        server.stop()


def declare(broker: Broker, rate_limit: str = "100/s") -> dramatiq.Actor:
    return redeclare(deliver_email, broker, rate_limit=rate_limit)


# ---------------------------------------------------------------- no broker


def test_the_email_has_both_parts_and_a_fixed_message_id() -> None:
    message = build_email(
        ["Ada <ada@example.com>", "bob@example.org"],
        "Report ready",
        "plain body",
        html="<p>html body</p>",
        reply_to="support@example.com",
        headers={"X-Campaign": "weekly"},
        message_id="<fixed@jobkit>",
    )
    assert message["To"] == "Ada <ada@example.com>, bob@example.org"
    assert message["Message-ID"] == "<fixed@jobkit>" and message["X-Campaign"] == "weekly"
    assert message.get_body(("plain",)).get_content().strip() == "plain body"
    assert message.get_body(("html",)).get_content().strip() == "<p>html body</p>"


@pytest.mark.parametrize(
    ("to", "subject", "expected"),
    [
        ("not-an-address", "s", "invalid address 'not-an-address'"),
        ("a@example.com, b@example.com", "s", "invalid address"),
        ("a@example.com\nBcc: spy@example.com", "s", "invalid address"),
        ("a@example.com", "hi\r\nBcc: spy@example.com", "linefeed or carriage return"),
        ([], "s", "needs 1 to 100 recipients"),
    ],
)
def test_bad_addresses_and_header_injection_are_rejected(
    to: Any, subject: str, expected: str
) -> None:
    with pytest.raises(EmailRejected, match=expected):
        build_email(to, subject, "body")


def test_the_rate_limit_key_is_the_first_recipients_domain() -> None:
    assert recipient_domain(("Ada <ada@Example.COM>", "s", "b"), {}) == "example.com"
    assert recipient_domain((), {"to": ["x@a.org", "y@b.org"]}) == "a.org"


def test_smtp_urls_are_read_with_defaults_and_masked() -> None:
    settings = SmtpSettings.from_url("smtp://mailer:p%40ss@mail.example.com?timeout=5")
    assert (settings.host, settings.port, settings.starttls) == ("mail.example.com", 587, "auto")
    assert (settings.username, settings.password, settings.timeout_s) == ("mailer", "p@ss", 5.0)
    assert "p%40ss" not in settings.display and "***" in settings.display
    implicit = SmtpSettings.from_url("smtps://mail.example.com")
    assert (implicit.port, implicit.implicit_tls) == (465, True)
    with pytest.raises(ValueError, match="write smtp://"):
        SmtpSettings.from_url("http://mail.example.com")


def test_a_4xx_reply_is_deferred_and_a_5xx_reply_rejected(smtp: SmtpServer) -> None:
    message = build_email("ada@example.com", "s", "b")
    settings = SmtpSettings.from_url(smtp.url())
    smtp.mailbox.rcpt_replies = ["451 4.3.0 try again later"]
    with pytest.raises(EmailDeferred, match="451 4.3.0 try again later"):
        send_over_smtp(message, settings)
    smtp.mailbox.rcpt_replies = ["550 5.1.1 no such mailbox"]
    with pytest.raises(EmailRejected, match="550 5.1.1 no such mailbox"):
        send_over_smtp(message, settings)
    assert smtp.mailbox.accepted == []


def test_a_server_that_is_down_is_deferred() -> None:
    settings = SmtpSettings.from_url(f"smtp://127.0.0.1:{free_port()}?timeout=2")
    with pytest.raises(EmailDeferred, match="ConnectionRefusedError"):
        send_over_smtp(build_email("ada@example.com", "s", "b"), settings)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the test's own CA)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_starttls_and_login(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret", handled=False)

    server = SmtpServer(
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
    )
    try:
        message = build_email("ada@example.com", "over TLS", "b")
        url = server.url("mailer:s3cret@", f"starttls=require&cafile={cert}")
        assert send_over_smtp(message, SmtpSettings.from_url(url)) == {}
        (accepted,) = server.mailbox.accepted
        assert accepted[2]["Subject"] == "over TLS" and logins == [(b"mailer", b"s3cret")]
        wrong = server.url("mailer:wrong@", f"starttls=require&cafile={cert}")
        with pytest.raises(EmailRejected, match="535"):
            send_over_smtp(message, SmtpSettings.from_url(wrong))
        # Without the CA the certificate is not trusted: a configuration error, not retried.
        with pytest.raises(EmailRejected, match="certificate not trusted"):
            send_over_smtp(message, SmtpSettings.from_url(server.url("", "starttls=require")))
    finally:
        server.stop()


# ---------------------------------------------------------------- on every real broker


def test_without_smtp_the_email_lands_in_the_outbox(
    system_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBKIT_SMTP_URL", raising=False)
    monkeypatch.setenv("JOBKIT_EMAIL_OUTBOX", str(tmp_path / "outbox"))
    actor = declare(system_broker)
    actor.send("ada@example.com", "Welcome", "Hello Ada", message_id="<welcome-1@jobkit>")
    path = tmp_path / "outbox" / "welcome-1@jobkit.eml"
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(path.exists, 20)
    written = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert written["Subject"] == "Welcome" and written["To"] == "ada@example.com"
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == ["welcome-1@jobkit.eml"]


def test_an_email_is_sent_through_smtp(
    system_broker: Broker, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_SMTP_URL", smtp.url())
    actor = declare(system_broker)
    actor.send(["ada@example.com"], "Invoice", "Attached.", sender="billing@example.com")
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: smtp.mailbox.accepted, 20)
        time.sleep(0.3)
    ((mail_from, rcpt_tos, message, _),) = smtp.mailbox.accepted
    assert (mail_from, rcpt_tos, message["Subject"]) == (
        "billing@example.com",
        ["ada@example.com"],
        "Invoice",
    )
    assert dead_letter_store(system_broker).count() == 0


def test_a_temporary_smtp_failure_is_retried_with_the_same_message_id(
    system_broker: Broker, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_SMTP_URL", smtp.url())
    smtp.mailbox.rcpt_replies = ["451 4.7.1 greylisted, try again", "421 4.3.2 busy"]
    actor = declare(system_broker)
    actor.send("ada@example.com", "Hello", "b", message_id="<retry-1@jobkit>")
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: smtp.mailbox.accepted, 30)
        time.sleep(0.3)
    assert smtp.mailbox.rcpt_attempts == 3
    ((_, _, message, _),) = smtp.mailbox.accepted
    assert message["Message-ID"] == "<retry-1@jobkit>"
    assert dead_letter_store(system_broker).count() == 0


def test_a_permanent_smtp_failure_is_dead_lettered_without_retries(
    system_broker: Broker, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_SMTP_URL", smtp.url())
    smtp.mailbox.rcpt_replies = ["550 5.1.1 no such mailbox"]
    actor = declare(system_broker)
    message = actor.send("nobody@example.com", "Hello", "b")
    store = dead_letter_store(system_broker)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1, 20)
    record = store.get(message.message_id)
    assert (record["reason"], record["exc_type"], record["attempts"]) == (
        "non_retryable",
        "EmailRejected",
        1,
    )
    assert "550 5.1.1 no such mailbox" in record["exc_message"]
    assert smtp.mailbox.rcpt_attempts == 1 and smtp.mailbox.accepted == []


def test_sending_is_rate_limited_per_recipient_domain(
    system_broker: Broker, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_SMTP_URL", smtp.url())
    actor = declare(system_broker, rate_limit="4/s")
    for n in range(3):
        actor.send(f"user{n}@slow.example", "s", "b")
    actor.send("ada@other.example", "s", "b")
    with worker(system_broker, threads=4, queues={QUEUE}):
        assert wait_until(lambda: len(smtp.mailbox.accepted) == 4, 30)
    times = {rcpt[0]: at for _, rcpt, _, at in smtp.mailbox.accepted}
    slow = sorted(at for address, at in times.items() if address.endswith("@slow.example"))
    # 4/s is one start every 250 ms. The limiter fixes start slots, not the gaps between
    # SMTP deliveries: a job that starts late in its slot (a busy machine: seen 140 ms
    # late) leaves a shorter gap after it. Unlimited, all three land within milliseconds.
    assert slow[2] - slow[0] >= 0.45
    assert slow[1] - slow[0] >= 0.05 and slow[2] - slow[1] >= 0.05
    # Another domain is not held back behind them.
    assert times["ada@other.example"] < slow[2]
