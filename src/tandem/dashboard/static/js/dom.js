// Build DOM nodes from data, never from HTML strings: text from the network stays text.

/**
 * h("button", {class: "primary", "aria-label": "Stop", onclick: stop}, "Stop")
 * Props: class, text, style (object), on<event> (function), DOM properties given non-string values
 * (checked: true, disabled: false, hidden: true), anything else as an attribute. null, undefined
 * and false props are skipped; children may be nodes, strings, arrays, or null (skipped).
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key === "style") Object.assign(element.style, value);
    else if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key in element && typeof value !== "string") element[key] = value;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child);
  }
}

/** A horizontal bar showing `fraction` (0..1) of something, with an accessible name and value. */
export function meter(label, fraction, valueText, { role = "meter", tone = "" } = {}) {
  const clamped = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
  const fill = h("span", { class: "bar-fill" });
  fill.style.width = `${(clamped * 100).toFixed(1)}%`;
  return h(
    "div",
    {
      class: `bar ${tone}`.trim(),
      role,
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": (clamped * 100).toFixed(0),
      "aria-valuetext": valueText,
    },
    fill,
  );
}

/** Replace `element`'s children only when `key` differs from the last render's, so focus and
 * hover survive updates that change nothing visible. */
export function renderIfChanged(element, key, build) {
  if (element.dataset.renderKey === key) return false;
  element.dataset.renderKey = key;
  element.replaceChildren(...[build()].flat());
  return true;
}
