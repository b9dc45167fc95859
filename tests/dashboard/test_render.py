"""The dashboard's renderers, run in the real browser on a page a real node served: Markdown
(including hostile input), and node cards with GPU readings and downloads (which CPU-only
machines never report, so the cards are fed those fields directly)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from dashboard.pages import open_page, screenshot

LINK = 'target="_blank" rel="noopener noreferrer nofollow"'

MARKDOWN = [
    ("# Title", "<h3>Title</h3>"),
    ("###### Deep", "<h6>Deep</h6>"),
    (
        "**bold** and *it* and _it2_ and `co*de*`",
        "<p><strong>bold</strong> and <em>it</em> and <em>it2</em> and <code>co*de*</code></p>",
    ),
    ("line one\nline two\n\nnext paragraph", "<p>line one<br>line two</p><p>next paragraph</p>"),
    ("- a\n- b\n  - c\n- d", "<ul><li>a</li><li>b<ul><li>c</li></ul></li><li>d</li></ul>"),
    ("1. one\n2. two", "<ol><li>one</li><li>two</li></ol>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    (
        "```py\nx = 1 < 2\n\ny\n```\nafter",
        '<pre><code class="language-py">x = 1 &lt; 2\n\ny</code></pre><p>after</p>',
    ),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
    (
        "[site](https://example.org/a?b=1&c=2)",
        f'<p><a href="https://example.org/a?b=1&amp;c=2" {LINK}>site</a></p>',
    ),
    ("[**x**](mailto:a@b.c)", f'<p><a href="mailto:a@b.c" {LINK}><strong>x</strong></a></p>'),
    ("> to be\n> or not", "<blockquote><p>to be<br>or not</p></blockquote>"),
    ("---", "<hr>"),
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    ("Tis 'fair' & \"square\"", "<p>Tis &#39;fair&#39; &amp; &quot;square&quot;</p>"),
]

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html,<script>alert(1)</script>)",
    '[x](https://a.b/"onmouseover="alert(1))',
    "[x](https://a.b/'onmouseover='alert(1))",
    "`<b onclick=alert(1)>`",
    "```\n</code></pre><script>alert(1)</script>\n```",
    '```"><svg onload=alert(1)>\ncode\n```',
    "# <iframe src=javascript:alert(1)>",
    "- <style>*{display:none}</style>\n- **<a href=javascript:alert(1)>**",
    "> <object data=x></object>",
    "\u0001\u00010\u0001 [a](https://x.y) \u00010\u0001",
]


@pytest.fixture(scope="module")
def page(browser, cluster):
    with open_page(browser, cluster.nodes[0].url) as page:
        expect(page.locator("#connection")).to_have_text("live")
        yield page


def render(page, source: str) -> str:
    return page.evaluate(
        "async (source) => (await import('/dashboard/js/markdown.js')).renderMarkdown(source)", source
    )


@pytest.mark.parametrize(("source", "html"), MARKDOWN)
def test_markdown_renders_the_common_forms(page, source, html):
    assert render(page, source) == html


@pytest.mark.parametrize("source", HOSTILE)
def test_markdown_lets_no_markup_through(page, source):
    found = page.evaluate(
        """async (source) => {
            const { renderMarkdown } = await import('/dashboard/js/markdown.js');
            const box = document.createElement('div');
            box.innerHTML = renderMarkdown(source);
            const all = [...box.querySelectorAll('*')];
            return {
                tags: [...new Set(all.map((e) => e.tagName.toLowerCase()))],
                attributes: all.flatMap((e) => [...e.attributes].map((a) => `${e.tagName}.${a.name}=${a.value}`)),
            };
        }""",
        source,
    )
    allowed_tags = {
        "p",
        "br",
        "h3",
        "h4",
        "h5",
        "h6",
        "strong",
        "em",
        "code",
        "pre",
        "ul",
        "ol",
        "li",
        "a",
        "blockquote",
        "hr",
    }
    assert set(found["tags"]) <= allowed_tags, found
    for attribute in found["attributes"]:
        name, _, value = attribute.partition("=")
        assert name in {"A.href", "A.target", "A.rel", "CODE.class", "OL.start"}, found
        if name == "A.href":
            assert re.match(r"^(https?://|mailto:)", value, re.IGNORECASE), found


def test_markdown_renders_every_prefix_of_a_streaming_answer(page):
    answer = "# Plan\n\n1. **Load** the `model`\n   - shard it\n2. Serve [docs](https://x.y)\n\n```sh\ntandem run demo\n```\n> done"
    rendered = page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import('/dashboard/js/markdown.js');
            return [...text].map((_, i) => renderMarkdown(text.slice(0, i + 1)).length);
        }""",
        answer,
    )
    assert len(rendered) == len(answer) and all(length > 0 for length in rendered)


GPU_NODE = {
    "node_id": "f00dfeedf00dfeed",
    "name": "gpu-box",
    "address": "10.0.0.7:52525",
    "version": "0.1.0",
    "devices": [
        {
            "kind": "cuda",
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total": 85_000_000_000,
            "memory_free": 25_000_000_000,
            "matmul_flops": 7.1e14,
            "memory_bandwidth": 2.9e12,
            "utilization": 0.87,
            "power_draw": 612.4,
            "power_limit": 700.0,
        },
        {
            "kind": "cpu",
            "index": 0,
            "name": "AMD EPYC 9454 (96 cores)",
            "memory_total": 512_000_000_000,
            "memory_free": 480_000_000_000,
            "matmul_flops": 2e12,
            "memory_bandwidth": 2.5e11,
            "utilization": 0.12,
        },
    ],
    "downloads": [
        {
            "model": "Qwen/Qwen3-8B",
            "done_bytes": 6_400_000_000,
            "total_bytes": 16_000_000_000,
            "bytes_per_second": 120_000_000,
            "status": "downloading",
            "message": "model-00002-of-00004.safetensors",
        },
        {"model": "demo-big", "done_bytes": 100, "status": "failed", "message": "disk full"},
    ],
}


def test_a_gpu_node_card_shows_memory_load_power_and_downloads(page):
    page.evaluate(
        """async (node) => {
            const { nodeCard } = await import('/dashboard/js/cluster.js');
            const list = document.createElement('div');
            list.setAttribute('role', 'list');
            list.setAttribute('aria-label', 'Rendered');
            list.className = 'node-grid';
            list.append(nodeCard(node, { coordinator: node.node_id, self: null }));
            document.querySelector('main').prepend(list);
        }""",
        GPU_NODE,
    )
    card = page.get_by_role("list", name="Rendered").get_by_role("listitem", name="node gpu-box")
    expect(card.get_by_text("coordinator", exact=True)).to_be_visible()
    memory = card.get_by_role("meter", name="gpu-box GPU 0 memory")
    expect(memory).to_have_attribute("aria-valuetext", "60.0 GB of 85.0 GB used")
    expect(memory).to_have_attribute("aria-valuenow", "71")
    expect(card.get_by_role("meter", name="gpu-box GPU 0 utilization")).to_have_attribute(
        "aria-valuenow", "87"
    )
    expect(card.get_by_role("meter", name="gpu-box GPU 0 power draw")).to_have_attribute(
        "aria-valuetext", "612 / 700 W"
    )
    expect(card.get_by_role("meter", name="gpu-box CPU utilization")).to_have_attribute("aria-valuenow", "12")
    expect(card.get_by_role("meter", name="gpu-box CPU power draw")).to_have_count(0)  # not reported

    progress = card.get_by_role("progressbar", name="download of Qwen/Qwen3-8B to gpu-box")
    expect(progress).to_have_attribute("aria-valuenow", "40")
    expect(progress).to_have_attribute("aria-valuetext", "6.40 GB of 16.0 GB · 120 MB/s · 1 min 20 s left")
    failed = card.get_by_role("progressbar", name="download of demo-big to gpu-box")
    expect(failed).to_have_attribute("aria-valuetext", "failed: disk full")
    screenshot(card, "gpu-node-card")


HISTORY = [
    {"at": 1764680000.0, "kind": "joined", "message": "node b joined", "node_id": "b", "instance_id": None},
    {
        "at": 1764680100.0,
        "kind": "left",
        "message": "node b left the cluster",
        "node_id": "b",
        "instance_id": None,
    },
    {
        "at": 1764680101.0,
        "kind": "failed",
        "message": "instance 1a2b of demo failed: node b left the cluster",
        "node_id": None,
        "instance_id": "1a2b",
    },
    {
        "at": 1764680103.0,
        "kind": "replaced",
        "message": "instance 1a2b of demo re-placed as 3c4d on a: ready",
        "node_id": None,
        "instance_id": "3c4d",
    },
]


def test_the_cluster_history_lists_the_newest_events_first(page):
    page.evaluate(
        """async (history) => {
            const { historyList } = await import('/dashboard/js/cluster.js');
            const rendered = document.createElement('section');
            rendered.setAttribute('aria-label', 'Rendered history');
            rendered.append(historyList(history));
            document.querySelector('main').prepend(rendered);
        }""",
        HISTORY,
    )
    rendered = page.get_by_role("region", name="Rendered history")
    events = rendered.get_by_role("list", name="Cluster events").get_by_role("listitem")
    expect(events).to_have_count(4)
    expect(events.nth(0)).to_contain_text("re-placed")
    expect(events.nth(0)).to_contain_text("re-placed as 3c4d on a")
    expect(events.nth(3)).to_contain_text("node b joined")
    expect(events.nth(2).locator(".badge-danger")).to_have_text("left")
    screenshot(rendered, "cluster-history")
