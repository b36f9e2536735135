"""The webhook SSRF guard and signature (no servers: IP literals and localhost resolve offline)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api.webhooks import CallbackRefused, check_callback_url, sign


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:8080/hook", "callback_url_not_allowed"),
        ("http://localhost/hook", "callback_url_not_allowed"),
        ("http://[::1]/hook", "callback_url_not_allowed"),
        ("http://10.1.2.3/hook", "callback_url_not_allowed"),
        ("http://192.168.0.10/hook", "callback_url_not_allowed"),
        ("http://169.254.169.254/latest/meta-data", "callback_url_not_allowed"),
        ("http://[fd00::1]/hook", "callback_url_not_allowed"),
        ("http://0.0.0.0/hook", "callback_url_not_allowed"),
        ("http://224.0.0.1/hook", "callback_url_not_allowed"),
        ("ftp://93.184.216.34/hook", "unsupported_callback_scheme"),
        ("file:///etc/passwd", "unsupported_callback_scheme"),
        ("https://user:pw@93.184.216.34/hook", "callback_url_invalid"),
        ("https://93.184.216.34:99999/hook", "callback_url_invalid"),
        ("https:///hook", "callback_url_invalid"),
    ],
)
def test_the_guard_refuses_what_a_webhook_must_never_reach(url: str, code: str) -> None:
    with pytest.raises(CallbackRefused) as refused:
        check_callback_url(url, allow_private=False)
    assert refused.value.code == code


def test_public_addresses_pass_and_private_ones_pass_only_when_allowed() -> None:
    check_callback_url("https://93.184.216.34/hook", allow_private=False)
    check_callback_url("http://127.0.0.1:9/hook", allow_private=True)
    with pytest.raises(CallbackRefused):  # multicast and unspecified stay refused even then
        check_callback_url("http://0.0.0.0/hook", allow_private=True)


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = sign("whsec_x", b'{"a":1}', 1700000000)
    expected = hmac.new(b"whsec_x", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
