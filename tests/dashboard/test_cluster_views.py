"""The routes behind the dashboard, over HTTP against real nodes: the state event stream, the
model list with fit, and the page's assets (offline, in the package, with the right types)."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from types import SimpleNamespace

import httpx

from nodes import running_nodes
from tandem.cluster.state import ClusterState
from tandem.dashboard import STATIC_DIR
from tandem.node.instances import InstanceManager
from tandem.node.models import describe_model, find_models
from tandem.store.resolve import resolve_model_dir
from topologies import cpu, node

REPO = Path(__file__).resolve().parents[2]


def next_event(lines) -> dict:
    """The next SSE message with a `data:` line (comments and retry hints skipped)."""
    fields: dict = {}
    for line in lines:
        if line == "" and "data" in fields:
            return fields
        if line and not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    raise AssertionError(f"the stream ended inside {fields}")


def test_events_carry_the_state_now_and_on_each_change_and_end_with_the_node(tmp_path):
    with (
        running_nodes(tmp_path, 1) as (only,),
        httpx.stream("GET", f"{only.url}/v1/events", timeout=30) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000"
        first = next_event(lines)
        view = json.loads(first["data"])
        assert first["event"] == "state" and int(first["id"]) == view["version"]
        assert view["self"] == only.node_id
        assert set(view) == set(only.cluster())
        # A lone coordinator republishes its node report every 5 s: a new state, pushed.
        second = next_event(lines)
        assert int(second["id"]) > int(first["id"])
        # A node with a watcher connected still shuts down at once, and cleanly.
        only.stop()
        assert only.process.returncode == 0, only.log_text()
        assert list(lines) == []


def test_models_list_the_demo_and_the_checkpoints_a_node_was_given(cluster):
    alpha, beta = cluster.nodes
    everything = alpha.http.get("/v1/cluster/models").json()["models"]
    listed = {model["label"]: model for model in everything if model["source"] != "catalog"}
    assert list(listed) == ["demo", "endless-tiny"]
    # Then the catalog, sized and placed from its shipped configs without downloading anything.
    cards = {model["name"]: model for model in everything if model["source"] == "catalog"}
    small = cards["llama-3.2-1b"]
    assert small["downloaded"] is False and small["layers"] == 16 and small["fits"]
    assert small["predicted_tokens_per_second"] > 0
    # The engine runs Kimi-K2's FP8 experts: what keeps it off these two nodes is memory.
    # (alpha and beta share this machine's RAM, so a single layer of it may already be too big.)
    assert not cards["kimi-k2"]["fits"] and re.search(r"GB (for|of) weights", cards["kimi-k2"]["reason"])
    slow = listed["endless-tiny"]
    assert slow["name"] == str(cluster.slow_model) and slow["source"] == "directory"
    assert slow["fits"] and slow["predicted_tokens_per_second"] > 0 and slow["reason"] is None
    assert slow["layers"] == 8 and slow["max_context"] == 4096
    assert slow["file_bytes"] == sum(f.stat().st_size for f in cluster.slow_model.glob("*.safetensors"))
    assert listed["demo"]["parameters"] == 5_770_496 and listed["demo"]["source"] == "bundled"
    beta_models = beta.http.get("/v1/cluster/models").json()["models"]
    assert [m["name"] for m in beta_models if m["source"] != "catalog"] == ["demo"]


def test_the_model_list_skips_other_folders_and_says_why_a_model_cannot_run(tmp_path, checkpoint_factory):
    folder = tmp_path / "models"
    shutil.copytree(checkpoint_factory("qwen3-qknorm").path, folder / "good")
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("not a model")
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")
    (folder / "broken" / "model.safetensors").write_bytes(b"")
    models = find_models((folder, folder / "good"))  # a checkpoint given directly is listed once
    assert [(m.label, m.source) for m in models] == [
        ("demo", "bundled"),
        ("broken", "directory"),
        ("good", "directory"),
    ]

    # What fits depends on the cluster: one node with 1.5 GB keeps ~0.35 GB for weights.
    local_files = SimpleNamespace(config_dir=resolve_model_dir)  # local models only: no fetching
    options = SimpleNamespace(models_dirs=(folder,))  # requests may name checkpoints under it
    small = SimpleNamespace(state=ClusterState(nodes=(node("small", cpu(memory_gb=1.5)),)), options=options)
    plan = InstanceManager(small, local_files).plan  # type: ignore[arg-type]
    listings = {listing.label: listing for listing in (describe_model(m, plan) for m in models)}
    assert listings["demo"].fits and listings["good"].fits
    assert not listings["broken"].fits and "config.json" in listings["broken"].reason
    tiny = SimpleNamespace(state=ClusterState(nodes=(node("tiny", cpu(memory_gb=1.0)),)), options=options)
    demo = describe_model(models[0], InstanceManager(tiny, local_files).plan)  # type: ignore[arg-type]
    assert not demo.fits and demo.predicted_tokens_per_second is None
    assert re.search(r"\d", demo.reason), demo.reason  # the reason is in numbers
    assert demo.parameters == 5_770_496  # the size is known even where it does not fit


def asset_references(path: Path) -> list[str]:
    """The local URLs a page asset loads: src/href in HTML, imports in JS, url() in CSS."""
    text = path.read_text()
    if path.suffix == ".html":
        return re.findall(r'(?:src|href)="(/[^"#]*)"', text)
    if path.suffix == ".js":
        base = "/dashboard/" + path.relative_to(STATIC_DIR).parent.as_posix()
        return [f"{base}/{name[2:]}" for name in re.findall(r'from "(\./[^"]+)"', text)]
    return re.findall(r"url\((?!data:)([^)]+)\)", text)


def test_the_page_and_everything_it_loads_come_from_the_node(cluster):
    alpha = cluster.nodes[0]
    page = alpha.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert alpha.http.head("/").status_code == 200
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    pending, seen = ["/"], set()
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        file = STATIC_DIR / ("index.html" if url == "/" else url.removeprefix("/dashboard/"))
        response = alpha.http.get(url)
        assert response.status_code == 200, url
        if file.suffix in types:
            assert response.headers["content-type"].startswith(types[file.suffix]), url
        if file.suffix in (".html", ".js", ".css"):
            pending += asset_references(file)
    served = {p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()}
    reached = {("index.html" if url == "/" else url.removeprefix("/dashboard/")) for url in seen}
    assert reached == served, "every asset is used, and every used asset exists"
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            outside = re.findall(r"\w+://[^\s\"')]+", path.read_text())
            assert set(outside) <= {"http://www.w3.org/2000/svg"}, (path, outside)  # an XML namespace


def test_every_asset_is_package_data():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = STATIC_DIR.parents[1]
    included = {path for pattern in patterns["tandem"] for path in package.glob(pattern) if path.is_file()}
    assert {path for path in STATIC_DIR.rglob("*") if path.is_file()} <= included
