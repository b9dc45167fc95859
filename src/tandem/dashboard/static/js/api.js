// The node's public routes, as the page uses them. Every call goes to the node that served the page.

export class ApiError extends Error {}

function errorMessage(data, response, text) {
  if (data && typeof data.error === "string") return data.error;
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
      headers: body === undefined ? {} : { "content-type": "application/json" },
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
  if (!response.ok) throw new ApiError(errorMessage(data, response, text));
  return data;
}

export const listModels = () => request("GET", "/v1/cluster/models").then((data) => data.models);
export const previewPlacement = (launch) => request("POST", "/v1/placements", launch);
export const launchInstance = (launch) => request("POST", "/v1/instances", launch);
export const stopInstance = (id) => request("DELETE", `/v1/instances/${encodeURIComponent(id)}`);

/**
 * Follow the cluster state over server-sent events. `onState(view)` gets each new state (the
 * JSON of GET /v1/cluster); `onConnection("live" | "reconnecting")` tells whether it is current.
 * The browser reconnects by itself after the node's suggested delay.
 */
export function watchCluster(onState, onConnection) {
  const source = new EventSource("/v1/events");
  source.addEventListener("state", (message) => onState(JSON.parse(message.data)));
  source.addEventListener("open", () => onConnection("live"));
  source.addEventListener("error", () => onConnection("reconnecting"));
  return source;
}

/**
 * Stream one request's events (JSON lines) from POST /v1/instances/{id}/generate. Aborting
 * `signal` closes the stream, which makes the node abort the request and free its slot.
 */
export async function* generate(instanceId, body, signal) {
  const response = await fetch(`/v1/instances/${encodeURIComponent(instanceId)}/generate`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) {
    const text = await response.text();
    let data = null;
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
    throw new ApiError(errorMessage(data, response, text));
  }
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
