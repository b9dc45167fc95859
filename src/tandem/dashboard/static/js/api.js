// The node's public routes, as the page uses them. Every call goes to the node that served the page,
// with the API key when one is kept (auth.js); a 401 hands the prompt its turn.

import { authHeaders, keyRefused, onKeyChange } from "./auth.js";

export class ApiError extends Error {}

const RECONNECT_MILLISECONDS = 2000;

function errorMessage(data, response, text) {
  if (data && typeof data.error === "string") return data.error;
  if (data && typeof data.error?.message === "string") return data.error.message; // OpenAI's shape
  if (data && typeof data.detail === "string") return data.detail;
  if (data && Array.isArray(data.detail)) {
    // FastAPI's validation errors: [{loc: ["body", "context"], msg: "..."}]
    return data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
}

async function request(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: { ...authHeaders(), ...(body === undefined ? {} : { "content-type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(`the node did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401) keyRefused(errorMessage(data, response, text));
  if (!response.ok) throw new ApiError(errorMessage(data, response, text));
  return data;
}

export const listModels = () => request("GET", "/v1/cluster/models").then((data) => data.models);
export const previewPlacement = (launch) => request("POST", "/v1/placements", launch);
export const launchInstance = (launch) => request("POST", "/v1/instances", launch);
export const stopInstance = (id) => request("DELETE", `/v1/instances/${encodeURIComponent(id)}`);

/**
 * Follow the cluster state over server-sent events. `onState(view)` gets each new state (the
 * JSON of GET /v1/cluster); `onConnection("live" | "reconnecting" | "key")` tells whether it is
 * current ("key": the node wants an API key; the stream resumes once one is given). Read with
 * fetch rather than EventSource, which cannot send the key; reconnects every two seconds.
 */
export function watchCluster(onState, onConnection) {
  let waiting = null; // resolves when a key is given after a 401
  onKeyChange((event) => event.kind === "given" && waiting?.());
  const follow = async () => {
    for (;;) {
      try {
        const response = await fetch("/v1/events", { headers: authHeaders(), cache: "no-store" });
        if (response.status === 401) {
          const text = await response.text();
          onConnection("key");
          const given = new Promise((resolve) => (waiting = resolve));
          keyRefused(text);
          await given;
          continue;
        }
        if (!response.ok) throw new ApiError(`${response.status} ${response.statusText}`);
        onConnection("live");
        for await (const message of serverEvents(response.body)) {
          if (message.event === "state") onState(JSON.parse(message.data));
        }
      } catch {
        // the node went away (or the stream broke): say so below and try again
      }
      onConnection("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MILLISECONDS));
    }
  };
  follow();
}

/**
 * Stream an image request's events (server-sent JSON: progress, completed, error) from POST
 * /v1/images/generations; `body` asks for `"stream": true`. Aborting `signal` stops it.
 */
export async function* generateImages(body, signal) {
  const response = await fetch("/v1/images/generations", {
    method: "POST",
    headers: { ...authHeaders(), "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await refusal(response);
  for await (const message of serverEvents(response.body)) yield JSON.parse(message.data);
}

/** The error of a refused streaming request (a 401 hands the key prompt its turn). */
async function refusal(response) {
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = null;
  }
  if (response.status === 401) keyRefused(errorMessage(data, response, text));
  return new ApiError(errorMessage(data, response, text));
}

/** Server-sent event messages ({event, data}) from a response body, comments skipped. */
async function* serverEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const message = { event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") message.event = value;
        else if (field === "data") message.data.push(value);
      }
      if (message.data.length) yield { event: message.event, data: message.data.join("\n") };
    }
  }
}

/**
 * Stream one request's events (JSON lines) from POST /v1/instances/{id}/generate. Aborting
 * `signal` closes the stream, which makes the node abort the request and free its slot.
 */
export async function* generate(instanceId, body, signal) {
  const response = await fetch(`/v1/instances/${encodeURIComponent(instanceId)}/generate`, {
    method: "POST",
    headers: { ...authHeaders(), "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await refusal(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += value;
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
  }
  if (pending.trim()) yield JSON.parse(pending);
}
