// The trio-relay dashboard: one page, talking to the broker over the native control
// protocol at /control (the session cookie authenticates it). No build step.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const AGENT_KINDS = [
  "agent_spawned", "agent_ready", "agent_idle", "agent_activity", "agent_exited",
  "spawn_failed", "agent_restarting", "agent_gave_up", "worker_protocol_error",
  "delivery_queued", "delivery_injected", "delivery_verified", "delivery_unverified",
  "delivery_failed", "delivery_dropped", "delivery_requeued", "delivery_retrying",
  "dead_letter", "gap",
];
const TERMINAL_KINDS = ["agent_output", "agent_resized", "agent_exited", "gap"];
const $ = (selector) => document.querySelector(selector);

// ------------------------------------------------------------- the control connection

class Control {
  constructor(onEvents, onState) {
    this.nextId = 1;
    this.waiting = new Map();   // request id -> {resolve, reject}
    this.streams = new Map();   // subscription id -> events callback
    this.onEvents = onEvents;
    this.onState = onState;
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${scheme}://${location.host}/control`);
      this.ws = ws;
      ws.onopen = () => { this.onState(true); resolve(); };
      ws.onerror = () => reject(new Error("cannot reach the broker"));
      ws.onclose = (e) => {
        this.onState(false, e.reason);
        for (const { reject: fail } of this.waiting.values()) fail(new Error("connection closed"));
        this.waiting.clear();
        this.streams.clear();
      };
      ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    });
  }

  receive(message) {
    if (message.events !== undefined) {
      const stream = this.streams.get(message.id);
      if (stream) stream(message.events);
      return;
    }
    const pending = this.waiting.get(message.id);
    if (!pending) return;
    this.waiting.delete(message.id);
    if (message.ok) pending.resolve(message.result);
    else pending.reject(new Error(`${message.error.code}: ${message.error.message}`));
  }

  call(op, fields = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  // Events matching the filters go to `callback` (buffered until the answer is in).
  async subscribe(fields, callback) {
    const id = this.nextId++;
    this.streams.set(id, callback);
    const answer = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.ws.send(JSON.stringify({ id, op: "subscribe", ...fields }));
    await answer;
    return id;
  }

  async unsubscribe(id) {
    this.streams.delete(id);
    try { await this.call("unsubscribe", { subscription: id }); } catch (e) { /* gone already */ }
  }
}

// ------------------------------------------------------------- the agents

const agents = new Map();   // name -> AgentSummary
let selected = null;        // name of the agent shown
let control = null;
let refreshTimer = null;
const notified = new Set(); // "name:since" of attention already notified

function uptime(agent) {
  if (!agent.started_at || agent.state !== "running") return "";
  const s = Math.max(0, Math.floor(Date.now() / 1000 - agent.started_at));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function renderAgents() {
  const body = $("#agents tbody");
  body.replaceChildren();
  const names = [...agents.keys()].sort();
  $("#no-agents").hidden = names.length > 0;
  const attention = $("#attention");
  attention.replaceChildren();
  for (const name of names) {
    const a = agents.get(name);
    const row = document.createElement("tr");
    row.dataset.agent = name;
    row.className = [a.activity, a.state, name === selected ? "selected" : ""].join(" ");
    cell(row, name, "name");
    cell(row, a.state, "state");
    cell(row, a.activity + (a.waiting ? ` (waiting: ${a.waiting})` : ""), "activity");
    cell(row, a.pid ?? "", "pid");
    cell(row, uptime(a), "uptime");
    cell(row, String(a.pending_deliveries), "pending");
    row.onclick = () => select(name);
    body.appendChild(row);
    if (a.activity === "attention") {
      const item = document.createElement("div");
      item.className = "item";
      item.dataset.agent = name;
      item.textContent = `${name} needs you`;
      const text = document.createElement("pre");
      text.textContent = a.activity_text;
      item.appendChild(text);
      item.onclick = () => select(name);
      attention.appendChild(item);
      notify(a);
    }
  }
}

function notify(agent) {
  const key = `${agent.name}:${agent.activity_since}`;
  if (notified.has(key)) return;
  notified.add(key);
  if (window.Notification && Notification.permission === "granted") {
    new Notification(`${agent.name} needs you`, { body: agent.activity_text });
  }
}

async function refreshAgents() {
  const list = await control.call("agents");
  agents.clear();
  for (const a of list) agents.set(a.name, a);
  renderAgents();
  if (selected && agents.has(selected)) refreshDeliveries();
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refreshAgents().catch(showError); }, 100);
}

function onAgentEvents(events) {
  for (const e of events) {
    const a = agents.get(e.agent);
    if (e.kind === "agent_activity" && a) {
      a.activity = e.to; a.activity_text = e.text; a.activity_since = e.time;
    }
  }
  renderAgents();
  scheduleRefresh();  // state, pid and pending counts come from the broker's own list
}

// ------------------------------------------------------------- one agent's terminal

class AgentTerminal {
  constructor(name) {
    this.name = name;
    this.offset = 0;
    this.ready = false;
    this.backlog = [];
    this.subscription = null;
    this.term = new Terminal({ convertEol: false, scrollback: 0, disableStdin: true, fontSize: 14 });
    this.fit = new FitAddon.FitAddon();
    this.term.loadAddon(this.fit);
    const box = $("#terminal");
    box.replaceChildren();
    this.term.open(box);
    this.term.onData((data) => {
      if ($("#drive").checked) control.call("input", { name: this.name, data }).catch(showError);
    });
  }

  async start() {
    this.subscription = await control.subscribe(
      { agent: this.name, kinds: TERMINAL_KINDS },
      (events) => this.onEvents(events),
    );
    await this.repaint();
  }

  // A fresh ANSI snapshot, then the output past its offset: never garbled after a gap.
  async repaint() {
    this.ready = false;
    const snap = await control.call("snapshot", { name: this.name, ansi: true });
    this.term.resize(snap.cols, snap.rows);
    $("#agent-size").textContent = `${snap.rows}x${snap.cols}`;
    this.term.reset();
    const [row, col] = snap.cursor;
    this.term.write(`\x1b[0m\x1b[H\x1b[2J${snap.text.split("\n").join("\r\n")}\x1b[${row + 1};${col + 1}H`);
    this.offset = snap.offset ?? 0;
    this.ready = true;
    const backlog = this.backlog;
    this.backlog = [];
    this.onEvents(backlog);
  }

  onEvents(events) {
    if (!this.ready) { this.backlog.push(...events); return; }
    for (const e of events) {
      if (e.kind === "agent_output") {
        const bytes = new TextEncoder().encode(e.data);
        const end = e.offset + bytes.length;
        if (end > this.offset) {
          this.term.write(bytes.subarray(Math.max(0, this.offset - e.offset)));
          this.offset = end;
        }
      } else if (e.kind === "gap" || e.kind === "agent_resized") {
        this.repaint().catch(showError);
        return;  // what followed is in the new snapshot or comes after it
      } else if (e.kind === "agent_exited") {
        $("#terminal-state").textContent = `exited: ${e.reason}`;
      }
    }
  }

  async close() {
    if (this.subscription !== null) await control.unsubscribe(this.subscription);
    this.term.dispose();
  }
}

let terminal = null;

async function select(name) {
  if (selected === name) return;
  selected = name;
  renderAgents();
  $("#agent").hidden = false;
  $("#agent-name").textContent = name;
  $("#terminal-state").textContent = "";
  if (terminal) await terminal.close();
  terminal = new AgentTerminal(name);
  setDrive($("#drive").checked);
  try {
    await terminal.start();
  } catch (e) {
    $("#terminal-state").textContent = String(e.message);
  }
  refreshDeliveries();
}

function setDrive(on) {
  $("#terminal").classList.toggle("driving", on);
  if (terminal) {
    terminal.term.options.disableStdin = !on;
    if (on) terminal.term.focus();
  }
}

// ------------------------------------------------------------- deliveries

async function refreshDeliveries() {
  const name = selected;
  const [deliveries, dead] = await Promise.all([
    control.call("deliveries", { agent: name, limit: 20 }),
    control.call("dead_letters", { agent: name, limit: 20 }),
  ]);
  if (name !== selected) return;
  const body = $("#deliveries tbody");
  body.replaceChildren();
  for (const d of deliveries.reverse()) {
    const row = document.createElement("tr");
    row.dataset.delivery = d.delivery_id;
    cell(row, d.delivery_id, "id");
    cell(row, d.sender, "from");
    cell(row, d.state + (d.waiting ? ` (waiting: ${d.waiting})` : ""), `state state-${d.state}`);
    cell(row, d.verification ?? "", `verification state-${d.verification}`);
    cell(row, d.body, "body").title = d.body;
    body.appendChild(row);
  }
  const deadBody = $("#dead-letters tbody");
  deadBody.replaceChildren();
  for (const d of dead) {
    const row = document.createElement("tr");
    row.dataset.delivery = d.delivery_id;
    cell(row, d.delivery_id, "id");
    cell(row, d.sender, "from");
    cell(row, d.last_error ?? "", "error");
    cell(row, d.body, "body").title = d.body;
    const button = document.createElement("button");
    button.textContent = "Redeliver";
    button.onclick = () => control.call("redeliver", { delivery_id: d.delivery_id })
      .then(refreshDeliveries).catch(showError);
    row.appendChild(document.createElement("td")).appendChild(button);
    deadBody.appendChild(row);
  }
}

async function send(event) {
  event.preventDefault();
  const body = $("#send-body").value;
  if (!body || !selected) return;
  await control.call("send", { to: selected, body, from: "dashboard" });
  $("#send-body").value = "";
  await refreshDeliveries();
}

// ------------------------------------------------------------- the page

function showError(e) {
  $("#connection").textContent = String(e.message || e);
}

async function start() {
  control = new Control(() => {}, (up, reason) => {
    const el = $("#connection");
    el.className = `connection ${up ? "up" : "down"}`;
    el.textContent = up ? "connected" : `disconnected${reason ? `: ${reason}` : ""} (reload to reconnect)`;
  });
  await control.open();
  await control.subscribe({ kinds: AGENT_KINDS }, onAgentEvents);
  await refreshAgents();
  setInterval(renderAgents, 1000);  // uptime
}

$("#drive").onchange = (e) => setDrive(e.target.checked);
$("#send").onsubmit = (e) => send(e).catch(showError);
$("#fit").onclick = () => {
  if (!terminal) return;
  const size = terminal.fit.proposeDimensions();
  if (size) control.call("resize", { name: terminal.name, rows: size.rows, cols: size.cols }).catch(showError);
};
$("#logout").onclick = async () => {
  await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": CSRF } });
  location.reload();
};
if (window.Notification && Notification.permission === "default") {
  $("#notify").hidden = false;
  $("#notify").onclick = () => Notification.requestPermission().then(() => { $("#notify").hidden = true; });
}
start().catch(showError);
