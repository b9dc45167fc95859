"""The signed control routes of real node processes refuse what a LAN stranger or a recorded
message could do: a replayed message, one meant for another node, a forged one. Each refusal
is a 401 with its reason logged by the refusing node; the refused node with a bad secret warns too."""

from __future__ import annotations

import httpx

from nodes import TEST_SECRET, running_nodes, start_node, wait_for
from tandem.cluster.auth import sign_request
from tandem.protocol import codec
from tandem.protocol.control import StopRunners

STOP = "/internal/runners/stop"
BODY = codec.encode(StopRunners("no-such-instance"))


def send(node, headers: dict[str, str]) -> httpx.Response:
    return node.http.post(STOP, content=BODY, headers={**headers, "Content-Type": "application/json"})


def signed_stop(target: str, secret: str = TEST_SECRET) -> dict[str, str]:
    return sign_request(secret.encode(), "tester-node", "POST", STOP, BODY, target=target)


def all_see(nodes, count: int) -> bool:
    return all(len(node.cluster()["nodes"]) == count for node in nodes)


def test_replayed_retargeted_untargeted_and_forged_control_messages_are_refused(tmp_path):
    with running_nodes(tmp_path, 2) as nodes:
        wait_for(lambda: all_see(nodes, 2), what="two nodes to meet")
        first, second = nodes
        first_id, second_id = first.node_id, second.node_id

        recorded = signed_stop(first_id)
        assert send(first, recorded).status_code == 200  # the genuine message is carried out
        replayed = send(first, recorded)
        assert replayed.status_code == 401 and "replayed message" in replayed.json()["error"]
        elsewhere = send(second, recorded)  # the same message shown to the other node
        assert elsewhere.status_code == 401
        assert f"meant for node {first_id}, not this one ({second_id})" in elsewhere.json()["error"]
        untargeted = send(first, signed_stop("*"))  # a command must name its node
        assert untargeted.status_code == 401 and "names no target node" in untargeted.json()["error"]
        forged = send(first, signed_stop(first_id, secret="a-stranger-guessing-secrets"))
        assert forged.status_code == 401 and "bad signature" in forged.json()["error"]

        wait_for(lambda: "bad signature" in first.log_text(), what="the refusals in the log")
        log = first.log_text()
        assert "replayed message from node tester-node" in log
        assert "names no target node" in log
        assert "meant for node" in second.log_text()
        assert all_see(nodes, 2)  # the cluster itself carries on, heartbeats and all


def test_a_node_refused_for_its_secret_says_so(tmp_path):
    with running_nodes(tmp_path, 1) as nodes:
        intruder = start_node(tmp_path, "intruder", [nodes[0].address], secret="another-secret-abcdefghijkl")
        try:
            wait_for(lambda: "refused our signature" in intruder.log_text(), what="the intruder's warning")
            assert "another secret" in intruder.log_text()
            assert len(intruder.cluster()["nodes"]) == 1
        finally:
            intruder.stop()
