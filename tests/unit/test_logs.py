"""Structured JSON logs carry the upload's context, and no secret ever reaches the output."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from services import logs
from services.logs import REDACTED, configure_logging, log_context, redact, register_secrets
from services.settings import Settings

SECRET = "hunter2-correct-horse"


@pytest.fixture()
def output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    monkeypatch.setattr(logs, "_known_secrets", frozenset())
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging("DEBUG", "json", stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_json_object_per_line_with_the_required_fields(output: io.StringIO) -> None:
    logging.getLogger("audioguard.test").info("verdict %s published", "k-1")
    logging.getLogger("other").warning("second line\nwith a newline")
    first, second = _lines(output)
    assert first["level"] == "INFO"
    assert first["logger"] == "audioguard.test"
    assert first["message"] == "verdict k-1 published"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "second line\nwith a newline"
    assert len(output.getvalue().splitlines()) == 2


def test_context_from_extra_and_from_log_context(output: io.StringIO) -> None:
    log = logging.getLogger("audioguard.test")
    with log_context(tenant="acme", worker_id="w-1"):
        with log_context(idempotency_key="key-1", event_id="ev-1"):
            log.info("inner", extra={"content_id": "c-1"})
        log.info("outer")
        log.info("override", extra={"tenant": "globex"})
    log.info("after")
    inner, outer, override, after = _lines(output)
    assert {k: inner[k] for k in logs.CONTEXT_FIELDS} == {
        "tenant": "acme",
        "idempotency_key": "key-1",
        "event_id": "ev-1",
        "content_id": "c-1",
        "worker_id": "w-1",
    }
    assert outer["tenant"] == "acme" and "idempotency_key" not in outer
    assert override["tenant"] == "globex", "extra= wins over the bound context"
    assert "tenant" not in after and "worker_id" not in after


def test_context_does_not_leak_between_threads(output: io.StringIO) -> None:
    log = logging.getLogger("audioguard.test")
    entered = threading.Event()
    done = threading.Event()

    def other() -> None:
        entered.wait(5)
        log.info("from the other thread")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with log_context(tenant="acme"):
        entered.set()
        done.wait(5)
    thread.join(5)
    (line,) = _lines(output)
    assert "tenant" not in line


def test_exceptions_are_in_the_json_object(output: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("audioguard.test").exception("failed")
    (line,) = _lines(output)
    assert "ValueError: boom" in line["exception"]


def test_a_field_json_cannot_encode_does_not_break_logging(output: io.StringIO) -> None:
    logging.getLogger("audioguard.test").info("odd", extra={"thing": object(), "data": b"\x00"})
    (line,) = _lines(output)
    assert line["thing"].startswith("<object object")


@pytest.mark.parametrize(
    ("message", "args", "extra"),
    [
        ("password is %s", (SecretStr(SECRET),), {}),
        ("connecting", (), {"sasl_password": SECRET}),
        ("connecting", (), {"credential": SecretStr(SECRET)}),
        ("connecting", (), {"anything": SecretStr(SECRET)}),
        ("librdkafka config %s", ({"bootstrap.servers": "b:9092", "sasl.password": SECRET},), {}),
        ("nested %s", ({"kafka": {"SASL_PASSWORD": SECRET}},), {}),
        (f"dsn password={SECRET} host=db", (), {}),
        (f'payload {{"token": "{SECRET}"}}', (), {}),
        ("auth header %s", (f"Authorization: {SECRET}",), {}),
        ("secret list %s", ([{"api_key": SECRET}],), {}),
    ],
)
def test_secrets_never_reach_output(
    output: io.StringIO, message: str, args: tuple[Any, ...], extra: dict[str, Any]
) -> None:
    logging.getLogger("audioguard.test").warning(message, *args, extra=extra)
    text = output.getvalue()
    assert text.strip(), "the line itself must still be written"
    assert SECRET not in text
    assert REDACTED in text or "**********" in text


def test_secrets_inside_a_bound_context_are_redacted(output: io.StringIO) -> None:
    with log_context(tenant="acme", token=SECRET):
        logging.getLogger("audioguard.test").info("hello")
    (line,) = _lines(output)
    assert line["tenant"] == "acme"
    assert line["token"] == REDACTED


def test_settings_secrets_are_scrubbed_even_when_unwrapped(output: io.StringIO) -> None:
    settings = Settings(kafka={"sasl_password": SECRET, "sasl_username": "svc-audioguard"})
    assert register_secrets(settings) == 1
    log = logging.getLogger("audioguard.test")
    log.info("settings %r", settings)
    # a careless caller unwraps the value and passes it under an innocent name
    plain = settings.kafka.sasl_password.get_secret_value() if settings.kafka.sasl_password else ""
    log.info("connecting as %s with %s", settings.kafka.sasl_username, plain)
    try:
        raise ConnectionError(f"SASL authentication failed using {plain}")
    except ConnectionError:
        log.exception("connect failed")
    text = output.getvalue()
    assert SECRET not in text
    assert "svc-audioguard" in text, "only secrets are scrubbed, not the user name"
    assert text.count(REDACTED) >= 2


def test_text_format_is_redacted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_known_secrets", frozenset())
    stream = io.StringIO()
    root = logging.getLogger()
    handler = configure_logging("INFO", "text", stream)
    try:
        logging.getLogger("audioguard.test").info("pw %s", SecretStr(SECRET), extra={"tenant": "acme"})
        logging.getLogger("audioguard.test").debug("below the level")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text
    assert "INFO" in text and "tenant=acme" in text
    assert "below the level" not in text
    assert len(text.splitlines()) == 1


def test_configure_logging_replaces_its_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    first = configure_logging("INFO", "json", io.StringIO())
    second = configure_logging("WARNING", "text", io.StringIO())
    try:
        assert first not in root.handlers
        assert second in root.handlers
        assert root.level == logging.WARNING
    finally:
        root.removeHandler(second)


def test_redact_leaves_ordinary_values_alone() -> None:
    value = {"tenant": "acme", "passes": 3, "note": "tests passed: 12", "items": [1, 2]}
    assert redact(value) == value
    assert redact("sasl_password=SecretStr('**********')") == "sasl_password=SecretStr('**********')"
