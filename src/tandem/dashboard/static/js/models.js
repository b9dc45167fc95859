// The models panel: what this node can launch and whether it fits, a placement preview, launch.

import { launchInstance, listModels, previewPlacement } from "./api.js";
import { h, renderIfChanged } from "./dom.js";
import { bytes, count, modelLabel, tokenRate } from "./format.js";
import { placementBars, placementSummary } from "./placement.js";

function modelOption(model, checked) {
  const facts = [
    model.parameters ? `${count(model.parameters)} parameters` : null,
    model.file_bytes ? bytes(model.file_bytes) : null,
    model.layers ? `${model.layers} ${model.layers === 1 ? "layer" : "layers"}` : null,
    model.max_context ? `${model.max_context} context` : null,
    model.downloaded === false ? "downloaded on launch" : null,
  ].filter(Boolean);
  const speed = model.predicted_tokens_per_second;
  const fit = model.fits
    ? h("span", { class: "status status-ready", text: speed ? `fits · ~${tokenRate(speed)}` : "fits" })
    : h("span", { class: "status status-failed", text: "does not fit" });
  return h(
    "div",
    { class: "model", "data-model": model.name, "data-search": searchText(model) },
    h(
      "label",
      { class: "model-label" },
      h("input", { type: "radio", name: "model", value: model.name, checked }),
      h(
        "span",
        { class: "model-text" },
        h(
          "span",
          { class: "model-head" },
          h("strong", { class: "model-name", text: model.label }),
          h("span", { class: "badge", text: model.source }),
          fit,
        ),
        h("span", { class: "muted small", text: facts.join(" · ") }),
      ),
    ),
    // Why it does not fit, on demand: the planner's numbers are long.
    model.reason
      ? h(
          "details",
          { class: "model-why" },
          h("summary", { class: "small", text: model.fits ? "Notes" : "Why it does not fit" }),
          h("p", { class: "muted small model-reason", text: model.reason }),
        )
      : null,
  );
}

function searchText(model) {
  return [model.label, model.name, model.architecture, model.source].filter(Boolean).join(" ").toLowerCase();
}

/** Models that fit first (fastest first), then the rest by name; the server's order breaks ties. */
export function modelOrder(models) {
  return models
    .map((model, index) => ({ model, index }))
    .sort(
      (a, b) =>
        Number(b.model.fits) - Number(a.model.fits) ||
        (b.model.fits ? (b.model.predicted_tokens_per_second ?? 0) - (a.model.predicted_tokens_per_second ?? 0) : 0) ||
        (a.model.fits ? 0 : a.model.label.localeCompare(b.model.label)) ||
        a.index - b.index,
    )
    .map(({ model }) => model);
}

/** Whether a model matches the search: every word of `query` appears in its name, family or source. */
export function matches(text, query) {
  return query
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => text.includes(word));
}

function deviceOptions(view, checked) {
  return view.nodes.flatMap((node) =>
    node.devices.map((device) => {
      const torchDevice = device.kind === "cpu" ? "cpu" : `cuda:${device.index}`;
      const value = `${node.node_id}/${torchDevice}`;
      return h(
        "label",
        { class: "check" },
        h("input", { type: "checkbox", name: "devices", value, checked: checked.has(value) }),
        h("span", { text: `${node.name} · ${device.kind === "cpu" ? "CPU" : `GPU ${device.index}`}` }),
      );
    }),
  );
}

export class ModelsPanel {
  constructor(elements) {
    this.el = elements; // list, search, shown, form, devices, preview, status, refresh
    this.view = null;
    this.models = [];
    this.refreshKey = "";
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.launch();
    });
    this.el.previewButton.addEventListener("click", () => this.preview());
    this.el.refresh.addEventListener("click", () => this.refresh());
    this.el.search.addEventListener("input", () => this.filter());
    this.el.search.addEventListener("keydown", (event) => {
      if (event.key === "Enter") event.preventDefault(); // not a launch
    });
  }

  /** A new cluster state: refresh the device choices, and the fit of each model when the
   * nodes or the instances changed (what fits depends on both). */
  update(view) {
    this.view = view;
    const nodeOrder = [...view.nodes].sort((a, b) => a.name.localeCompare(b.name));
    const checked = new Set(this.selectedDevices());
    renderIfChanged(
      this.el.devices,
      JSON.stringify(nodeOrder.map((n) => [n.node_id, n.name, n.devices.map((d) => [d.kind, d.index])])),
      () => deviceOptions({ nodes: nodeOrder }, checked),
    );
    const key = JSON.stringify([
      view.nodes.map((n) => n.node_id).sort(),
      view.instances.map((i) => [i.instance_id, i.status]),
    ]);
    if (key !== this.refreshKey) {
      this.refreshKey = key;
      this.refresh();
    }
  }

  async refresh() {
    try {
      this.models = await listModels();
    } catch (error) {
      this.say(`Could not list models: ${error.message}`, "error");
      return;
    }
    const ordered = modelOrder(this.models);
    const chosen = this.selectedModel() ?? ordered.find((m) => m.fits)?.name ?? ordered[0]?.name;
    renderIfChanged(this.el.list, JSON.stringify([ordered, chosen]), () =>
      ordered.length
        ? ordered.map((model) => modelOption(model, model.name === chosen))
        : h("p", {
            class: "muted",
            text: "No models. Start the node with --models-dir DIR to offer checkpoints.",
          }),
    );
    this.filter();
  }

  /** Show the models the search matches (the chosen one stays chosen, even when hidden). */
  filter() {
    const query = this.el.search.value;
    const rows = [...this.el.list.querySelectorAll(".model")];
    let shown = 0;
    let fitting = 0;
    for (const row of rows) {
      row.hidden = !matches(row.dataset.search, query);
      if (!row.hidden) {
        shown += 1;
        if (row.querySelector(".status-ready")) fitting += 1;
      }
    }
    this.el.shown.textContent = rows.length
      ? `${query.trim() ? `${shown} of ${rows.length} shown` : `${rows.length} models`} · ${fitting} fit now`
      : "";
  }

  selectedModel() {
    return this.el.form.querySelector('input[name="model"]:checked')?.value ?? null;
  }

  selectedDevices() {
    return [...this.el.devices.querySelectorAll('input[name="devices"]:checked')].map((box) => box.value);
  }

  /** The launch request the form describes (the same body for preview and launch). */
  request() {
    const model = this.selectedModel();
    if (!model) throw new Error("choose a model first");
    const body = { model };
    const number = (name) => {
      const value = this.el.form.elements[name].value.trim();
      return value === "" ? undefined : Number(value);
    };
    for (const [field, name] of [
      ["context", "context"],
      ["sequences", "sequences"],
      ["min_stages", "min-stages"],
    ]) {
      const value = number(name);
      if (value !== undefined) body[field] = value;
    }
    const quantize = this.el.form.elements.quantize.value;
    if (quantize) body.quantize = quantize;
    const devices = this.selectedDevices();
    if (devices.length) body.devices = devices;
    return body;
  }

  names() {
    return Object.fromEntries((this.view?.nodes ?? []).map((node) => [node.node_id, node.name]));
  }

  async preview() {
    let body;
    try {
      body = this.request();
    } catch (error) {
      return this.say(error.message, "error");
    }
    this.say("Planning…");
    try {
      const answer = await previewPlacement(body);
      if (!answer.feasible) {
        this.el.preview.replaceChildren(h("p", { class: "error", text: `Does not fit: ${answer.reason}` }));
        return this.say("");
      }
      const placement = answer.placement;
      this.el.preview.replaceChildren(
        h("h3", { class: "preview-title", text: `Preview: ${placement.model_name}` }),
        h("p", { class: "preview-summary", text: placementSummary(placement) }),
        placementBars(placement, this.names()),
        placement.notes.length
          ? h(
              "ul",
              { class: "notes muted small" },
              placement.notes.map((note) => h("li", { text: note })),
            )
          : null,
      );
      this.say("");
    } catch (error) {
      this.say(error.message, "error");
    }
  }

  async launch() {
    let body;
    try {
      body = this.request();
    } catch (error) {
      return this.say(error.message, "error");
    }
    this.el.launchButton.disabled = true;
    this.say(`Launching ${body.model}…`);
    try {
      const instance = await launchInstance(body);
      this.say(
        `Launched ${modelLabel(instance.model)} as ${instance.instance_id}; it appears under Instances.`,
      );
    } catch (error) {
      this.say(`Could not launch: ${error.message}`, "error");
    } finally {
      this.el.launchButton.disabled = false;
    }
  }

  say(text, kind = "info") {
    this.el.status.textContent = text;
    this.el.status.className = `form-status ${kind === "error" ? "error" : "muted"}`;
  }
}
