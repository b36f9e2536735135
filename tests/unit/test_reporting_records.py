"""reporting.records parses outside input (any bytes on a verdict, dead-letter or feedback topic):
whatever arrives becomes a row or a PoisonMessage with a reason, never another exception."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reporting.records import REPORTING_DLQ_TOPIC, TOPIC_PATTERN, row_for, topic_kind
from services.errors import PoisonMessage
from tests.support.reporting import dead_letter, verdict_bytes

TOPICS = st.sampled_from(
    [
        "audioguard.verdicts.acme",
        "audioguard.dlq.acme",
        "audioguard.feedback.acme",
        "audioguard.arrivals.acme",
    ]
)
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["ag-dlq-reason", "ag-dlq-source", "ag-dlq-tenant_id", "x"]), st.binary(max_size=40)
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(topic=TOPICS, value=st.one_of(st.none(), st.binary(max_size=300)), headers=HEADERS)
def test_any_record_is_a_row_or_poison(
    topic: str, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    try:
        row_for(topic, 0, 0, value, headers)
    except PoisonMessage as error:
        assert error.reason


#: any JSON value: what a wrong field can hold once it is on a topic (st.from_type(object) drew
#: strategies that touch the global random state: a flaky-strategy error in a CI run)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(["score", "tenant_id", "label", "processed_at", "model"]), junk=JSON_VALUES)
def test_a_verdict_with_a_wrong_field_is_poison(field: str, junk: object) -> None:
    doc = json.loads(verdict_bytes("acme", "k", 0.5))
    try:
        doc[field] = junk
        value = json.dumps(doc, default=str).encode()
    except (TypeError, ValueError):
        return
    try:
        row = row_for("audioguard.verdicts.acme", 0, 0, value, [])
    except PoisonMessage:
        return
    assert row.table == "verdicts"


def test_the_worker_s_own_records_become_rows() -> None:
    assert row_for("audioguard.verdicts.acme", 1, 2, verdict_bytes("acme", "k", 0.7), []).table == "verdicts"
    value, headers = dead_letter("acme", "x")
    assert row_for("audioguard.dlq.acme", 0, 0, value, headers).table == "dead_letters"


def test_the_pipeline_s_own_dead_letters_are_not_read_back() -> None:
    import re

    assert not re.match(TOPIC_PATTERN, REPORTING_DLQ_TOPIC)
    assert topic_kind("audioguard.feedback.acme") == ("feedback", "acme")


@settings(max_examples=200, deadline=None)
@given(body=st.text(max_size=300))
def test_any_feedback_csv_is_decisions_refusals_or_a_clear_error(body: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    from reporting.store import parse_feedback_csv

    path = tmp_path_factory.mktemp("csv") / "f.csv"
    path.write_text("tenant_id,idempotency_key,truth,decided_at\n" + body, encoding="utf-8")
    try:
        good, bad = parse_feedback_csv(path)
    except PoisonMessage as error:
        assert error.reason == "bad_feedback_csv"
        return
    assert all(d.truth in ("synthetic", "bona_fide") for d in good)
    assert all(line >= 2 for line, _ in bad)
