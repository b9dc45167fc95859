// Running instances: status, placement across the nodes, stop, and a shortcut to chat with one.

import { stopInstance } from "./api.js";
import { h, renderIfChanged } from "./dom.js";
import { modelLabel, tokenRate } from "./format.js";
import { placementBars, predictedTokensPerSecond } from "./placement.js";

function instanceCard(instance, names, { onStop, onChat }) {
  const rate = predictedTokensPerSecond(instance.placement);
  const model = modelLabel(instance.model);
  const label = `${model} ${instance.instance_id}`;
  return h(
    "article",
    {
      class: `card instance instance-${instance.status}`,
      role: "listitem",
      "aria-label": `instance ${label}`,
      "data-instance-id": instance.instance_id,
    },
    h(
      "header",
      { class: "card-head" },
      h("h3", { class: "instance-model", text: model, title: instance.model }),
      h("span", { class: "muted small", text: instance.instance_id }),
      h("span", { class: `status status-${instance.status}`, text: instance.status }),
    ),
    h(
      "p",
      { class: "muted small" },
      [
        `${instance.runners.length} ${instance.runners.length === 1 ? "stage" : "stages"}`,
        `${instance.max_context} tokens × ${instance.num_slots} sequences`,
        rate ? `predicted ${tokenRate(rate)}` : null,
      ]
        .filter(Boolean)
        .join(" · "),
    ),
    instance.error ? h("p", { class: "error", text: instance.error }) : null,
    placementBars(instance.placement, names, instance.runners),
    h(
      "div",
      { class: "actions" },
      h("button", {
        type: "button",
        class: "primary",
        text: "Chat",
        disabled: instance.status !== "ready",
        "aria-label": `Chat with ${label}`,
        onclick: () => onChat(instance.instance_id),
      }),
      h("button", {
        type: "button",
        class: "danger",
        text: "Stop",
        "aria-label": `Stop ${label}`,
        onclick: (event) => onStop(instance, event.currentTarget),
      }),
    ),
  );
}

export class InstancesPanel {
  constructor({ list, status }, { onChat }) {
    this.list = list;
    this.status = status;
    this.onChat = onChat;
  }

  update(view) {
    const names = Object.fromEntries(view.nodes.map((node) => [node.node_id, node.name]));
    renderIfChanged(this.list, JSON.stringify([view.instances, names]), () =>
      view.instances.length
        ? view.instances.map((instance) =>
            instanceCard(instance, names, {
              onStop: (i, button) => this.stop(i, button),
              onChat: this.onChat,
            }),
          )
        : h("p", { class: "muted", text: "No instances. Choose a model above and launch it." }),
    );
  }

  async stop(instance, button) {
    button.disabled = true;
    this.status.textContent = `Stopping ${instance.instance_id}…`;
    try {
      await stopInstance(instance.instance_id);
      this.status.textContent = `Stopped ${modelLabel(instance.model)} ${instance.instance_id}.`;
    } catch (error) {
      button.disabled = false;
      this.status.textContent = `Could not stop ${instance.instance_id}: ${error.message}`;
    }
  }
}
