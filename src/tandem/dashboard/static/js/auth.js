// The API key, when the node has one: asked for once, kept in the browser (localStorage when
// "remember" is ticked, else sessionStorage for this tab), and sent as a bearer header on every
// call. A node refuses a missing or wrong key with 401; the page then asks (again) and says which.

const STORAGE_KEY = "tandem-api-key";
const listeners = new Set();

export function storedKey() {
  return sessionStorage.getItem(STORAGE_KEY) ?? localStorage.getItem(STORAGE_KEY);
}

/** Headers that carry the key, if one is kept. */
export function authHeaders() {
  const key = storedKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

export function keepKey(key, remember) {
  forgetKey();
  (remember ? localStorage : sessionStorage).setItem(STORAGE_KEY, key);
  for (const listener of listeners) listener({ kind: "given" });
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
  localStorage.removeItem(STORAGE_KEY);
}

/** A call was refused with 401: tell the prompt whether a key was sent (so it was wrong). */
export function keyRefused(message) {
  const event = { kind: storedKey() ? "wrong" : "missing", message };
  for (const listener of listeners) listener(event);
}

/** `listener({kind: "missing" | "wrong" | "given", message})`; returns a function that unsubscribes. */
export function onKeyChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/**
 * The key prompt: a form shown while the node wants a key, hidden once one works. `elements`:
 * panel (shown or hidden), form, input, remember (checkbox), message; forget (a button kept
 * outside the panel, shown while a key is in use: it drops the key and reloads the page).
 */
export class KeyPrompt {
  constructor(elements) {
    this.el = elements;
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = this.el.input.value.trim();
      if (!key) return this.say("Enter the key the node was started with (--api-key or TANDEM_API_KEY).", "error");
      this.el.input.value = "";
      this.say("Checking the key…");
      keepKey(key, this.el.remember.checked);
    });
    this.el.forget.addEventListener("click", () => {
      forgetKey();
      location.reload();
    });
    onKeyChange((event) => this.refused(event));
  }

  refused({ kind }) {
    if (kind === "given") return;
    this.el.forget.hidden = true;
    const wasHidden = this.el.panel.hidden;
    this.el.panel.hidden = false;
    this.say(
      kind === "wrong"
        ? "That key is not valid for this node. Enter the key it was started with."
        : "This node requires an API key. Enter the key it was started with (--api-key or TANDEM_API_KEY).",
      kind === "wrong" ? "error" : "info",
    );
    if (wasHidden) this.el.input.focus();
  }

  /** The node accepted the page's calls: put the prompt away. */
  accepted() {
    this.el.panel.hidden = true;
    this.el.forget.hidden = storedKey() === null;
  }

  say(text, kind = "info") {
    this.el.message.textContent = text;
    this.el.message.className = `form-status ${kind === "error" ? "error" : "muted"}`;
  }
}
