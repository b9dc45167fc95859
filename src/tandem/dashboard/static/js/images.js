// Images: a prompt box for a running image model (FLUX.1), step progress streamed while the
// image is made, and a gallery of the images of this visit. It posts to the node's OpenAI-style
// POST /v1/images/generations with "stream": true and reads its server-sent events.

import { generateImages, listModels } from "./api.js";
import { h } from "./dom.js";
import { duration, modelLabel } from "./format.js";

const IMAGE_ARCHITECTURE = /^flux/; // how the model list names an image model's architecture

function field(label, input) {
  return h("label", { class: "field" }, label, input);
}

export class ImagesPanel {
  constructor(container) {
    this.imageModels = new Set(); // model names whose architecture is an image model's
    this.modelsKey = "";
    this.controller = null;
    this.instance = h("select", { id: "image-instance" });
    this.prompt = h("textarea", {
      id: "image-prompt",
      rows: "2",
      placeholder: "Describe the image (Enter makes it, Shift+Enter for a new line)",
    });
    this.width = h("input", { type: "number", min: "16", max: "2048", step: "16", value: "1024" });
    this.height = h("input", { type: "number", min: "16", max: "2048", step: "16", value: "1024" });
    this.steps = h("input", { type: "number", min: "1", max: "100", step: "1", placeholder: "model's" });
    this.seed = h("input", { type: "number", min: "0", step: "1", placeholder: "random" });
    this.make = h("button", { type: "submit", class: "primary", text: "Make image" });
    this.stop = h("button", {
      type: "button",
      class: "danger",
      text: "Stop",
      "aria-label": "Stop the image",
      disabled: true,
    });
    this.progress = h("progress", { id: "image-progress", max: "1", value: "0", "aria-label": "Denoising progress" });
    this.status = h("p", { class: "form-status muted", role: "status", "aria-live": "polite" });
    this.gallery = h("div", { class: "gallery", role: "list", "aria-label": "Gallery" });
    const form = h(
      "form",
      { class: "image-form", "aria-labelledby": "images-title" },
      h(
        "div",
        { class: "image-settings" },
        field("Image model", this.instance),
        field("Width", this.width),
        field("Height", this.height),
        field("Steps", this.steps),
        field("Seed", this.seed),
      ),
      h("label", { for: "image-prompt", class: "visually-hidden", text: "Image prompt" }),
      this.prompt,
      h("div", { class: "composer-buttons" }, this.make, this.stop),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.generate();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    this.stop.addEventListener("click", () => this.controller?.abort());
    container.append(
      h(
        "section",
        { id: "images", class: "panel images", "aria-labelledby": "images-title" },
        h("div", { class: "section-head" }, h("h2", { id: "images-title", text: "Images" })),
        form,
        h("div", { class: "image-progress" }, this.progress, this.status),
        this.gallery,
      ),
    );
    this.refreshButtons();
  }

  /** Offer the ready instances of image models (the model list says which models those are). */
  async update(view) {
    const ready = view.instances.filter((instance) => instance.status === "ready");
    const models = [...new Set(ready.map((instance) => instance.model))].sort().join("\n");
    if (models !== this.modelsKey) {
      this.modelsKey = models;
      try {
        const listed = await listModels();
        this.imageModels = new Set(
          listed.filter((m) => IMAGE_ARCHITECTURE.test(m.architecture || "")).map((m) => m.name),
        );
      } catch {
        this.modelsKey = ""; // try again with the next state
      }
    }
    const images = ready.filter((instance) => this.imageModels.has(instance.model));
    const key = JSON.stringify(images.map((i) => [i.instance_id, i.model]));
    if (this.instance.dataset.renderKey === key) return;
    this.instance.dataset.renderKey = key;
    const chosen = this.instance.value;
    this.instance.replaceChildren(
      ...(images.length
        ? images.map((i) => h("option", { value: i.model, text: `${modelLabel(i.model)} · ${i.instance_id}` }))
        : [h("option", { value: "", text: "no image model running: launch one" })]),
    );
    if (images.some((i) => i.model === chosen)) this.instance.value = chosen;
    this.refreshButtons();
  }

  refreshButtons() {
    const busy = this.controller !== null;
    this.make.disabled = busy || !this.instance.value;
    this.stop.disabled = !busy;
  }

  body() {
    const body = {
      model: this.instance.value,
      prompt: this.prompt.value,
      size: `${this.width.value}x${this.height.value}`,
      response_format: "b64_json",
      stream: true,
    };
    if (this.steps.value) body.steps = Number(this.steps.value);
    if (this.seed.value) body.seed = Number(this.seed.value);
    return body;
  }

  async generate() {
    if (this.controller || !this.instance.value || !this.prompt.value.trim()) return;
    const controller = new AbortController();
    this.controller = controller;
    this.refreshButtons();
    const body = this.body();
    const started = performance.now();
    this.progress.value = 0;
    this.status.textContent = "starting…";
    try {
      for await (const event of generateImages(body, controller.signal)) {
        if (event.type === "image_generation.progress") {
          this.progress.max = event.steps;
          this.progress.value = event.step;
          this.status.textContent = `step ${event.step} of ${event.steps}`;
        } else if (event.type === "image_generation.completed") {
          this.addImage(event, body.prompt);
          this.status.textContent = `done in ${duration((performance.now() - started) / 1000)}`;
        } else if (event.type === "error") {
          throw new Error(event.error?.message || "the request failed");
        }
      }
    } catch (error) {
      this.status.textContent = controller.signal.aborted ? "stopped" : `error: ${error.message}`;
    } finally {
      this.controller = null;
      this.refreshButtons();
    }
  }

  addImage(event, prompt) {
    const caption = `${prompt} · ${event.size} · seed ${event.seed}`;
    const image = h("img", {
      src: `data:image/png;base64,${event.b64_json}`,
      alt: prompt,
      loading: "lazy",
    });
    const link = h("a", { href: image.src, download: `tandem-${event.seed}.png`, text: "Download" });
    this.gallery.prepend(
      h("figure", { class: "gallery-item", role: "listitem", "aria-label": caption }, image, h("figcaption", {}, caption, " ", link)),
    );
  }
}
