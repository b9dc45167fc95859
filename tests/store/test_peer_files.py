"""Weights shared between real node processes: a node that lacks its stage's files takes them
from a peer (the Hub stand-in is turned off), checked by hash; the routes admit only the cluster."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import httpx

from nodes import TEST_SECRET, generate, launch, start_node, wait_for
from store_support import METADATA, REPO, shards_by_name
from tandem.cluster.auth import sign_request

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
PARAMS = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}


def tokens(node, instance_id: str) -> list[int]:
    events = generate(node, instance_id, prompt_ids=PROMPT, params=PARAMS)
    return [e["token_id"] for e in events if e["type"] == "token"]


def downloads_of(node, node_id: str) -> list[dict]:
    return next(n for n in node.cluster()["nodes"] if n["node_id"] == node_id)["downloads"]


def ended_download(observer, node_id: str, layers: str) -> list[dict]:
    """`node_id`'s download of `layers` as `observer` sees it once it has ended: the cluster
    state reaches the other nodes a moment after the download's own node."""
    return wait_for(
        lambda: [
            d
            for d in downloads_of(observer, node_id)
            if d["layers"] == layers and d["status"] != "downloading"
        ],
        what=f"the end of the download of layers {layers}",
    )


def signed_get(node, target: str, secret: str = TEST_SECRET, **headers: str) -> httpx.Response:
    signature = sign_request(secret.encode(), "test-client", "GET", target)
    return node.http.get(target, headers={**signature, **headers})


def test_a_node_takes_its_stage_from_a_peer_when_the_hub_is_off(tmp_path, hub, hf_env, sharded):
    nodes = []
    try:
        for index in range(2):
            peers = [nodes[0].address] if nodes else []
            home = {**hf_env, "HF_HOME": str(tmp_path / f"hf-{index}")}
            nodes.append(start_node(tmp_path, f"node{index}", peers, env=home))
        wait_for(lambda: all(len(n.cluster()["nodes"]) == 2 for n in nodes), what="two nodes")
        # The holder is the coordinator, so it also fetches the config to plan (which node that is
        # depends on start-up timing).
        coordinator = nodes[0].cluster()["coordinator"]
        holder, taker = sorted(nodes, key=lambda n: n.node_id != coordinator)
        holder_id, taker_id = holder.node_id, taker.node_id

        # The holder fetches the whole model from the Hub for an instance of its own; the other
        # node sees the download move in the cluster state while it runs.
        hub.rate = 200_000  # bytes per second: about four seconds for the model
        with ThreadPoolExecutor(1) as pool:
            launching = pool.submit(launch, holder, model=REPO, devices=[f"{holder_id}/cpu"], context=64)
            moving = wait_for(
                lambda: [
                    d
                    for d in downloads_of(taker, holder_id)
                    if d["layers"] == "0:4" and d["status"] == "downloading" and d["bytes_per_second"] > 0
                ],
                what="a download in progress in the cluster state",
            )
            assert 0 < moving[0]["done_bytes"] < moving[0]["total_bytes"] and moving[0]["eta"] > 0
            assert moving[0]["message"].endswith("from hub")  # the file being fetched
            alone = launching.result()
        hub.rate = None
        expected = tokens(holder, alone["instance_id"])
        assert len(expected) == 12
        done = ended_download(taker, holder_id, "0:4")
        assert done[0]["status"] == "done" and done[0]["source"] == "hub"
        weights = sum((sharded.path / name).stat().st_size for name in shards_by_name(sharded.path, 0, 4))
        assert done[0]["done_bytes"] == done[0]["total_bytes"] == weights  # the config came first, to plan
        holder.http.delete(f"/v1/instances/{alone['instance_id']}")

        # Hub gone: the taker's stage comes from the holder, and only its stage.
        hub.stop()
        split = launch(taker, model=REPO, devices=[f"{holder_id}/cpu", f"{taker_id}/cpu"], context=64)
        assert tokens(taker, split["instance_id"]) == expected
        start, end = split["runners"][1]["layers"]["start"], split["runners"][1]["layers"]["end"]
        stage_files = METADATA | shards_by_name(sharded.path, start, end)
        assert "model-00001-of-00006.safetensors" not in stage_files  # the embedding's shard stays away
        snapshot = tmp_path / f"hf-{nodes.index(taker)}" / "hub" / "models--tiny--llama" / "snapshots"
        assert {p.name for p in (snapshot / hub.commits[REPO]).iterdir()} == stage_files
        fetched = ended_download(holder, taker_id, f"{start}:{end}")
        assert fetched[0]["status"] == "done"
        assert fetched[0]["source"] == f"peer {holder_id}"
        assert fetched[0]["files_done"] == fetched[0]["files_total"] == len(stage_files)

        check_file_routes(holder, sharded)
    finally:
        for node in nodes:
            node.stop()


def check_file_routes(node, sharded) -> None:
    """The peer routes: signed requests only, Range answered with 206, nothing outside the cache."""
    name = "model-00006-of-00006.safetensors"
    whole = (sharded.path / name).read_bytes()
    manifest = signed_get(node, "/internal/files/manifest?" + urlencode({"repo": REPO, "revision": "main"}))
    assert manifest.status_code == 200
    commit = manifest.json()["commit"]
    listed = {f["name"]: f for f in manifest.json()["files"]}
    assert listed[name]["size"] == len(whole)

    target = "/internal/files/blob?" + urlencode({"repo": REPO, "commit": commit, "file": name})
    assert node.http.get(target).status_code == 401  # unsigned
    assert signed_get(node, target, secret="another-cluster-secret-0123").status_code == 401
    part = signed_get(node, target, Range="bytes=100-")
    assert part.status_code == 206 and part.content == whole[100:]
    assert signed_get(node, target).content == whole

    for probe in ("../../../../etc/passwd", "config.json/../../refs/main", "/etc/passwd"):
        escape = "/internal/files/blob?" + urlencode({"repo": REPO, "commit": commit, "file": probe})
        assert signed_get(node, escape).status_code == 404
    unknown = "/internal/files/manifest?" + urlencode({"repo": "nobody/nothing", "revision": "main"})
    assert signed_get(node, unknown).status_code == 404
