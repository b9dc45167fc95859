// Numbers for people: decimal units (as the rest of Tandem prints them), a few significant digits.

function scaled(value, units, step = 1000) {
  let index = 0;
  while (Math.abs(value) >= step && index < units.length - 1) {
    value /= step;
    index += 1;
  }
  const digits = Math.abs(value) >= 100 || index === 0 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${units[index]}`;
}

export function bytes(count) {
  if (count === null || count === undefined) return "?";
  return scaled(count, ["B", "kB", "MB", "GB", "TB", "PB"]);
}

/** Parameter counts: 5.77 M, 70.6 B. */
export function count(value) {
  if (value === null || value === undefined) return "?";
  return scaled(value, ["", "k", "M", "B", "T"]).trim();
}

export function byteRate(perSecond) {
  return `${bytes(perSecond)}/s`;
}

/** Network links are thought of in bits. */
export function bitRate(bytesPerSecond) {
  return `${scaled(bytesPerSecond * 8, ["bit", "kbit", "Mbit", "Gbit", "Tbit"])}/s`;
}

export function flops(perSecond) {
  return `${scaled(perSecond, ["FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP"])}/s`;
}

export function duration(seconds) {
  if (seconds < 1e-3) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1e3).toFixed(seconds < 0.01 ? 2 : 0)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function percent(fraction) {
  return `${Math.round(fraction * 100)} %`;
}

export function tokenRate(perSecond) {
  return `${perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toFixed(1)} tokens/s`;
}

/** Node and instance ids are long hex strings; eight characters tell them apart. */
export function shortId(id) {
  return String(id).slice(0, 8);
}

/** [start, end) as people count layers: "layers 0–4". */
export function layerSpan(start, end) {
  return end - start === 1 ? `layer ${start}` : `layers ${start}–${end - 1}`;
}

/** A model as people name it: a checkpoint directory by its folder name, anything else
 * (a catalog id, a repo id such as "Qwen/Qwen3-8B") as it is. */
export function modelLabel(name) {
  const text = String(name);
  if (!/^([/~.]|[A-Za-z]:\\)/.test(text)) return text;
  return text.split(/[/\\]/).filter(Boolean).pop() || text;
}
