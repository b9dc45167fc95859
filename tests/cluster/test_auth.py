"""The cluster secret's cryptography: signatures, HTTP control messages, announcements, secrets."""

from __future__ import annotations

import stat

import httpx
import pytest

from tandem.cluster import auth
from tandem.cluster.announcement import (
    PROTOCOL_VERSION,
    Announcement,
    Rejection,
    build_announcement,
    check_txt,
    encode_txt,
    fit_addresses,
)
from tandem.cluster.auth import AuthError, sign_request, verify_request
from tandem.cluster.replay import ReplayWindow
from tandem.cluster.secret import resolve_secret
from tandem.errors import TandemError

SECRET = b"correct-horse-battery-staple"
OTHER = b"another-cluster-entirely-0000"
NOW = 1_750_000_000.0


def test_generated_secrets_are_long_printable_and_distinct():
    first, second = auth.generate_secret(), auth.generate_secret()
    assert first != second
    assert len(first) >= 40 and first.decode("ascii").isprintable()
    assert auth.parse_secret(first.decode() + "\n") == first


def test_short_secret_is_refused_in_one_line():
    with pytest.raises(TandemError, match=r"^TANDEM_SECRET is too short \(6 characters\); use at least 16"):
        auth.parse_secret("hunter", "TANDEM_SECRET")


def test_cluster_id_is_stable_differs_by_secret_and_hides_it():
    assert auth.cluster_id(SECRET) == auth.cluster_id(SECRET)
    assert auth.cluster_id(SECRET) != auth.cluster_id(OTHER)
    assert len(auth.cluster_id(SECRET)) == 16
    assert SECRET.hex()[:8] not in auth.cluster_id(SECRET)


def test_sign_and_verify():
    signature = auth.sign(SECRET, b"hello")
    assert auth.verify(SECRET, b"hello", signature)
    assert auth.verify(SECRET, b"hello", signature.upper())
    assert not auth.verify(SECRET, b"hellO", signature)
    assert not auth.verify(OTHER, b"hello", signature)
    assert not auth.verify(SECRET, b"hello", "ü" * 64)  # non-ASCII junk: False, not TypeError


def test_signed_request_verifies_and_names_the_sender():
    headers = sign_request(
        SECRET, "node-a", "POST", "/cluster/join?x=1", b'{"a": 1}', target="node-b", now=NOW
    )
    assert set(headers) == {
        "X-Tandem-Node",
        "X-Tandem-Target",
        "X-Tandem-Nonce",
        "X-Tandem-Time",
        "X-Tandem-Signature",
    }
    lowered = {name.lower(): value for name, value in headers.items()}  # as many servers hand them over
    signed = verify_request(SECRET, "post", "/cluster/join?x=1", b'{"a": 1}', lowered, now=NOW + 5)
    assert (signed.sender, signed.target, signed.timestamp) == ("node-a", "node-b", int(NOW))
    assert signed.nonce == headers["X-Tandem-Nonce"] and len(signed.nonce) == 32
    assert sign_request(SECRET, "node-a", "GET", "/state")["X-Tandem-Nonce"] != signed.nonce


@pytest.mark.parametrize(
    ("method", "path", "body", "sender"),
    [
        ("POST", "/cluster/join?x=1", b'{"a": 2}', "node-a"),  # body altered
        ("POST", "/cluster/leave?x=1", b'{"a": 1}', "node-a"),  # path altered
        ("PUT", "/cluster/join?x=1", b'{"a": 1}', "node-a"),  # method altered
        ("POST", "/cluster/join?x=1", b'{"a": 1}', "node-b"),  # sender altered
    ],
)
def test_tampered_request_is_rejected(method, path, body, sender):
    headers = sign_request(
        SECRET, "node-a", "POST", "/cluster/join?x=1", b'{"a": 1}', target="node-c", now=NOW
    )
    headers["X-Tandem-Node"] = sender
    with pytest.raises(AuthError, match=r"^bad signature on a request from node node-"):
        verify_request(SECRET, method, path, body, headers, now=NOW)


@pytest.mark.parametrize(("header", "value"), [("X-Tandem-Target", "node-d"), ("X-Tandem-Nonce", "0" * 32)])
def test_retargeted_or_renonced_request_is_rejected(header, value):
    headers = sign_request(
        SECRET, "node-a", "POST", "/internal/runners/stop", b"{}", target="node-c", now=NOW
    )
    headers[header] = value
    with pytest.raises(AuthError, match=r"^bad signature on a request from node node-a"):
        verify_request(SECRET, "POST", "/internal/runners/stop", b"{}", headers, now=NOW)


def test_a_malformed_nonce_is_rejected():
    headers = sign_request(SECRET, "node-a", "GET", "/state", nonce="x" * 32, now=NOW)
    with pytest.raises(AuthError, match=r"^X-Tandem-Nonce is not 32 lowercase hex digits"):
        verify_request(SECRET, "GET", "/state", b"", headers, now=NOW)


def test_a_message_for_another_node_or_for_any_is_refused_where_a_target_is_required():
    signed = verify_request(
        SECRET,
        "GET",
        "/s",
        b"",
        sign_request(SECRET, "node-a", "GET", "/s", target="node-b", now=NOW),
        now=NOW,
    )
    auth.check_target(signed, "node-b", any_allowed=False)
    with pytest.raises(
        AuthError, match=r"^a message from node node-a is meant for node node-b, not this one \(node-c\)$"
    ):
        auth.check_target(signed, "node-c", any_allowed=True)
    anywhere = verify_request(
        SECRET, "GET", "/s", b"", sign_request(SECRET, "node-a", "GET", "/s", now=NOW), now=NOW
    )
    auth.check_target(anywhere, "node-c", any_allowed=True)
    with pytest.raises(AuthError, match=r"names no target node; this one must$"):
        auth.check_target(anywhere, "node-c", any_allowed=False)


def test_the_replay_window_refuses_a_nonce_twice_and_forgets_it_once_its_timestamp_expired():
    window = ReplayWindow(max_skew=60)
    signed = auth.SignedRequest("node-a", "node-b", "ab" * 16, int(NOW))
    window.admit(signed, NOW)
    with pytest.raises(AuthError, match=r"^replayed message from node node-a: nonce abababab… seen already$"):
        window.admit(signed, NOW + 30)
    window.admit(auth.SignedRequest("node-a", "node-b", "cd" * 16, int(NOW) + 50), NOW + 50)
    window.admit(auth.SignedRequest("node-a", "node-b", "ef" * 16, int(NOW) + 62), NOW + 62)
    assert len(window) == 2  # the first expired: verify_request refuses its timestamp by now


def test_a_full_replay_window_refuses_rather_than_forgets():
    window = ReplayWindow(max_skew=60, capacity=2)
    for index in range(2):
        window.admit(auth.SignedRequest("node-a", "*", f"{index:032x}", int(NOW)), NOW)
    with pytest.raises(AuthError, match=r"^too many control messages in the last 120 s \(2\)"):
        window.admit(auth.SignedRequest("node-a", "*", "f" * 32, int(NOW)), NOW)
    window.admit(auth.SignedRequest("node-a", "*", "f" * 32, int(NOW) + 70), NOW + 70)


def test_request_signed_with_another_secret_is_rejected():
    headers = sign_request(OTHER, "node-a", "GET", "/state", now=NOW)
    with pytest.raises(AuthError, match=r"different cluster secret or altered request$"):
        verify_request(SECRET, "GET", "/state", b"", headers, now=NOW)


@pytest.mark.parametrize(("offset", "words"), [(-61, "behind"), (61, "ahead of"), (-3600, "behind")])
def test_stale_or_future_request_is_rejected(offset, words):
    headers = sign_request(SECRET, "node-a", "GET", "/state", now=NOW + offset)
    with pytest.raises(
        AuthError, match=f"^stale or future request from node node-a: its clock is .* {words}"
    ):
        verify_request(SECRET, "GET", "/state", b"", headers, now=NOW)
    # Within the window it passes: 60 s is the documented limit.
    headers = sign_request(SECRET, "node-a", "GET", "/state", now=NOW + (60 if offset > 0 else -60))
    assert verify_request(SECRET, "GET", "/state", b"", headers, now=NOW).sender == "node-a"


@pytest.mark.parametrize(
    "missing", ["X-Tandem-Node", "X-Tandem-Target", "X-Tandem-Nonce", "X-Tandem-Time", "X-Tandem-Signature"]
)
def test_unsigned_request_is_rejected(missing):
    headers = sign_request(SECRET, "node-a", "GET", "/state", now=NOW)
    del headers[missing]
    with pytest.raises(AuthError, match=f"^missing {missing} header"):
        verify_request(SECRET, "GET", "/state", b"", headers, now=NOW)


def test_bad_time_header_is_rejected():
    headers = sign_request(SECRET, "node-a", "GET", "/state", now=NOW) | {"X-Tandem-Time": "soon"}
    with pytest.raises(AuthError, match=r"^X-Tandem-Time is not a whole number"):
        verify_request(SECRET, "GET", "/state", b"", headers, now=NOW)


def announcement_txt(secret: bytes = SECRET, **overrides) -> dict[str, str]:
    arguments = {"node_id": "node-a", "port": 52415, "addresses": ("10.0.0.2",), "timestamp": int(NOW)}
    return encode_txt(build_announcement(secret, **(arguments | overrides)), secret)


def test_announcement_round_trip():
    verdict = check_txt(announcement_txt(), SECRET, NOW + 2)
    assert verdict == Announcement(
        "node-a", 52415, ("10.0.0.2",), "0.1", PROTOCOL_VERSION, auth.cluster_id(SECRET), int(NOW)
    )
    assert SECRET.decode() not in str(announcement_txt())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"port": "52416"}, "bad signature: announcement altered on the way, or forged"),
        ({"addr": "10.6.6.6"}, "bad signature: announcement altered on the way, or forged"),
        ({"cid": "0" * 16}, "different cluster secret"),
        ({"proto": "99"}, "incompatible protocol version 99 (Tandem 0.1); this node speaks 1 (Tandem 0.1)"),
        ({"port": "http"}, "malformed announcement: bad port 'http'"),
        ({"sig": None}, "malformed announcement: missing sig"),
    ],
)
def test_tampered_announcement_is_rejected(change, reason):
    txt = announcement_txt() | change
    verdict = check_txt(txt, SECRET, NOW)
    assert isinstance(verdict, Rejection)
    assert verdict.reason.startswith(reason)
    assert verdict.node_id == "node-a"


def test_announcement_from_another_cluster_is_rejected():
    assert check_txt(announcement_txt(OTHER), SECRET, NOW) == Rejection("different cluster secret", "node-a")


def test_stale_announcement_is_rejected():
    verdict = check_txt(announcement_txt(), SECRET, NOW + 95)
    assert isinstance(verdict, Rejection)
    assert verdict.reason.startswith("stale announcement: its clock is 95 s behind this node's")


def test_addresses_are_cut_to_fit_one_txt_string():
    many = tuple(f"fd00:1234:5678:9abc:def0:1234:5678:{i:04x}" for i in range(10))
    kept = fit_addresses(many)
    assert 0 < len(kept) < len(many) and kept == many[: len(kept)]
    assert len("addr=" + ",".join(kept)) <= 255


def test_bad_node_id_is_refused():
    with pytest.raises(TandemError, match=r"node id 'a\.b' is not usable"):
        build_announcement(SECRET, "a.b", 1, (), 0)


def test_secret_comes_from_flag_then_environment_then_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.delenv("TANDEM_SECRET", raising=False)
    with pytest.raises(
        TandemError, match=f"^no cluster secret: .*copy the secret file to {tmp_path}/secret$"
    ):
        resolve_secret(create=False)

    created = resolve_secret()
    path = tmp_path / "secret"
    assert created.source == f"new secret written to {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_secret() == type(created)(created.secret, str(path))

    monkeypatch.setenv("TANDEM_SECRET", "from-the-environment-1234")
    assert resolve_secret().secret == b"from-the-environment-1234"
    assert resolve_secret("from-the-command-line-12").source == "--secret"
    monkeypatch.setenv("TANDEM_SECRET", "")  # empty means unset
    assert resolve_secret().secret == created.secret


def test_unreadable_secret_file_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.delenv("TANDEM_SECRET", raising=False)
    (tmp_path / "secret").write_text("short\n")
    with pytest.raises(TandemError, match=rf"^the secret in {tmp_path}/secret is too short"):
        resolve_secret()


def test_untrusted_text_in_rejections_cannot_break_a_log_line():
    txt = announcement_txt() | {"id": "evil\nFAKE LOG LINE" + "x" * 100, "proto": "2", "ver": "9\r\n9"}
    verdict = check_txt(txt, SECRET, NOW)
    assert isinstance(verdict, Rejection) and verdict.node_id is not None
    assert "\n" not in verdict.reason + verdict.node_id and "\r" not in verdict.reason
    assert len(verdict.node_id) == 64
    headers = sign_request(SECRET, "node\nforged", "GET", "/state", now=NOW - 600)
    with pytest.raises(AuthError) as caught:
        verify_request(SECRET, "GET", "/state", b"", headers, now=NOW)
    assert "\n" not in str(caught.value)


def test_a_reply_must_answer_this_request_for_this_node():
    from tandem.node.control import ControlClient, SignatureRefused, sign_reply

    client = ControlClient("node-a", SECRET)
    body = b"{}"

    def reply(nonce: str, requester: str = "node-a", status: int = 200) -> httpx.Response:
        headers = sign_reply(SECRET, "node-b", "/internal/state", body, requester=requester, nonce=nonce)
        return httpx.Response(status, content=body, headers=headers)

    sent = auth.new_nonce()
    client.check_reply("b:1", "/internal/state", reply(sent), sent)  # the answer to our request
    with pytest.raises(TandemError, match=r"a reply signed for another request \(a replayed reply\)$"):
        client.check_reply("b:1", "/internal/state", reply(auth.new_nonce()), sent)
    with pytest.raises(TandemError, match=r"a reply signed for another request"):
        client.check_reply("b:1", "/internal/state", reply(sent, requester="node-c"), sent)
    refused = httpx.Response(401, json={"error": "bad signature on a request from node node-a: …"})
    with pytest.raises(
        SignatureRefused, match=r"^b:1 refused our signature on /internal/state: bad signature"
    ):
        client.check_reply("b:1", "/internal/state", refused, sent)
