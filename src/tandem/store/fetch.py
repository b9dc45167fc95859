"""Making a model's files present on this machine: the files of one layer range, or all of them.

    fetcher = ModelFetcher(peers=...)                 # peers: other nodes' caches (optional)
    snapshot = fetcher.ensure("qwen2.5-7b", stage)    # a directory the loader reads in place

Steps: find the repo's file list (the Hub's, or what this cache and the peers hold when the Hub
can't be asked), fetch the config and tokenizer files, work out the stage's weight files from the
index, check the disk has room, then fetch each missing file from a peer that holds it, else from
the Hub. Every file is checked against its hash before it enters the cache.

A name pinned to a commit (`repo@COMMIT`, what the coordinator hands runners) is served from the
cache without asking anyone when its files are there; a branch name asks the Hub which commit it
is at now, falling back to the cache when the Hub can't be reached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tandem.errors import TandemError
from tandem.model.config import read_config_json
from tandem.model.stage import LayerRange, StageSpec
from tandem.sizes import format_bytes
from tandem.store.cache import RepoCache, check_disk_space
from tandem.store.hub import Hub, HubRefused, HubUnreachable
from tandem.store.manifest import RepoFile, RepoManifest, is_metadata_file
from tandem.store.names import ModelName, parse_model_name
from tandem.store.progress import DownloadBoard, DownloadTracker
from tandem.store.selection import stage_weight_files
from tandem.store.transfer import FileSource, fetch_file

log = logging.getLogger("tandem.store")


class PeerDirectory(Protocol):
    """Other machines' caches: for each peer holding `repo_id` at `revision`, its source and files."""

    def manifests(self, repo_id: str, revision: str) -> list[tuple[FileSource, RepoManifest]]: ...


class FilesUnavailable(TandemError):
    """Files that neither this cache, nor a peer, nor the Hub can provide now."""


@dataclass
class _Download:
    """One `ensure` call: what is known of the repo at one commit, and who delivers which file."""

    name: ModelName
    cache: RepoCache
    commit: str
    files: dict[str, RepoFile]  # every file known to exist, by name
    hub: Hub | None  # None when the Hub can't be asked now
    peers: list[tuple[FileSource, RepoManifest]] = field(default_factory=list)
    hub_problem: TandemError | None = None
    layers: str | None = None
    tracker: DownloadTracker | None = None
    on_tracker: Callable[[DownloadTracker], None] | None = None  # told of the tracker once it starts

    def sources_for(self, file: RepoFile) -> list[FileSource]:
        held = [source for source, manifest in self.peers if manifest.file(file.name) == file]
        return held + ([self.hub] if self.hub is not None else [])


class _Untracked:
    """The progress of files fetched before their download's tracker starts: not recorded."""

    def advance(self, count: int) -> None:
        pass

    def fetching(self, file_name: str, source: str) -> None:
        pass


UNTRACKED = _Untracked()


class ModelFetcher:
    def __init__(
        self,
        hub: Hub | None = None,
        peers: PeerDirectory | None = None,
        board: DownloadBoard | None = None,
        cache_root: Path | None = None,
        relative_paths: bool = True,
    ) -> None:
        self.hub = hub or Hub()
        self.relative_paths = relative_paths  # see `parse_model_name`; a node's requests: False
        self.peers = peers
        self.board = board or DownloadBoard()
        self.cache_root = cache_root

    def ensure(
        self,
        text: str,
        stage: StageSpec | LayerRange | None = None,
        metadata_only: bool = False,
        on_tracker: Callable[[DownloadTracker], None] | None = None,
    ) -> Path:
        """The directory holding `text`'s config and tokenizer files plus the weight files of
        `stage` (all weights when None; none when `metadata_only`), fetching what is missing.
        A bare LayerRange is a stage of the model's own layer count (read from its config).

        The download's tracker starts once every file to fetch is known, so its first figures
        already carry the whole total; `on_tracker` is told of it (never, if nothing was missing)."""
        name = parse_model_name(text, self.relative_paths)
        if name.kind != "repo":
            from tandem.store.resolve import resolve_model_dir

            return resolve_model_dir(text, self.relative_paths)
        assert name.repo_id is not None
        cache = RepoCache(name.repo_id, self.cache_root)
        commit = cache.commit_for(name.revision)
        if commit is not None and name.is_pinned and self._complete(cache, commit, stage, metadata_only):
            return cache.snapshot(commit)
        download = self._find_sources(name, cache)
        download.on_tracker = on_tracker
        layers = stage.layers if isinstance(stage, StageSpec) else stage
        download.layers = f"{layers.start}:{layers.end}" if layers is not None else None
        snapshot = cache.snapshot(download.commit)
        try:
            metadata = [f for f in download.files.values() if is_metadata_file(f.name)]
            # Fetched untracked before the weights (the index says which weights), then counted
            # with them, so the tracker's total is known from its first figures.
            fetched = self._fetch(download, metadata, track=metadata_only)
            cache.set_ref(name.revision, download.commit)  # as the Hub client does: a resumed run finds it
            if not metadata_only:
                if not (snapshot / "config.json").is_file():
                    raise FilesUnavailable(self._unavailable(download, ["config.json"]))
                wanted = stage_weight_files(snapshot, _stage(snapshot, stage), set(download.files))
                unknown = sorted(wanted - set(download.files))
                if unknown:
                    raise FilesUnavailable(self._unavailable(download, unknown))
                self._fetch(download, [download.files[n] for n in sorted(wanted)], already=fetched)
        except TandemError as error:
            if download.tracker is not None:
                download.tracker.fail(str(error))
            raise
        if download.tracker is not None:
            download.tracker.finish()
        return snapshot

    def pinned_name(self, text: str) -> str:
        """`text` at the commit this cache holds for it (unchanged for directories and demo)."""
        name = parse_model_name(text, self.relative_paths)
        if name.kind != "repo" or name.is_pinned:
            return text
        assert name.repo_id is not None
        commit = RepoCache(name.repo_id, self.cache_root).commit_for(name.revision)
        return name.pinned(commit) if commit else text

    # --- finding where the files are --------------------------------------------------------------

    def _complete(
        self, cache: RepoCache, commit: str, stage: StageSpec | LayerRange | None, metadata_only: bool
    ) -> bool:
        present = cache.present(commit).names()
        if "config.json" not in present:
            return False
        if metadata_only:
            return True
        try:
            wanted = stage_weight_files(
                cache.snapshot(commit), _stage(cache.snapshot(commit), stage), present
            )
        except TandemError:
            return False
        return bool(wanted) and wanted <= present

    def _find_sources(self, name: ModelName, cache: RepoCache) -> _Download:
        assert name.repo_id is not None
        hub_problem: TandemError | None = None
        try:
            manifest = self.hub.manifest(name.repo_id, name.revision)
        except (HubUnreachable, HubRefused) as error:
            manifest, hub_problem = None, error
            log.info("%s: %s; looking in the cache and at peers", name.text, error)
        revision = manifest.commit if manifest else name.revision
        peers = self.peers.manifests(name.repo_id, revision) if self.peers else []
        if manifest is not None:
            files = {f.name: f for f in manifest.files}
            return _Download(name, cache, manifest.commit, files, self.hub, peers)
        commit = cache.commit_for(name.revision) or next((m.commit for _, m in peers), None)
        if commit is None:
            if isinstance(hub_problem, HubRefused):
                raise hub_problem  # the Hub's answer is the whole story: a wrong name, or no access
            nowhere = " nor at any peer" if self.peers else ""
            raise FilesUnavailable(
                f"{name.text} is not in the Hugging Face cache here ({cache.root}){nowhere}, "
                f"and {hub_problem}; {self._remedy(name.text, hub_problem)}"
            )
        peers = [(source, m) for source, m in peers if m.commit == commit]
        files: dict[str, RepoFile] = {}
        for held in [cache.present(commit), *(m for _, m in peers)]:
            for file in held.files:
                if file.name not in files or files[file.name].etag is None:
                    files[file.name] = file
        return _Download(name, cache, commit, files, None, peers, hub_problem)

    def _unavailable(self, download: _Download, missing: Iterable[str]) -> str:
        listed = list(missing)
        shown = ", ".join(listed[:6]) + (f" and {len(listed) - 6} more" if len(listed) > 6 else "")
        holders = (
            "neither this cache nor any peer holds them" if self.peers else "this cache does not hold them"
        )
        reason = download.hub_problem or "the Hub does not list them"
        remedy = self._remedy(download.name.text, download.hub_problem)
        return f"{download.name.text}: missing {shown}: {holders}, and {reason}; {remedy}"

    def _remedy(self, text: str, hub_problem: TandemError | None) -> str:
        if isinstance(hub_problem, HubRefused):
            return "then run it again"
        if hub_problem is not None and "HF_HUB_OFFLINE" in str(hub_problem):
            return f"unset HF_HUB_OFFLINE and run `tandem download {text}`"
        peers = ", or start a node that holds the model" if self.peers else ""
        return f"connect this machine to the internet and run `tandem download {text}`{peers}"

    # --- fetching ---------------------------------------------------------------------------------

    def _fetch(
        self,
        download: _Download,
        files: list[RepoFile],
        track: bool = True,
        already: list[RepoFile] | None = None,
    ) -> list[RepoFile]:
        """Fetch the files of `files` the cache lacks; returns those fetched. A tracked fetch
        also counts `already` (files this download fetched untracked) as done from its start."""
        cache, commit = download.cache, download.commit
        missing = [f for f in files if not cache.has(commit, f)]
        if not missing:
            return []
        unfetchable = [f.name for f in missing if f.etag is None or not download.sources_for(f)]
        if unfetchable:
            raise FilesUnavailable(self._unavailable(download, unfetchable))
        needed = sum(f.size - cache.partial_bytes(f) for f in missing)
        count = f"{len(missing)} file{'s' if len(missing) != 1 else ''}"
        check_disk_space(needed, cache.folder, f"{download.name.text} ({count})")
        tracker = self._tracker(download, missing, needed, already or []) if track else None
        log.info("%s: fetching %d files, %s", download.name.text, len(missing), format_bytes(needed))
        for file in missing:
            used = fetch_file(cache, commit, file, download.sources_for(file), tracker or UNTRACKED)
            if tracker is not None:
                tracker.file_done()
            log.info("%s: %s (%s) from %s", download.name.text, file.name, format_bytes(file.size), used)
        return missing

    def _tracker(
        self, download: _Download, missing: list[RepoFile], needed: int, already: list[RepoFile]
    ) -> DownloadTracker:
        if download.tracker is not None:
            download.tracker.extend(len(missing), needed)
            return download.tracker
        done = sum(f.size for f in already)
        download.tracker = self.board.start(
            download.name.text,
            download.cache.repo_id,
            download.commit,
            download.layers,
            files=(len(already), len(already) + len(missing)),
            size=(done, done + needed),
        )
        if download.on_tracker is not None:
            download.on_tracker(download.tracker)
        return download.tracker


def _stage(snapshot: Path, stage: StageSpec | LayerRange | None) -> StageSpec | None:
    if not isinstance(stage, LayerRange):
        return stage
    config = read_config_json(snapshot / "config.json")
    num_layers = int(config.get("num_hidden_layers") or 0)
    if stage.end > num_layers:
        raise TandemError(f"layers {stage.start}:{stage.end} go past the model's {num_layers} layers")
    return StageSpec(stage, num_layers)
