"""Real nodes on one host of a private LAN (network namespaces), called from another host: with
no API key the API and dashboard answer only their own machine (a browser elsewhere gets a page
that says how to get in), node-to-node routes answer everyone (the secret guards them), and
`--open-api` or `--api-key` let other machines in. Each node says at start which mode it is in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tandem
from nodes import TEST_SECRET, wait_for

SOURCE = str(Path(tandem.__file__).resolve().parents[1])
KEY = "an-api-key-for-the-lan"
CALL = """
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
try:
    response = urllib.request.urlopen(request, timeout=5)
    print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"""


def start_node(host, tmp_path: Path, port: int, *flags: str) -> Path:
    log = tmp_path / f"node-{port}.log"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")},
        "PYTHONPATH": SOURCE,
        "TANDEM_SECRET": TEST_SECRET,
    }
    command = [
        sys.executable,
        "-m",
        "tandem.cli.main",
        "node",
        "--port",
        str(port),
        "--advertise",
        host.address,
    ]
    command += ["--discovery", "none", "--devices", "cpu", "--data-dir", str(tmp_path / str(port)), *flags]
    host.popen(command, env=environment, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return log


def call(host, url: str, *headers: str) -> tuple[int, str]:
    result = host.run([sys.executable, "-c", CALL, url, *headers], check=False)
    status, _, body = result.stdout.partition(" ")
    return (int(status), body) if status.isdigit() else (0, result.stderr)


def test_the_api_is_closed_to_other_machines_unless_opened(make_lan, tmp_path):
    server, elsewhere = make_lan(2).hosts
    closed, opened, keyed = 52525, 52526, 52527
    logs = {
        closed: start_node(server, tmp_path, closed),
        opened: start_node(server, tmp_path, opened, "--open-api"),
        keyed: start_node(server, tmp_path, keyed, "--api-key", KEY),
    }
    base = {port: f"http://{server.address}:{port}" for port in logs}
    for port in logs:  # from the node's own machine, through its LAN address: always in
        wait_for(
            lambda port=port: (
                call(server, f"{base[port]}/v1/models", f"Authorization: Bearer {KEY}")[0] == 200
            ),
            timeout=60,
            what=f"node {port} to answer",
        )

    status, body = call(elsewhere, f"{base[closed]}/v1/models")
    assert status == 403
    assert "only on its own machine" in json.loads(body)["error"]["message"]
    status, page = call(elsewhere, f"{base[closed]}/", "Accept: text/html")
    assert status == 403 and "--open-api" in page and f"ssh -L {closed}:localhost:{closed}" in page
    status, body = call(elsewhere, f"{base[closed]}/internal/state")  # reachable, refused by the secret
    assert status == 401 and "X-Tandem-Node" in body

    assert call(elsewhere, f"{base[opened]}/v1/models")[0] == 200
    assert call(elsewhere, f"{base[opened]}/")[0] == 200

    assert call(elsewhere, f"{base[keyed]}/v1/models")[0] == 401
    assert call(elsewhere, f"{base[keyed]}/v1/models", f"Authorization: Bearer {KEY}")[0] == 200
    status, page = call(elsewhere, f"{base[keyed]}/")
    assert status == 200 and 'id="key-panel"' in page  # the page that asks for the key

    assert "API and dashboard on this machine only" in logs[closed].read_text()
    assert "open to every machine" in logs[opened].read_text()
    assert "API and dashboard open to other machines with the API key" in logs[keyed].read_text()
