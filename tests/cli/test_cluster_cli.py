"""`tandem run` and `tandem place --dry-run` against real nodes."""

from __future__ import annotations

import subprocess
import sys

from nodes import running_nodes, wait_for


def tandem(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_place_dry_run_and_run_chat_on_a_two_node_cluster(tmp_path):
    with running_nodes(tmp_path, 2) as nodes:
        wait_for(lambda: all(len(n.cluster()["nodes"]) == 2 for n in nodes), what="two nodes")
        ids = [n.node_id for n in nodes]
        devices = ",".join(f"{i}/cpu" for i in ids)
        plan = tandem("place", "demo", "--dry-run", "--node", nodes[1].url, "--devices", devices)
        assert plan.returncode == 0, plan.stderr
        assert "2 stages" in plan.stdout and ids[0] in plan.stdout and "tokens/s" in plan.stdout
        assert nodes[0].cluster()["instances"] == []  # a dry run launches nothing

        launched = tandem("place", "demo", "--node", nodes[0].url, "--devices", devices)
        assert launched.returncode == 0, launched.stderr
        chat = tandem(
            "run",
            "demo",
            "--node",
            nodes[1].url,
            "--seed",
            "3",
            "--max-tokens",
            "30",
            stdin="What news from Rome?\nAnd then?\n/bye\n",
        )
        assert chat.returncode == 0, chat.stderr
        assert len(chat.stdout.replace(">>>", "").split()) >= 4
        assert chat.stderr.count("time to first token") == 2
        assert len(nodes[0].cluster()["instances"]) == 1  # `run` reused the running instance


def test_commands_that_need_a_node_say_so_when_none_answers():
    result = tandem("run", "demo", "--node", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "tandem: error: no node answers at http://127.0.0.1:9; start one with `tandem`"
    )
