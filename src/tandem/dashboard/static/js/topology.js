// The cluster drawn as a picture: a box per node (its devices and the stages it runs), a line per
// pair of linked nodes labelled with the measured bandwidth each way. SVG built here from the
// cluster state; nothing is fetched. The links table below it keeps the exact numbers.

import { renderIfChanged } from "./dom.js";
import { bitRate, bytes, duration, layerSpan, modelLabel } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const BOX_WIDTH = 210;
const HEAD = 52; // name and devices
const CHIP = 20; // one line per stage
const MARGIN = 24;
const MAX_CHIPS = 6;
const GAP = 200; // between boxes in a row: room for a link's label

/** An SVG element: attributes, then children (elements or strings). */
function s(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) element.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) element.append(child);
  }
  return element;
}

/** What each node runs: {nodeId: [{instance, model, stage, layers, devices, status}]}. */
export function stagesByNode(view) {
  const byNode = new Map(view.nodes.map((node) => [node.node_id, []]));
  for (const instance of view.instances || []) {
    instance.placement.stages.forEach((stage, index) => {
      const devices = new Map();
      for (const [nodeId, device] of stage.members) {
        devices.set(nodeId, [...(devices.get(nodeId) || []), device]);
      }
      for (const [nodeId, held] of devices) {
        byNode.get(nodeId)?.push({
          instance: instance.instance_id,
          model: modelLabel(instance.model),
          stage: index,
          stages: instance.placement.stages.length,
          layers: layerSpan(stage.layers.start, stage.layers.end),
          devices: held.join("+"),
          status: instance.status,
        });
      }
    });
  }
  return byNode;
}

function deviceSummary(node) {
  const gpus = node.devices.filter((device) => device.kind === "cuda");
  const memory = node.devices.reduce((sum, device) => sum + device.memory_total, 0);
  return `${gpus.length ? `${gpus.length} ${gpus.length === 1 ? "GPU" : "GPUs"} + CPU` : "CPU"} · ${bytes(memory)}`;
}

/** Centres for `count` boxes: a row for up to three, else a ring. */
function positions(count, height) {
  if (count <= 3) {
    const width = count * BOX_WIDTH + (count - 1) * GAP + 2 * MARGIN;
    return {
      width,
      height: height + 2 * MARGIN,
      centres: Array.from({ length: count }, (_, i) => ({
        x: MARGIN + BOX_WIDTH / 2 + i * (BOX_WIDTH + GAP),
        y: MARGIN + height / 2,
      })),
    };
  }
  const radius = Math.max(200, (count * (BOX_WIDTH + 30)) / (2 * Math.PI));
  const size = 2 * radius + BOX_WIDTH + 2 * MARGIN;
  const ringHeight = 2 * radius * 0.62 + height + 2 * MARGIN;
  return {
    width: size,
    height: ringHeight,
    centres: Array.from({ length: count }, (_, i) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / count;
      return { x: size / 2 + radius * Math.cos(angle), y: ringHeight / 2 + radius * 0.62 * Math.sin(angle) };
    }),
  };
}

function linkLabel(a, b, forward, back) {
  const lines = [];
  if (forward) lines.push(`${a.name} → ${b.name} ${bitRate(forward.bandwidth)}`);
  if (back) lines.push(`${b.name} → ${a.name} ${bitRate(back.bandwidth)}`);
  const latency = [forward, back].filter(Boolean).map((link) => link.latency);
  if (latency.length) lines.push(`latency ${duration(Math.min(...latency))}`);
  return lines;
}

/** The SVG picture of `view` (the JSON of GET /v1/cluster). */
export function topologyPicture(view) {
  const ordered = [...view.nodes].sort(
    (a, b) =>
      (b.node_id === view.coordinator) - (a.node_id === view.coordinator) || a.name.localeCompare(b.name),
  );
  const stages = stagesByNode(view);
  const chips = Math.max(1, ...ordered.map((node) => Math.min(MAX_CHIPS, stages.get(node.node_id).length)));
  const boxHeight = HEAD + chips * CHIP + 8;
  const { width, height, centres } = positions(ordered.length, boxHeight);
  const where = new Map(ordered.map((node, i) => [node.node_id, centres[i]]));
  const find = (source, target) => view.links.find((l) => l.source === source && l.target === target);

  const lines = [];
  const labels = [];
  ordered.forEach((a, i) => {
    for (const b of ordered.slice(i + 1)) {
      const forward = find(a.node_id, b.node_id);
      const back = find(b.node_id, a.node_id);
      if (!forward && !back) continue;
      const p = where.get(a.node_id);
      const q = where.get(b.node_id);
      const text = linkLabel(a, b, forward, back);
      lines.push(s("line", { class: "topology-link", x1: p.x, y1: p.y, x2: q.x, y2: q.y }));
      const mid = { x: (p.x + q.x) / 2, y: (p.y + q.y) / 2 };
      labels.push(
        s(
          "g",
          { class: "topology-link-label", "data-link": `${a.node_id}|${b.node_id}` },
          s("title", {}, text.join("; ")),
          s("rect", { x: mid.x - 92, y: mid.y - 8 - 7 * text.length, width: 184, height: 14 * text.length + 6, rx: 6 }),
          text.map((line, k) =>
            s("text", { x: mid.x, y: mid.y - 7 * text.length + 14 * k + 2, "text-anchor": "middle" }, line),
          ),
        ),
      );
    }
  });

  const boxes = ordered.map((node) => {
    const { x, y } = where.get(node.node_id);
    const left = x - BOX_WIDTH / 2;
    const top = y - boxHeight / 2;
    const runs = stages.get(node.node_id);
    const shown = runs.slice(0, MAX_CHIPS);
    const rows = shown.map((run, k) =>
      s(
        "g",
        { class: "topology-stage", "data-instance": run.instance, "data-stage": run.stage },
        s("rect", {
          class: `chip stage-${run.stage % 6}${run.status === "failed" ? " chip-failed" : ""}`,
          x: left + 10,
          y: top + HEAD + k * CHIP,
          width: 10,
          height: 14,
          rx: 3,
        }),
        s(
          "text",
          { x: left + 26, y: top + HEAD + k * CHIP + 11, class: "topology-stage-text" },
          `${run.model} ${run.stage + 1}/${run.stages} · ${run.layers} · ${run.devices}`,
        ),
      ),
    );
    if (runs.length > shown.length) {
      rows.push(
        s("text", { x: left + 26, y: top + HEAD + shown.length * CHIP + 11, class: "muted" }, `+${runs.length - shown.length} more`),
      );
    }
    if (!runs.length) {
      rows.push(s("text", { x: left + 10, y: top + HEAD + 11, class: "muted" }, "no stages"));
    }
    const describe = runs.length
      ? runs.map((run) => `${run.model} stage ${run.stage + 1} of ${run.stages} (${run.layers}) on ${run.devices}`).join("; ")
      : "no stages";
    return s(
      "g",
      {
        class: `topology-node${node.node_id === view.coordinator ? " topology-coordinator" : ""}`,
        "data-node-id": node.node_id,
        role: "listitem",
        "aria-label": `${node.name}: ${deviceSummary(node)}; ${describe}`,
      },
      s("rect", { class: "topology-box", x: left, y: top, width: BOX_WIDTH, height: boxHeight, rx: 10 }),
      s("text", { class: "topology-name", x: left + 10, y: top + 20 }, node.name),
      s(
        "text",
        { class: "muted", x: left + 10, y: top + 38 },
        `${deviceSummary(node)}${node.node_id === view.coordinator ? " · coordinator" : ""}`,
      ),
      rows,
    );
  });

  return s(
    "svg",
    {
      class: "topology",
      viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`,
      width: Math.ceil(width),
      role: "list",
      "aria-label": "Cluster topology",
    },
    lines,
    labels,
    boxes,
  );
}

export class TopologyView {
  constructor(element) {
    this.element = element;
  }

  update(view) {
    // Readings that change every heartbeat (free memory, load) are not drawn: redraw on what is.
    const key = JSON.stringify([
      view.coordinator,
      view.nodes.map((n) => [n.node_id, n.name, n.devices.map((d) => [d.kind, d.memory_total])]),
      view.links.map((l) => [l.source, l.target, bitRate(l.bandwidth), duration(l.latency)]),
      (view.instances || []).map((i) => [i.instance_id, i.model, i.status, i.placement.stages]),
    ]);
    renderIfChanged(this.element, key, () => topologyPicture(view));
  }
}
