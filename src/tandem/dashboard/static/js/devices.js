// One node's devices (memory, utilization, power) and its model downloads, as card sections.

import { h, meter } from "./dom.js";
import { byteRate, bytes, duration, flops, percent } from "./format.js";

function deviceTitle(device) {
  const names = { cpu: "CPU", metal: "Metal GPU" };
  const title = names[device.kind] || `GPU ${device.index}`;
  return device.engine === "mlx" ? `${title} (MLX)` : title;
}

/** A fraction's tone: calm, then busy, then nearly full. */
function tone(fraction) {
  return fraction >= 0.9 ? "bad" : fraction >= 0.7 ? "warn" : "";
}

export function deviceRow(device, nodeName) {
  const used = device.memory_total - device.memory_free;
  const usedFraction = device.memory_total > 0 ? used / device.memory_total : 0;
  const title = deviceTitle(device);
  const memoryText = `${bytes(used)} of ${bytes(device.memory_total)} used`;
  const rows = [
    h(
      "div",
      { class: "metric" },
      h("span", { class: "metric-name", text: device.kind === "cpu" ? "RAM" : "Memory" }),
      meter(`${nodeName} ${title} memory`, usedFraction, memoryText, { tone: tone(usedFraction) }),
      h("span", { class: "metric-value", text: `${bytes(used)} / ${bytes(device.memory_total)}` }),
    ),
  ];
  if (device.utilization !== null && device.utilization !== undefined) {
    rows.push(
      h(
        "div",
        { class: "metric" },
        h("span", { class: "metric-name", text: "Load" }),
        meter(`${nodeName} ${title} utilization`, device.utilization, percent(device.utilization), {
          tone: "accent",
        }),
        h("span", { class: "metric-value", text: percent(device.utilization) }),
      ),
    );
  }
  if (device.power_draw !== null && device.power_draw !== undefined) {
    const limit = device.power_limit || null;
    const text = limit
      ? `${device.power_draw.toFixed(0)} / ${limit.toFixed(0)} W`
      : `${device.power_draw.toFixed(0)} W`;
    rows.push(
      h(
        "div",
        { class: "metric" },
        h("span", { class: "metric-name", text: "Power" }),
        meter(`${nodeName} ${title} power draw`, limit ? device.power_draw / limit : 0, text, {
          tone: limit ? tone(device.power_draw / limit) : "",
        }),
        h("span", { class: "metric-value", text }),
      ),
    );
  }
  return h(
    "li",
    { class: "device", "data-device": device.kind === "cpu" ? "cpu" : `cuda:${device.index}` },
    h(
      "div",
      { class: "device-head" },
      h("span", { class: `chip chip-${device.kind}`, text: title }),
      h("span", { class: "device-name", text: device.name, title: device.name }),
    ),
    rows,
    h("p", {
      class: "device-measured muted",
      text: `measured ${byteRate(device.memory_bandwidth)} memory, ${flops(device.matmul_flops)}`,
    }),
  );
}

export function devicesList(node) {
  return h(
    "ul",
    { class: "devices", "aria-label": `${node.name} devices` },
    node.devices.map((device) => deviceRow(device, node.name)),
  );
}

function downloadText(download) {
  const done = bytes(download.done_bytes);
  if (download.status === "failed") return `failed${download.message ? `: ${download.message}` : ""}`;
  if (download.status === "done") return `done, ${done}`;
  if (download.status === "verifying") return `verifying ${done}`;
  const parts = [download.total_bytes ? `${done} of ${bytes(download.total_bytes)}` : done];
  if (download.bytes_per_second) {
    parts.push(byteRate(download.bytes_per_second));
    if (download.total_bytes && download.bytes_per_second > 0) {
      const left = (download.total_bytes - download.done_bytes) / download.bytes_per_second;
      parts.push(`${duration(Math.max(0, left))} left`);
    }
  }
  return parts.join(" · ");
}

/** Downloads the node reports (`NodeInfo.downloads`); null when there are none. */
export function downloadsList(node) {
  const downloads = node.downloads || [];
  if (downloads.length === 0) return null;
  return h(
    "section",
    { class: "downloads", "aria-label": `${node.name} downloads` },
    h("h4", { text: "Downloads" }),
    h(
      "ul",
      {},
      downloads.map((download) => {
        const fraction = download.total_bytes ? download.done_bytes / download.total_bytes : 0;
        const text = downloadText(download);
        return h(
          "li",
          { class: `download download-${download.status}` },
          h(
            "div",
            { class: "download-head" },
            h("span", { class: "download-model", text: download.model }),
            h("span", { class: "muted", text }),
          ),
          meter(
            `download of ${download.model} to ${node.name}`,
            download.status === "done" ? 1 : fraction,
            text,
            {
              role: "progressbar",
              tone: download.status === "failed" ? "bad" : "accent",
            },
          ),
          download.message && download.status !== "failed"
            ? h("p", { class: "muted small", text: download.message })
            : null,
        );
      }),
    ),
  );
}
