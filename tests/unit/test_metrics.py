"""The metrics module: names, bounded labels, helpers, score drift, and that the dashboard and
the alert rules name only metrics (and recording rules) that exist."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from services import metrics
from services.metrics import ScoreDrift, ScoreDriftTracker, population_stability_index

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "audioguard-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"

# Labels that would make a series per upload: never allowed on an audioguard metric.
FORBIDDEN_LABELS = {
    "event_id", "idempotency_key", "content_id", "audio_uri", "uri", "key", "offset", "message",
}  # fmt: skip


def _value(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- names and labels -----------------------------------------------------------------------------


def test_every_metric_is_prefixed_and_documented_in_the_module_docstring() -> None:
    doc = metrics.__doc__ or ""
    for metric in metrics.ALL_METRICS:
        for family in metric.describe():
            assert family.name.startswith("audioguard_"), family.name
            exposed = {"counter": "_total", "info": "_info"}.get(family.type, "")
            row = rf"^\s+{family.name}{exposed}\s"
            assert re.search(row, doc, re.M), f"{family.name} missing from the table"


def test_the_brief_s_metrics_exist() -> None:
    names = metrics.exposed_metric_names()
    required = {
        "audioguard_events_consumed_total",
        "audioguard_events_acked_total",
        "audioguard_verdicts_total",
        "audioguard_dead_letters_total",
        "audioguard_retries_total",
        "audioguard_duplicates_total",
        "audioguard_batch_windows_bucket",
        "audioguard_batch_fill_ratio_bucket",
        "audioguard_batch_audio_seconds_bucket",
        "audioguard_queue_wait_seconds_bucket",
        "audioguard_model_latency_seconds_bucket",
        "audioguard_end_to_end_seconds_bucket",
        "audioguard_in_flight_events",
        "audioguard_paused_partitions",
        "audioguard_consumer_lag_messages",
        "audioguard_gpu_memory_bytes",
        "audioguard_score_bucket",
        "audioguard_score_psi",
        "audioguard_worker_info",
        "audioguard_circuit_breaker_state",
    }
    assert required <= names, required - names


def test_no_label_can_carry_an_id_or_uri() -> None:
    for metric in metrics.ALL_METRICS:
        labelnames = set(getattr(metric, "_labelnames", ()))
        assert not labelnames & FORBIDDEN_LABELS, (metric, labelnames & FORBIDDEN_LABELS)


def test_importing_metrics_does_not_import_torch() -> None:
    code = "import sys, services.metrics, services.health, services.logs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


# --- helpers ----------------------------------------------------------------------------------------


def test_record_verdict_counts_and_observes() -> None:
    before = _value("audioguard_verdicts_total", tenant="m-verdict", label="synthetic")
    metrics.record_verdict("m-verdict", "synthetic", 0.93, "1.2.3", end_to_end_seconds=2.0)
    metrics.record_verdict("m-verdict", "synthetic", 0.81, "1.2.3", end_to_end_seconds=-0.5)
    assert _value("audioguard_verdicts_total", tenant="m-verdict", label="synthetic") == before + 2
    assert _value("audioguard_score_bucket", tenant="m-verdict", model_version="1.2.3", le="0.85") == 1
    assert _value("audioguard_score_count", tenant="m-verdict", model_version="1.2.3") == 2
    # clock skew (a producer ahead of us) lands in the lowest bucket, not below zero
    assert _value("audioguard_end_to_end_seconds_bucket", tenant="m-verdict", le="0.05") == 1
    assert _value("audioguard_end_to_end_seconds_sum", tenant="m-verdict") == 2.0


def test_record_retry_and_dead_letter_labels() -> None:
    metrics.record_retry("m-retry", "fetch")
    metrics.record_retry("m-retry", "publish", tier=2)
    assert _value("audioguard_retries_total", tenant="m-retry", stage="fetch", tier="in_place") == 1
    assert _value("audioguard_retries_total", tenant="m-retry", stage="publish", tier="2") == 1
    metrics.record_dead_letter("m-dlq", "poison", "schema")
    assert _value("audioguard_dead_letters_total", tenant="m-dlq", category="poison", reason="schema") == 1


def test_free_text_never_becomes_a_reason_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_seen_reasons", set())
    assert metrics.bounded_reason("sha256_mismatch") == "sha256_mismatch"
    assert metrics.bounded_reason("s3://bucket/key.wav not found") == "other"
    assert metrics.bounded_reason("Schema") == "other"
    assert metrics.bounded_reason("x" * 41) == "other"
    for i in range(metrics.MAX_REASONS):
        metrics.bounded_reason(f"reason_{i}")
    assert metrics.bounded_reason("one_too_many") == "other", "the cap bounds a reason-code bug"
    assert metrics.bounded_reason("sha256_mismatch") == "sha256_mismatch", "known reasons still pass"


def test_gpu_memory_circuit_breaker_and_worker_info() -> None:
    metrics.set_gpu_memory("cuda:7", allocated=1, reserved=2, total=3)
    assert _value("audioguard_gpu_memory_bytes", device="cuda:7", kind="reserved") == 2
    assert _value("audioguard_gpu_memory_bytes", device="cuda:7", kind="total") == 3
    metrics.set_circuit_breaker("m-breaker", "open")
    assert _value("audioguard_circuit_breaker_state", tenant="m-breaker") == 1
    metrics.set_circuit_breaker("m-breaker", "closed")
    assert _value("audioguard_circuit_breaker_state", tenant="m-breaker") == 0
    metrics.set_worker_info("w-42", "1.2.3", transport="kafka")
    assert _value("audioguard_worker_info", worker_id="w-42", model_version="1.2.3", transport="kafka") == 1


# --- score drift --------------------------------------------------------------------------------------


def test_psi_matches_a_hand_computed_value() -> None:
    # two bins: reference 50/50, recent 80/20
    reference = [0.25] * 50 + [0.75] * 50
    recent = [0.25] * 80 + [0.75] * 20
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert population_stability_index(reference, recent, bins=2) == pytest.approx(expected)


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(7)
    reference = rng.beta(2, 5, 5000)
    same = rng.beta(2, 5, 1000)
    shifted = rng.beta(5, 2, 1000)
    assert population_stability_index(reference, same) < 0.05
    assert population_stability_index(reference, shifted) > 1.0
    with pytest.raises(ValueError):
        population_stability_index([], [0.5])


def test_score_drift_fills_the_reference_then_updates_the_gauge() -> None:
    drift = ScoreDrift(
        "m-drift", "9.9.9", reference_size=200, window_size=100, min_recent=50, update_every=10
    )
    rng = np.random.default_rng(3)
    results = [drift.observe(float(s)) for s in rng.beta(2, 5, 200)]
    assert drift.reference_ready and all(r is None for r in results)
    assert drift.psi is None
    assert _value("audioguard_score_psi", tenant="m-drift", model_version="9.9.9") == 0

    results = [drift.observe(float(s)) for s in rng.beta(2, 5, 100)]
    computed = [r for r in results if r is not None]
    assert len(computed) == 6  # at 50, 60, ..., 100 recent scores
    assert drift.psi is not None and drift.psi < 0.25

    for s in rng.beta(8, 1, 100):
        drift.observe(float(s))
    assert drift.psi is not None and drift.psi > 0.25
    gauge = REGISTRY.get_sample_value("audioguard_score_psi", {"tenant": "m-drift", "model_version": "9.9.9"})
    assert gauge == pytest.approx(drift.psi)


def test_score_drift_memory_is_bounded_and_bad_scores_are_ignored() -> None:
    drift = ScoreDrift(
        "m-bound", "1", reference=[0.1, 0.2, 0.3], window_size=20, min_recent=5, update_every=1
    )
    assert drift.reference_ready
    for _ in range(1000):
        drift.observe(0.9)
    assert drift.observe(float("nan")) is None
    assert len(drift._reference) == 3 and len(drift._recent) == 20
    assert drift.psi is not None and drift.psi > 1


def test_score_drift_tracker_keeps_one_monitor_per_tenant_and_version() -> None:
    tracker = ScoreDriftTracker(reference_size=10, window_size=10, min_recent=5, update_every=5)
    assert tracker.drift("m-a", "1") is tracker.drift("m-a", "1")
    assert tracker.drift("m-a", "1") is not tracker.drift("m-a", "2")
    for _ in range(10):
        tracker.observe("m-a", "1", 0.1)
    psi = [tracker.observe("m-a", "1", 0.1) for _ in range(5)][-1]
    assert psi == pytest.approx(0.0)


# --- the dashboard and the rules only use metrics that exist ----------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "e",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, labels and strings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($tenant, $__rate_interval)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text):
        token = match.group(1)
        if token.lower() not in _KEYWORDS:
            names.add(token)
    return names


def _recorded_names() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["record"] for group in doc["groups"] for rule in group["rules"] if "record" in rule}


def _dashboard_targets(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])
        for value in node.values():
            found.extend(_dashboard_targets(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_dashboard_targets(value))
    return found


def test_promql_name_extraction() -> None:
    expr = (
        'sum by (tenant, le) (rate(audioguard_x_bucket{tenant=~"$tenant",le="+Inf"}[$__rate_interval]))'
        ' / on (tenant) group_left tenant:rec:rate5m > bool 0.5 and up{job="audioguard"} offset 5m'
    )
    assert promql_metric_names(expr) == {"audioguard_x_bucket", "tenant:rec:rate5m", "up"}
    assert promql_metric_names("time() - audioguard_last_heartbeat_timestamp_seconds") == {
        "audioguard_last_heartbeat_timestamp_seconds"
    }


def test_dashboard_uses_only_existing_metrics_and_recording_rules() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    allowed = metrics.exposed_metric_names() | _recorded_names() | {"up"}
    exprs = _dashboard_targets(dashboard["panels"])
    assert len(exprs) >= 20
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"unknown metric(s) {names - allowed} in {expr!r}"
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition")
        if query:
            inner = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)
            assert promql_metric_names(inner) <= allowed, query


def test_dashboard_covers_service_instance_and_model_layers() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"].split(":")[0] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Service", "Instance", "Model"]
    used = set().union(*(promql_metric_names(e) for e in _dashboard_targets(dashboard["panels"])))
    for needed in (
        "topic:audioguard_consumer_lag_messages:sum",  # lag
        "tenant_category:audioguard_dead_letters:rate5m",  # DLQ
        "tenant:audioguard_end_to_end_seconds:p99_5m",  # latency
        "audioguard_in_flight_events",
        "audioguard_paused_partitions",
        "instance:audioguard_batch_fill_ratio:mean5m",
        "audioguard_gpu_memory_bytes",
        "audioguard_score_bucket",  # score distribution
        "audioguard_score_psi",  # drift
        "tenant_label:audioguard_verdicts:rate5m",  # verdict mix
    ):
        assert needed in used, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_rules_use_only_existing_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    allowed = metrics.exposed_metric_names() | _recorded_names() | {"up"}
    for group in doc["groups"]:
        for rule in group["rules"]:
            names = promql_metric_names(rule["expr"])
            assert names and names <= allowed, (rule.get("record") or rule.get("alert"), names - allowed)
