// Peers that refused this node (another cluster secret, most likely): said plainly at the top of
// the cluster view, since the node otherwise runs on alone as if nobody were there.

import { h, renderIfChanged } from "./dom.js";

export function refusalNotice(refused) {
  if (!refused.length) return [];
  return h(
    "div",
    { class: "refusals", role: "alert" },
    h("strong", {
      text:
        refused.length === 1
          ? "A peer refused this node: it holds another cluster secret."
          : `${refused.length} peers refused this node: they hold another cluster secret.`,
    }),
    h(
      "ul",
      {},
      refused.map((entry) => h("li", { class: "small", "data-address": entry.address, text: entry.message })),
    ),
    h("p", {
      class: "small",
      text: "Give every node of the cluster the same secret (TANDEM_SECRET, or the secret file in its data directory; see docs/security.md), then restart this node.",
    }),
  );
}

export class RefusalsView {
  constructor(element) {
    this.element = element;
  }

  update(view) {
    const refused = view.refused_by || [];
    renderIfChanged(this.element, JSON.stringify(refused), () => refusalNotice(refused));
  }
}
