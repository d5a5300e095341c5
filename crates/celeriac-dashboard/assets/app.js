// celeriac dashboard: fills the page from /api and follows /api/live.
// Text from workers and tasks is only ever set as textContent.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const STATES = ["PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "REJECTED"];
  const $ = (s) => document.querySelector(s);
  const dash = (window.dashboard = { samples: 0, selected: null });

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    return tr;
  }
  function td(child) { const t = el("td"); if (child) t.appendChild(child); return t; }
  function when(t) {
    if (t === null || t === undefined) return "";
    return new Date(t * 1000).toLocaleTimeString();
  }
  function ago(t) {
    if (!t) return "";
    return Math.max(0, Math.round(Date.now() / 1000 - t)) + "s ago";
  }
  function toast(text) {
    const t = $("#toast");
    t.textContent = text;
    t.style.display = "block";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.style.display = "none"), 4000);
  }

  async function get(path) {
    const r = await fetch(path, { credentials: "same-origin" });
    if (r.status === 401) { location.reload(); throw new Error("unauthorized"); }
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }
  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || r.status);
    return data;
  }
  async function act(label, path, body) {
    try {
      await post(path, body);
      toast(label + ": done");
    } catch (e) {
      toast(label + ": " + e.message);
    }
    refresh();
  }

  // Counts per state and memory.
  function totals(t) {
    const box = $("#counts");
    box.replaceChildren();
    for (const s of STATES) {
      const c = el("span", s, "count " + s);
      c.id = "count-" + s;
      c.appendChild(el("b", t.counts[s] || 0));
      box.appendChild(c);
    }
    $("#memory").textContent = "keeping the last " + t.max_tasks + " tasks (" + t.remembered + " now), " + t.events + " events";
  }

  // Charts.
  const rateData = [[], [], [], []];
  const rtData = [[], [], [], []];
  function chart(target, series, data) {
    const width = Math.max(300, target.parentElement.clientWidth - 20);
    return new uPlot({ width: width, height: 200, series: [{}].concat(series), axes: [{}, { size: 50 }] }, data, target);
  }
  dash.rate = chart($("#chart-rate"), [
    { label: "tasks/s", stroke: "#0969da", width: 2 },
    { label: "succeeded", stroke: "#1a7f37" },
    { label: "failed", stroke: "#b00020" },
  ], rateData);
  dash.runtime = chart($("#chart-runtime"), [
    { label: "p50", stroke: "#1a7f37" },
    { label: "p95", stroke: "#9a6700" },
    { label: "p99", stroke: "#b00020" },
  ], rtData);
  const ms = (v) => (v === null || v === undefined ? null : v * 1000);
  function addSample(s) {
    rateData[0].push(s.t); rateData[1].push(s.finished); rateData[2].push(s.succeeded); rateData[3].push(s.failed);
    rtData[0].push(s.t); rtData[1].push(ms(s.p50)); rtData[2].push(ms(s.p95)); rtData[3].push(ms(s.p99));
    for (const d of [rateData, rtData]) if (d[0].length > 600) for (const a of d) a.shift();
    dash.samples++;
  }
  function redraw() { dash.rate.setData(rateData); dash.runtime.setData(rtData); }

  // Workers.
  function workers(list) {
    $("#workers-count").textContent = "(" + list.length + ")";
    const body = $("#workers tbody");
    body.replaceChildren();
    for (const w of list) {
      const grow = el("button", "+", "pool-grow");
      grow.title = "grow the pool by one";
      grow.onclick = () => act("pool grow", "/api/workers/" + encodeURIComponent(w.hostname) + "/pool", { grow: 1 });
      const shrink = el("button", "−", "pool-shrink");
      shrink.title = "shrink the pool by one";
      shrink.onclick = () => act("pool shrink", "/api/workers/" + encodeURIComponent(w.hostname) + "/pool", { shrink: 1 });
      const btns = el("td"); btns.append(shrink, " ", grow);
      const tr = row([
        w.hostname,
        el("td", w.online ? "online" : "offline", "status " + (w.online ? "online" : "offline")),
        w.software || "", w.pool || "", w.concurrency ?? "", w.active ?? "", w.processed ?? "",
        w.loadavg || "", ago(w.last_heartbeat), (w.queues || []).join(", "), btns,
      ]);
      tr.dataset.node = w.hostname;
      body.appendChild(tr);
    }
  }

  // Queues.
  function queues(list) {
    const body = $("#queues tbody");
    body.replaceChildren();
    for (const q of list) {
      const levels = (q.priorities || []).map((l) => l.priority + ": " + l.depth).join(", ");
      const tr = row([q.name, q.depth, levels, q.consumers.join(", ")]);
      tr.dataset.queue = q.name;
      body.appendChild(tr);
    }
  }

  // Tasks.
  const stateSelect = $("#filter-state");
  for (const s of STATES) stateSelect.appendChild(el("option", s));
  stateSelect.onchange = () => refreshTasks();
  $("#filter-name").oninput = () => refreshTasks();
  $("#task-filter").onsubmit = (e) => e.preventDefault();
  function tasks(list) {
    const body = $("#tasks tbody");
    body.replaceChildren();
    for (const t of list) {
      const tr = row([
        t.id, t.name, el("td", t.state, "state " + t.state), t.worker, when(t.received),
        t.runtime === null ? "" : t.runtime.toFixed(4) + "s", (t.args || "") + " " + (t.kwargs || ""), t.outcome,
      ]);
      tr.dataset.id = t.id;
      tr.dataset.state = t.state;
      tr.onclick = () => detail(t.id);
      body.appendChild(tr);
    }
  }
  async function refreshTasks() {
    const q = new URLSearchParams({ limit: "100" });
    if (stateSelect.value) q.set("state", stateSelect.value);
    if ($("#filter-name").value) q.set("name", $("#filter-name").value);
    tasks(await get("/api/tasks?" + q));
  }

  function link(t) {
    const a = el("a", (t.name ? t.name + " " : "") + t.id + (t.state ? " (" + t.state + ")" : ""), "task-link");
    a.onclick = () => detail(t.id);
    return a;
  }
  async function detail(id) {
    let t;
    try { t = await get("/api/tasks/" + encodeURIComponent(id)); } catch (e) { toast(e.message); return; }
    dash.selected = id;
    $("#detail").hidden = false;
    $("#detail-id").textContent = id;
    const dl = $("#detail-fields");
    dl.replaceChildren();
    const stored = t.stored || {};
    const add = (k, v) => { if (v === undefined || v === null || v === "") return; dl.appendChild(el("dt", k)); const d = el("dd"); if (v instanceof Node) d.appendChild(v); else d.textContent = String(v); dl.appendChild(d); };
    add("name", t.name); add("state", t.state); add("worker", t.worker);
    add("args", t.args); add("kwargs", t.kwargs);
    add(t.state === "FAILURE" || t.state === "RETRY" ? "exception" : "result", t.outcome || (stored.result !== undefined ? JSON.stringify(stored.result) : ""));
    add("runtime", t.runtime === null || t.runtime === undefined ? "" : t.runtime.toFixed(4) + "s");
    add("retries", t.retries); add("received", when(t.received)); add("started", when(t.started));
    if (t.parent) add("parent", link(t.parent));
    if (t.root_id && t.root_id !== id) add("root", t.root_id);
    if (t.children && t.children.length) { const d = el("span"); t.children.forEach((c, i) => { if (i) d.append(", "); d.appendChild(link(c)); }); add("children", d); }
    $("#detail-traceback").textContent = t.traceback || stored.traceback || "";
    $("#detail").scrollIntoView({ block: "nearest" });
  }
  $("#detail-close").onclick = () => { $("#detail").hidden = true; dash.selected = null; };
  $("#detail-revoke").onclick = () => dash.selected && act("revoke", "/api/tasks/" + encodeURIComponent(dash.selected) + "/revoke", {});
  $("#detail-terminate").onclick = () => dash.selected && act("terminate", "/api/tasks/" + encodeURIComponent(dash.selected) + "/revoke", { terminate: true });

  $("#rate-limit").onsubmit = (e) => {
    e.preventDefault();
    act("rate limit", "/api/rate_limit", { task_name: $("#rl-task").value, rate_limit: $("#rl-rate").value, destination: $("#rl-dest").value || null });
  };

  // Dead letters.
  function dlq(list) {
    $("#dlq-count").textContent = "(" + list.length + ")";
    const body = $("#dlq tbody");
    body.replaceChildren();
    for (const d of list) {
      const b = el("button", "Requeue", "requeue");
      b.dataset.id = d.id;
      b.onclick = () => act("requeue", "/api/dlq/" + encodeURIComponent(d.id) + "/requeue");
      const tr = row([d.id, d.queue, (d.task || "?") + " " + (d.task_id || ""), when(d.failed_at), d.reason, td(b)]);
      tr.dataset.id = d.id;
      body.appendChild(tr);
    }
  }

  async function refresh() {
    try {
      const [w, q, d] = await Promise.all([get("/api/workers"), get("/api/queues"), get("/api/dlq")]);
      workers(w); queues(q); dlq(d);
      await refreshTasks();
    } catch (e) {
      $("#live-status").textContent = "error: " + e.message;
    }
  }

  async function start() {
    const s = await get("/api/summary");
    $("#broker").textContent = s.broker;
    totals(s);
    for (const x of s.series) addSample(x);
    redraw();
    await refresh();
    const live = new EventSource("/api/live");
    live.addEventListener("open", () => ($("#live-status").textContent = "live"));
    live.addEventListener("error", () => ($("#live-status").textContent = "reconnecting…"));
    live.addEventListener("sample", (e) => {
      const m = JSON.parse(e.data);
      totals(m);
      addSample(m.sample);
      redraw();
    });
    setInterval(refresh, 1000);
  }
  start().catch((e) => ($("#live-status").textContent = "error: " + e.message));
})();
