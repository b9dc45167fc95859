// The cluster section: a card per node (coordinator and this node marked), and the links.

import { downloadsList, devicesList } from "./devices.js";
import { h, renderIfChanged } from "./dom.js";
import { bitRate, bytes, duration, shortId } from "./format.js";

export function nodeCard(node, { coordinator, self }) {
  const badges = [
    node.node_id === coordinator ? h("span", { class: "badge badge-accent", text: "coordinator" }) : null,
    node.node_id === self ? h("span", { class: "badge", text: "this node" }) : null,
  ];
  return h(
    "article",
    {
      class: `card node${node.node_id === coordinator ? " node-coordinator" : ""}`,
      role: "listitem",
      "aria-label": `node ${node.name}`,
      "data-node-id": node.node_id,
    },
    h("header", { class: "card-head" }, h("h3", { class: "node-name", text: node.name }), badges),
    h("p", {
      class: "muted small node-meta",
      text: `${node.address} · id ${shortId(node.node_id)} · v${node.version}`,
    }),
    devicesList(node),
    downloadsList(node),
  );
}

function linksTable(view, names) {
  if (view.links.length === 0) {
    return h("p", {
      class: "muted",
      text: view.nodes.length > 1 ? "Measuring the links between nodes…" : "One node: no links yet.",
    });
  }
  const rows = [...view.links]
    .sort((a, b) => (names[a.source] + names[a.target]).localeCompare(names[b.source] + names[b.target]))
    .map((link) =>
      h(
        "tr",
        {},
        h("td", { text: names[link.source] || shortId(link.source) }),
        h("td", { text: names[link.target] || shortId(link.target) }),
        h("td", { class: "num", text: duration(link.latency) }),
        h("td", { class: "num", text: bitRate(link.bandwidth) }),
      ),
    );
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { class: "links" },
      h("caption", { class: "visually-hidden", text: "Measured links between nodes (one way)" }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col", text: "From" }),
          h("th", { scope: "col", text: "To" }),
          h("th", { scope: "col", class: "num", text: "Latency" }),
          h("th", { scope: "col", class: "num", text: "Bandwidth" }),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}

function summary(view) {
  const devices = view.nodes.flatMap((node) => node.devices);
  const gpus = devices.filter((device) => device.kind === "cuda").length;
  // Nodes on one host each report its whole RAM: count it once per host.
  const hosts = new Set();
  const free = view.nodes.reduce((total, node) => {
    const shared = Boolean(node.host) && hosts.has(node.host);
    if (node.host) hosts.add(node.host);
    return (
      total +
      node.devices.reduce((sum, d) => sum + (shared && d.kind === "cpu" ? 0 : d.memory_free), 0)
    );
  }, 0);
  const nodes = `${view.nodes.length} ${view.nodes.length === 1 ? "node" : "nodes"}`;
  const gpuText = gpus ? `, ${gpus} ${gpus === 1 ? "GPU" : "GPUs"}` : "";
  return `${nodes}${gpuText}, ${bytes(free)} free`;
}

const HISTORY_SHOWN = 8;
const BAD_KINDS = new Set(["left", "failed", "not_replaced"]);
const HISTORY_LABELS = {
  joined: "joined",
  left: "left",
  failed: "failed",
  replaced: "re-placed",
  not_replaced: "not re-placed",
};

// The cluster's newest events first: joins, leaves, failures and re-placements, with reasons.
export function historyList(history) {
  const newest = [...(history || [])].reverse().slice(0, HISTORY_SHOWN);
  if (!newest.length) return [];
  return h(
    "ol",
    { class: "history", "aria-label": "Cluster events" },
    newest.map((entry) =>
      h(
        "li",
        { class: `history-entry history-${entry.kind}`, "data-kind": entry.kind },
        h("time", {
          class: "muted small",
          datetime: new Date(entry.at * 1000).toISOString(),
          text: new Date(entry.at * 1000).toLocaleTimeString(),
        }),
        " ",
        h("span", {
          class: BAD_KINDS.has(entry.kind) ? "badge badge-danger" : "badge",
          text: HISTORY_LABELS[entry.kind] || entry.kind,
        }),
        " ",
        h("span", { text: entry.message }),
      ),
    ),
  );
}

export class ClusterView {
  constructor({ nodes, links, summary: summaryElement, history }) {
    this.nodes = nodes;
    this.links = links;
    this.summary = summaryElement;
    this.history = history;
  }

  update(view) {
    const names = Object.fromEntries(view.nodes.map((node) => [node.node_id, node.name]));
    // The coordinator first, then by name: cards stay put as readings change.
    const ordered = [...view.nodes].sort(
      (a, b) =>
        (b.node_id === view.coordinator) - (a.node_id === view.coordinator) || a.name.localeCompare(b.name),
    );
    renderIfChanged(this.nodes, JSON.stringify([ordered, view.coordinator, view.self]), () =>
      ordered.map((node) => nodeCard(node, { coordinator: view.coordinator, self: view.self })),
    );
    renderIfChanged(this.links, JSON.stringify([view.links, names]), () => linksTable(view, names));
    this.summary.textContent = summary(view);
    if (this.history) {
      renderIfChanged(this.history, JSON.stringify(view.history || []), () => historyList(view.history));
    }
  }
}
