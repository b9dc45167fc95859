"""The fetcher in one process: a peer's bad bytes fall back to the Hub, pinned names need no
network, and the progress board adds up."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Iterator

import httpx
import pytest

from hub_standin import HubStandIn
from store_support import METADATA, REPO, shards_by_name
from tandem.model.stage import LayerRange, StageSpec
from tandem.store.fetch import FilesUnavailable, ModelFetcher
from tandem.store.hub import Hub
from tandem.store.manifest import RepoFile, RepoManifest
from tandem.store.progress import DownloadBoard
from tandem.store.transfer import ByteStream, open_http_stream


class StandInPeer:
    """A 'peer' whose files come from another stand-in (which may be told to corrupt them)."""

    def __init__(self, stand_in: HubStandIn) -> None:
        self.stand_in = stand_in
        self.label = "peer standin"
        self.client = httpx.Client(follow_redirects=True)

    @contextlib.contextmanager
    def open(self, repo_id: str, commit: str, file: RepoFile, offset: int) -> Iterator[ByteStream]:
        url = f"{self.stand_in.url}/{repo_id}/resolve/{commit}/{file.name}"
        with open_http_stream(self.client, url, {}, offset) as stream:
            yield stream

    def manifests(self, repo_id: str, revision: str) -> list[tuple[StandInPeer, RepoManifest]]:
        manifest = Hub(endpoint=self.stand_in.url, token="", offline=False).manifest(repo_id, revision)
        return [(self, manifest)]


def closed_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_bad_bytes_from_a_peer_fall_back_to_the_hub(tmp_path, hub, sharded):
    bad = "model-00006-of-00006.safetensors"
    with HubStandIn({REPO: sharded.path}) as peer_stand_in:
        peer_stand_in.corrupt = {bad}
        board = DownloadBoard()
        fetcher = ModelFetcher(
            hub=Hub(endpoint=hub.url, token="", offline=False),
            peers=StandInPeer(peer_stand_in),
            board=board,
            cache_root=tmp_path,
        )
        snapshot = fetcher.ensure(REPO, LayerRange(3, 4))
        stage_files = METADATA | shards_by_name(sharded.path, 3, 4)
        assert {p.name for p in snapshot.iterdir()} == stage_files
        assert (snapshot / bad).read_bytes() == (sharded.path / bad).read_bytes()
        assert hub.fetched() == [bad]  # the Hub delivered only what the peer got wrong
        assert sorted(peer_stand_in.fetched()) == sorted(stage_files)

    (record,) = board.snapshot()
    assert (record.status, record.layers, record.source) == ("done", "3:4", "hub")
    assert record.files_done == record.files_total == len(stage_files)
    assert (
        record.done_bytes == record.total_bytes == sum((sharded.path / n).stat().st_size for n in stage_files)
    )


def test_a_pinned_name_is_served_from_the_cache_without_asking_anyone(tmp_path, hub, sharded):
    ModelFetcher(hub=Hub(endpoint=hub.url, token="", offline=False), cache_root=tmp_path).ensure(
        REPO, LayerRange(0, 2)
    )
    hub.stop()
    unreachable = ModelFetcher(
        hub=Hub(endpoint=closed_endpoint(), token="", offline=False), cache_root=tmp_path
    )
    commit = hub.commits[REPO]
    stage = StageSpec(LayerRange(0, 2), 4)
    assert unreachable.ensure(f"{REPO}@{commit}", stage).name == commit
    assert unreachable.ensure(REPO, stage).name == commit  # a branch falls back to the cache
    assert unreachable.pinned_name(REPO) == f"{REPO}@{commit}"
    with pytest.raises(FilesUnavailable, match=r"missing model-00004-of-00006\.safetensors"):
        unreachable.ensure(f"{REPO}@{commit}", StageSpec(LayerRange(2, 4), 4))


def test_a_server_that_ignores_ranges_still_completes_a_resumed_file(tmp_path, hub, sharded):
    name = "model-00006-of-00006.safetensors"
    whole = (sharded.path / name).read_bytes()
    blob_dir = tmp_path / "models--tiny--llama" / "blobs"
    blob_dir.mkdir(parents=True)
    sha = hashlib.sha256(whole).hexdigest()
    (blob_dir / f"{sha}.incomplete").write_bytes(whole[:30_000])  # an earlier run's part
    hub.honor_ranges = False
    board = DownloadBoard()
    fetcher = ModelFetcher(
        hub=Hub(endpoint=hub.url, token="", offline=False), board=board, cache_root=tmp_path
    )
    snapshot = fetcher.ensure(REPO, LayerRange(3, 4))
    assert (snapshot / name).read_bytes() == whole
    assert [e.range for e in hub.log if e.path == f"/cdn/{sha}"] == ["bytes=30000-"]
    (record,) = board.snapshot()
    assert record.done_bytes == record.total_bytes  # the part it held was neither counted twice nor lost


def test_a_download_knows_its_total_from_its_first_figures(tmp_path, hub, sharded):
    board = DownloadBoard()
    fetcher = ModelFetcher(
        hub=Hub(endpoint=hub.url, token="", offline=False), board=board, cache_root=tmp_path
    )
    firsts = []
    snapshot = fetcher.ensure(REPO, on_tracker=lambda tracker: firsts.append(tracker.snapshot()))
    everything = sum(p.stat().st_size for p in snapshot.iterdir())
    assert len(firsts) == 1 and firsts[0].total_bytes == everything  # config, tokenizer, every shard
    assert firsts[0].files_total == len(METADATA) + 6
    assert 0 < firsts[0].done_bytes < everything  # the metadata, fetched first to read the index
    (done,) = board.snapshot()
    assert done.status == "done" and done.done_bytes == done.total_bytes == everything
    assert done.files_done == done.files_total == len(METADATA) + 6
    again = []
    fetcher.ensure(REPO, on_tracker=again.append)
    assert again == []  # nothing missing: no download
