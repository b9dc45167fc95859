// A placement drawn as one bar per node: where along the model's layers each stage sits.
// Used for previews (POST /v1/placements) and for running instances (their placement + runners).

import { h } from "./dom.js";
import { bytes, duration, layerSpan, tokenRate } from "./format.js";

/** A stage's predicted time per token: reading its weights, its tensor-parallel collectives, the hop on. */
function stageSeconds(stage) {
  return stage.compute_seconds + (stage.all_reduce_seconds ?? 0) + stage.send_seconds;
}

export function secondsPerToken(placement) {
  return placement.stages.reduce((total, stage) => total + stageSeconds(stage), 0);
}

/** The status of stage `index` from an instance's runners (a tensor-parallel stage has several). */
function stageStatus(runners, index) {
  if (!runners) return null;
  const mine = runners.filter((runner) => (runner.stage ?? runner.rank) === index);
  if (mine.length === 0) return null;
  if (mine.some((runner) => runner.status === "failed")) return { status: "failed" };
  return { status: mine.every((runner) => runner.status === "ready") ? "ready" : "starting" };
}

export function predictedTokensPerSecond(placement) {
  const seconds = secondsPerToken(placement);
  return seconds > 0 ? 1 / seconds : null;
}

/** The stages of `placement` grouped by node, in pipeline order of each node's first stage; a
 * tensor-parallel stage appears on every node that holds a member, with that node's devices. */
function stagesByNode(placement) {
  const groups = new Map();
  placement.stages.forEach((stage, rank) => {
    const devicesByNode = new Map();
    for (const [nodeId, device] of stage.members) {
      if (!devicesByNode.has(nodeId)) devicesByNode.set(nodeId, []);
      devicesByNode.get(nodeId).push(device);
    }
    const group = stage.members.length > 1 ? ` (tensor parallel over ${stage.members.length})` : "";
    for (const [nodeId, devices] of devicesByNode) {
      if (!groups.has(nodeId)) groups.set(nodeId, []);
      groups.get(nodeId).push({ ...stage, rank, device: devices.join("+") + group });
    }
  });
  return groups;
}

function segment(stage, numLayers, runner) {
  const { start, end } = stage.layers;
  const element = h(
    "span",
    {
      class: `segment stage-${stage.rank % 6}${runner ? ` runner-${runner.status}` : ""}`,
      title: `stage ${stage.rank}: ${stage.device}, ${layerSpan(start, end)}`,
    },
    h("span", { class: "segment-text", text: layerSpan(start, end) }),
  );
  element.style.left = `${(start / numLayers) * 100}%`;
  element.style.width = `${((end - start) / numLayers) * 100}%`;
  return element;
}

function stageDetail(stage, runner) {
  const parts = [
    stage.device,
    layerSpan(stage.layers.start, stage.layers.end),
    `${bytes(stage.weight_bytes)} weights`,
    `${bytes(stage.kv_bytes)} KV cache`,
    `${duration(stageSeconds(stage))} per token`,
  ];
  return h(
    "li",
    {},
    h("span", { text: parts.join(" · ") }),
    runner ? h("span", { class: `status status-${runner.status}`, text: runner.status }) : null,
  );
}

/**
 * Bars for a placement. `names` maps node ids to names; `runners` (an instance's) adds each
 * stage's status.
 */
export function placementBars(placement, names, runners = null) {
  const rows = [];
  for (const [nodeId, stages] of stagesByNode(placement)) {
    const name = names[nodeId] || nodeId;
    const spans = stages.map((stage) => layerSpan(stage.layers.start, stage.layers.end)).join(", ");
    rows.push(
      h(
        "li",
        {
          class: "placement-row",
          "aria-label": `${name}: ${spans} of ${placement.num_layers}`,
          "data-node-id": nodeId,
        },
        h("span", { class: "placement-node", text: name }),
        h(
          "span",
          { class: "track", "aria-hidden": "true" },
          stages.map((stage) => segment(stage, placement.num_layers, stageStatus(runners, stage.rank))),
        ),
        h(
          "ul",
          { class: "placement-details muted small" },
          stages.map((stage) => stageDetail(stage, stageStatus(runners, stage.rank))),
        ),
      ),
    );
  }
  return h("ol", { class: "placement", "aria-label": `placement of ${placement.model_name}` }, rows);
}

/** The headline of a placement: stages, backend, context and the predicted decode speed. */
export function placementSummary(placement) {
  const stages = placement.stages.length;
  const rate = predictedTokensPerSecond(placement);
  const request = placement.request;
  return [
    `${stages} ${stages === 1 ? "stage" : "stages"}`,
    `${placement.num_layers} layers`,
    `${request.context_length} tokens × ${request.num_sequences} sequences`,
    placement.weight_format ? `weights ${placement.weight_format}` : null,
    rate ? `predicted ${tokenRate(rate)}` : null,
  ]
    .filter(Boolean)
    .join(" · ");
}
