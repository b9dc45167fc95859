// Chat with a running instance: streamed answers rendered as Markdown, with time to first token
// and decode speed under each answer, and a Stop button that aborts the request.

import { ApiError, generate } from "./api.js";
import { h } from "./dom.js";
import { duration, modelLabel, tokenRate } from "./format.js";
import { renderMarkdown } from "./markdown.js";

const FINISH_TEXT = {
  stop: "finished",
  length: "reached the token limit",
  abort: "stopped",
  stopped: "stopped",
};

/** "first token 52 ms · 40 tokens · 512 tokens/s": decode speed counts the tokens after the
 * first over the time after it, so it measures decoding alone (prefill is in the first). */
export function answerStats({ started, first, last, tokens, promptTokens, finish }) {
  const parts = [];
  if (first !== null) parts.push(`first token ${duration((first - started) / 1000)}`);
  parts.push(`${tokens} ${tokens === 1 ? "token" : "tokens"}`);
  if (tokens > 1 && last > first) parts.push(tokenRate((tokens - 1) / ((last - first) / 1000)));
  if (promptTokens !== null) parts.push(`prompt ${promptTokens} tokens`);
  if (finish) parts.push(FINISH_TEXT[finish] || finish);
  return parts.join(" · ");
}

export class ChatPanel {
  constructor(el) {
    this.el = el; // instance, temperature, maxTokens, newChat, transcript, form, input, send, stop, notice
    this.messages = [];
    this.controller = null;
    this.instanceId = "";
    el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    el.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        el.form.requestSubmit();
      }
    });
    el.stop.addEventListener("click", () => this.controller?.abort());
    el.newChat.addEventListener("click", () => this.reset());
    el.instance.addEventListener("change", () => this.choose(el.instance.value));
  }

  /** Offer the ready instances; keep the chosen one while it lives. */
  update(view) {
    const ready = view.instances.filter((instance) => instance.status === "ready");
    const key = JSON.stringify(ready.map((i) => [i.instance_id, i.model]));
    if (this.el.instance.dataset.renderKey !== key) {
      this.el.instance.dataset.renderKey = key;
      this.el.instance.replaceChildren(
        ...(ready.length
          ? ready.map((i) =>
              h("option", { value: i.instance_id, text: `${modelLabel(i.model)} · ${i.instance_id}` }),
            )
          : [h("option", { value: "", text: "no running instance: launch one" })]),
      );
      const keep = ready.some((i) => i.instance_id === this.instanceId);
      this.el.instance.value = keep ? this.instanceId : (ready[0]?.instance_id ?? "");
      if (!keep) this.choose(this.el.instance.value);
    }
    this.el.instance.disabled = ready.length === 0;
    this.syncButtons();
  }

  /** Chat with `instanceId` from a fresh conversation (a conversation belongs to one model). */
  choose(instanceId) {
    if (instanceId === this.instanceId) return;
    this.instanceId = instanceId;
    this.el.instance.value = instanceId;
    this.reset();
  }

  reset() {
    this.controller?.abort();
    this.messages = [];
    this.el.transcript.replaceChildren();
    this.syncButtons();
  }

  syncButtons() {
    const streaming = this.controller !== null;
    this.el.send.disabled = streaming || !this.instanceId;
    this.el.stop.disabled = !streaming;
  }

  params() {
    const params = {};
    const temperature = this.el.temperature.value.trim();
    const maxTokens = this.el.maxTokens.value.trim();
    if (temperature !== "") params.temperature = Number(temperature);
    if (maxTokens !== "") params.max_tokens = Number(maxTokens);
    return params;
  }

  async send() {
    const text = this.el.input.value.trim();
    if (!text || this.controller || !this.instanceId) return;
    this.el.input.value = "";
    this.messages.push({ role: "user", content: text });
    this.append(
      h(
        "article",
        { class: "message message-user", "aria-label": "You" },
        h("div", { class: "message-body", text }),
      ),
    );
    const answer = this.startAnswer();
    const controller = new AbortController();
    this.controller = controller;
    this.syncButtons();
    const run = {
      started: performance.now(),
      first: null,
      last: null,
      tokens: 0,
      promptTokens: null,
      finish: null,
    };
    let content = "";
    let error = null;
    try {
      const body = { messages: this.messages, params: this.params() };
      for await (const event of generate(this.instanceId, body, controller.signal)) {
        if (event.type === "accepted") run.promptTokens = event.prompt_tokens;
        else if (event.type === "token") {
          run.last = performance.now();
          run.first ??= run.last;
          run.tokens += 1;
          content += event.text ?? "";
          if (event.finish_reason) run.finish = event.finish_reason;
          answer.show(content, run);
        } else if (event.type === "finished") run.finish = event.finish_reason;
        else if (event.type === "rejected" || event.type === "error") throw new ApiError(event.message);
      }
    } catch (caught) {
      if (caught.name === "AbortError") run.finish = "stopped";
      else error = caught;
    } finally {
      this.controller = null;
      this.syncButtons();
    }
    answer.finish(content, run, error);
    // A failed answer leaves the question in the transcript but not in what the model sees next.
    if (error) this.messages.pop();
    else this.messages.push({ role: "assistant", content });
    if (document.activeElement === this.el.stop || document.activeElement === document.body)
      this.el.input.focus();
  }

  /** A new answer bubble; `show` re-renders it at most once per frame while tokens stream in. */
  startAnswer() {
    const body = h("div", { class: "message-body markdown" });
    const stats = h("p", { class: "message-stats muted small", text: "waiting for the first token…" });
    const element = h(
      "article",
      { class: "message message-assistant streaming", "aria-label": "Answer", "aria-busy": "true" },
      body,
      stats,
    );
    this.append(element);
    let pending = null;
    let latest = null;
    const paint = (content, run) => {
      body.innerHTML = renderMarkdown(content); // safe: see markdown.js
      body.dataset.markdown = content; // the exact text, for copying and for tests
      stats.textContent = answerStats(run);
      this.scrollToEnd();
    };
    return {
      show: (content, run) => {
        latest = [content, run];
        if (pending === null) {
          pending = requestAnimationFrame(() => {
            pending = null;
            paint(...latest);
          });
        }
      },
      finish: (content, run, error) => {
        if (pending !== null) cancelAnimationFrame(pending);
        paint(content, run);
        element.classList.remove("streaming");
        element.setAttribute("aria-busy", "false");
        if (error) element.append(h("p", { class: "error", role: "alert", text: error.message }));
      },
    };
  }

  append(element) {
    this.el.transcript.append(element);
    this.scrollToEnd(true);
  }

  scrollToEnd(force = false) {
    const box = this.el.transcript;
    const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    if (force || nearEnd) box.scrollTop = box.scrollHeight;
  }
}
