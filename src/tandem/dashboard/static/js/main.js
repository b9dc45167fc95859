// The dashboard page: follow the cluster state and hand each new state to every panel.

import { watchCluster } from "./api.js";
import { KeyPrompt } from "./auth.js";
import { ChatPanel } from "./chat.js";
import { ClusterView } from "./cluster.js";
import { ImagesPanel } from "./images.js";
import { InstancesPanel } from "./instances.js";
import { ModelsPanel } from "./models.js";
import { RefusalsView } from "./refusals.js";
import { TopologyView } from "./topology.js";

const byId = (id) => document.getElementById(id);

const cluster = new ClusterView({
  nodes: byId("nodes"),
  links: byId("links"),
  summary: byId("cluster-summary"),
  history: byId("history"),
});
const topology = new TopologyView(byId("topology"));
const refusals = new RefusalsView(byId("refusals"));
const models = new ModelsPanel({
  list: byId("model-list"),
  search: byId("model-search"),
  shown: byId("model-count"),
  form: byId("launch-form"),
  devices: byId("launch-devices"),
  preview: byId("preview"),
  status: byId("launch-status"),
  refresh: byId("refresh-models"),
  previewButton: byId("preview-button"),
  launchButton: byId("launch-button"),
});
const chat = new ChatPanel({
  instance: byId("chat-instance"),
  temperature: byId("chat-temperature"),
  maxTokens: byId("chat-max-tokens"),
  newChat: byId("chat-new"),
  transcript: byId("transcript"),
  form: byId("chat-form"),
  input: byId("chat-input"),
  send: byId("chat-send"),
  stop: byId("chat-stop"),
});
const instances = new InstancesPanel(
  { list: byId("instances"), status: byId("instances-status") },
  {
    onChat: (instanceId) => {
      chat.choose(instanceId);
      byId("chat").scrollIntoView({ block: "start" }); // smooth unless the reader asks for less motion
      byId("chat-input").focus({ preventScroll: true });
    },
  },
);

const keyPrompt = new KeyPrompt({
  panel: byId("key-panel"),
  form: byId("key-form"),
  input: byId("key-input"),
  remember: byId("key-remember"),
  message: byId("key-message"),
  forget: byId("key-forget"),
});
const images = new ImagesPanel(document.querySelector("main"));

const connection = byId("connection");
const CONNECTION_TEXT = { live: "live", reconnecting: "reconnecting…", key: "API key needed" };

function setConnection(status) {
  connection.dataset.status = status;
  connection.textContent = CONNECTION_TEXT[status];
  document.body.classList.toggle("stale", status !== "live");
  if (status === "live") keyPrompt.accepted();
}

watchCluster((view) => {
  setConnection("live");
  byId("node-title").textContent = view.nodes.find((node) => node.node_id === view.self)?.name ?? "";
  cluster.update(view);
  topology.update(view);
  refusals.update(view);
  models.update(view);
  instances.update(view);
  chat.update(view);
  images.update(view);
  document.body.dataset.stateVersion = String(view.version);
}, setConnection);
