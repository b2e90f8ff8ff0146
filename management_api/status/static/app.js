// llm-service status page: polls /api/status (ETag) every 2 s, charts /api/stats/history.
// No framework, no build step; every value from the server is written with textContent.

const POLL_MS = 2000;
const STALE_AFTER_MISSES = 2;
const KEY_STORE = "llm-service-api-key";
const SPARK_POINTS = 60;

const $ = (id) => document.getElementById(id);
const state = {
  etag: null,
  status: null,
  lastOk: 0,
  misses: 0,
  timer: null,
  clockOffset: 0, // server time minus local time, from the Date header
  windowSeconds: 300,
  historyAt: 0,
  historySampledAt: null,
  charts: {},
  sparks: new Map(),
  pulls: new Map(),
  inFlight: false,
  pollAgain: false,
};

// --- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  const h = Math.floor(s / 3600);
  if (h < 48) return `${h} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

const serverNow = () => (Date.now() + state.clockOffset) / 1000;

function key() { return sessionStorage.getItem(KEY_STORE); }

function headers(extra = {}) {
  const h = { ...extra };
  const k = key();
  if (k) h["X-API-Key"] = k;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const e = body.error;
    if (typeof e === "string") return e;
    if (e && typeof e.message === "string") return e.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

// --- the key prompt (only when the API asks for one)

function askForKey(reason) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason;
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

$("change-key").addEventListener("click", () => askForKey("Enter another API key (an admin key may act)."));

$("key-form").addEventListener("submit", () => {
  const value = $("key-input").value.trim();
  if (value) sessionStorage.setItem(KEY_STORE, value);
  $("key-input").value = "";
  state.etag = null;
  poll();
});

// --- polling

async function poll() {
  // One poll at a time: a poll asked for meanwhile (after an action) runs right after this one.
  if (state.inFlight) { state.pollAgain = true; return; }
  clearTimeout(state.timer);
  state.timer = null;
  if (document.hidden) return; // resumed by visibilitychange
  state.inFlight = true;
  try {
    await pollOnce();
  } finally {
    state.inFlight = false;
  }
  if (state.pollAgain) { state.pollAgain = false; poll(); }
}

async function pollOnce() {
  try {
    const response = await fetch("/api/status", {
      headers: headers(state.etag ? { "If-None-Match": state.etag } : {}),
      cache: "no-store",
    });
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) state.clockOffset = date - Date.now();
    if (response.status === 401 || response.status === 403) {
      askForKey(await errorText(response));
      state.misses = 0;
      renderFreshness();
      return; // the key form polls again
    }
    if (response.status === 304) {
      state.lastOk = Date.now();
      state.misses = 0;
    } else if (response.ok) {
      state.etag = response.headers.get("ETag");
      state.status = await response.json();
      state.lastOk = Date.now();
      state.misses = 0;
      render(state.status);
    } else {
      state.misses++;
    }
  } catch (_) {
    state.misses++;
  }
  renderFreshness();
  if (state.status) renderClocks(state.status);
  if (!document.hidden) state.timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) { clearTimeout(state.timer); state.timer = null; renderFreshness(); }
  else poll();
});

function renderFreshness() {
  const out = $("freshness");
  const header = $("verdict");
  if (document.hidden) { out.textContent = "paused (tab hidden)"; return; }
  if (!state.lastOk) { out.textContent = state.misses ? "no answer from the service" : ""; return; }
  const stale = state.misses >= STALE_AFTER_MISSES;
  header.classList.toggle("stale", stale);
  const age = Math.round((Date.now() - state.lastOk) / 1000);
  out.textContent = stale ? `stale: no answer for ${age} s` : "live";
}

// --- rendering

function render(s) {
  if (!performance.getEntriesByName("first-status").length) performance.mark("first-status");
  renderVerdict(s);
  renderModels(s);
  renderCallers(s.callers);
  renderPulls(s.pulls);
  renderHealing(s.healing);
  renderTelemetryNow(s.telemetry);
  refreshCharts(s.telemetry);
}

function renderVerdict(s) {
  const header = $("verdict");
  header.className = `verdict ${s.verdict}`;
  $("verdict-word").textContent = s.verdict;
  const reasons = $("reasons");
  reasons.replaceChildren(...s.reasons.map((r) =>
    el("li", { class: `reason ${r.level}` }, el("span", { class: "level", text: r.level }), ` ${r.text}`)));
  if (!s.reasons.length) reasons.append(el("li", { class: "reason info", text: "all checks pass" }));
  const a = s.access;
  let access = "access: no API keys needed";
  if (a.mode !== "off") {
    access = `access: API keys on (${a.mode === "all" ? "every route" : "changes only"})`;
    access += a.key ? `, key "${a.key}" (${a.role})` : ", no key given";
    if (!a.can_act) access += ": actions need an admin key";
  }
  $("access-text").textContent = access;
  $("change-key").hidden = a.mode === "off";
}

function renderClocks(s) {
  const svc = s.service;
  const p = svc.platform || {};
  const parts = [`llm-service ${svc.version}`, `Ollama ${svc.ollama_version || "unknown"}`];
  if (p.jetson) parts.push(`${p.model || "Jetson"}, L4T ${p.l4t || "?"}, JetPack ${p.jetpack || "?"}`);
  else if (p.model) parts.push(p.model);
  parts.push(`up ${seconds(serverNow() - svc.started_at)}`);
  $("versions").textContent = parts.join(" · ");
  for (const cell of document.querySelectorAll("[data-expires]")) {
    const left = Date.parse(cell.dataset.expires) / 1000 - serverNow();
    cell.textContent = Number.isNaN(left) ? "" : left > 0 ? `unloads in ${seconds(left)}` : "unloading";
  }
  renderTelemetryAge(s.telemetry);
}

function renderModels(s) {
  const hasHeld = s.models.some((m) => "held" in m);
  document.querySelector('[data-col="held"]').hidden = !hasHeld;
  $("reject-window").textContent = Math.round(s.limits.reject_window_seconds / 60);
  const rows = s.models.map((m) => {
    const cells = [
      ["Model", "name", null, el("span", { class: "model-name", text: m.name }),
        el("span", { class: "sub", text: m.installed ? (m.parameter_size ? ` ${m.parameter_size}` : "")
          + (m.size_bytes ? ` · ${bytes(m.size_bytes)}` : "") : " not installed" }),
        m.paused ? el("span", { class: "tag", text: " paused" }) : ""],
      ["Limit", "limit", m.limit],
      ["Running", "running", m.running],
      ["Queued", "queued", `${m.queued}`],
    ];
    if (hasHeld) {
      const held = !("held" in m) ? "–" : m.held ? `held${m.held_reason ? ` (${m.held_reason.replaceAll("_", " ")})` : ""}` : "no";
      cells.push(["Held", "held", held]);
    }
    cells.push(
      ["Rejected 5 min", "rejected", m.rejected_recent],
      ["Queue wait p50 / p95", "wait", `${seconds(m.wait_p50_seconds)} / ${seconds(m.wait_p95_seconds)}`],
      ["Retry-After", "retry", m.retry_after_seconds === null ? "–" : `${m.retry_after_seconds} s`],
    );
    const loaded = m.loaded;
    const loadedCell = loaded
      ? el("div", {}, el("div", { text: `loaded, ${bytes(loaded.size_bytes)}` +
          (loaded.context_length ? `, context ${loaded.context_length}` : "") }),
        el("div", { class: "sub", "data-expires": loaded.expires_at || null }))
      : el("span", { class: "sub", text: "not loaded" });
    cells.push(["Loaded", "loaded", null, loadedCell]);
    const tr = el("tr", { "data-model": m.model });
    for (const [label, field, value, ...nodes] of cells) {
      const td = el("td", { "data-label": label, "data-field": field });
      if (value !== null && value !== undefined) td.textContent = String(value);
      for (const n of nodes) td.append(n);
      tr.append(td);
    }
    const td = el("td", { "data-label": "Trend" });
    td.append(sparkline(m));
    tr.append(td);
    return tr;
  });
  $("models-body").replaceChildren(...rows);
  $("models-note").textContent = s.installed_error || (s.models.length ? "" : "no models installed or seen yet");
}

function sparkline(m) {
  let points = state.sparks.get(m.model);
  if (!points) { points = []; state.sparks.set(m.model, points); }
  points.push([m.running, m.queued]);
  if (points.length > SPARK_POINTS) points.shift();
  const canvas = el("canvas", { width: 90, height: 22, class: "spark", role: "img",
    "aria-label": `running (solid) and queued (dashed) over the last ${points.length} updates` });
  const ctx = canvas.getContext("2d");
  const top = Math.max(1, ...points.map(([r, q]) => Math.max(r, q)));
  const step = 90 / (SPARK_POINTS - 1);
  const line = (index, dash, colour) => {
    ctx.beginPath();
    ctx.setLineDash(dash);
    ctx.strokeStyle = colour;
    points.forEach((p, i) => {
      const x = 90 - (points.length - 1 - i) * step;
      const y = 21 - (p[index] / top) * 19;
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  };
  line(0, [], "#2563eb");
  line(1, [3, 2], "#b45309");
  return canvas;
}

function renderPulls(pulls) {
  const list = $("pulls");
  const seen = new Set();
  for (const job of pulls) {
    seen.add(job.id);
    let item = state.pulls.get(job.id);
    if (!item) {
      const cancel = el("button", { type: "button", class: "cancel", text: "Cancel" });
      cancel.addEventListener("click", () => cancelPull(job.id, job.model));
      item = {
        li: el("li", { "data-job": job.id }),
        title: el("span", { class: "pull-title" }),
        bar: el("progress", { max: 100, value: 0 }),
        text: el("span", { class: "pull-text" }),
        cancel,
      };
      item.li.append(item.title, item.bar, item.text, item.cancel);
      state.pulls.set(job.id, item);
    }
    const active = ["queued", "running", "retrying"].includes(job.state);
    item.title.textContent = `${job.model}: ${job.state}`;
    item.bar.value = job.percent;
    item.bar.setAttribute("aria-label", `pull of ${job.model}: ${job.percent} %`);
    const bits = [`${job.percent.toFixed(1)} %`, `${bytes(job.completed_bytes)} of ${bytes(job.total_bytes)}`];
    if (active) bits.push(`${bytes(job.bytes_per_second)}/s`, `ETA ${seconds(job.eta_seconds)}`);
    bits.push(`attempt ${job.attempt}/${job.max_attempts}`);
    if (job.error) bits.push(`error: ${job.error}`);
    item.text.textContent = bits.join(" · ");
    item.cancel.hidden = !active;
    item.li.dataset.state = job.state;
  }
  for (const [id, item] of state.pulls) {
    if (!seen.has(id)) { item.li.remove(); state.pulls.delete(id); }
  }
  list.replaceChildren(...pulls.map((job) => state.pulls.get(job.id).li));
  if (!pulls.length) list.replaceChildren(el("li", { class: "note", text: "no pulls" }));
}

// Usage per caller (admins only: others get null and the section stays hidden).
function renderCallers(callers) {
  $("callers-section").hidden = !callers;
  if (!callers) return;
  const windows = [["hour", "this hour"], ["day", "24 h"]];
  const rows = [];
  for (const c of callers.rows) {
    windows.forEach(([w, label], i) => {
      const u = c[w];
      const cells = [];
      if (i === 0) cells.push(el("th", { scope: "row", rowspan: 2, "data-label": "Caller", text: c.caller }));
      cells.push(el("td", { "data-label": "Window", text: label }),
        el("td", { "data-label": "Requests", text: String(u.requests) }),
        el("td", { "data-label": "Tokens", text: String(u.tokens) }),
        el("td", { "data-label": "GPU s", text: u.gpu_seconds.toFixed(1) }));
      for (const k of callers.classes) {
        cells.push(el("td", { "data-label": `Wait p95 ${k}`, text: seconds(u.wait_p95_seconds[k]) }));
      }
      rows.push(el("tr", { "data-caller": c.caller, "data-window": w }, ...cells));
    });
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "note", text: "no requests in the last 24 h" })));
  $("callers-body").replaceChildren(...rows);
}

function renderHealing(entries) {
  const rows = entries.map((e) => el("tr", {},
    el("td", { "data-label": "When", text: new Date(e.at * 1000).toLocaleString() }),
    el("td", { "data-label": "Action", text: e.action.replaceAll("_", " ") + (e.via === "proxy" ? " (unload form)" : "") }),
    el("td", { "data-label": "Who", text: e.who ? `key "${e.who}"` : "no key" }),
    el("td", { "data-label": "Result" }, el("strong", { text: e.ok ? "ok" : "failed" }), `: ${e.result}`)));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 4, class: "note", text: "no healing actions since start" })));
  $("healing-body").replaceChildren(...rows);
}

function renderTelemetryNow(t) {
  $("no-gpu").hidden = t.gpu_reading;
  $("chart-gpu").hidden = !t.gpu_reading;
  $("memory-caption").textContent = t.memory.unified
    ? "Memory, unified CPU+GPU (GB): used, of which GPU-shared, and cache"
    : "Memory (GB): used and cache; GPU memory";
}

function renderTelemetryAge(t) {
  if (!t.sampled_at) { $("telemetry-now").textContent = "no telemetry sample yet"; return; }
  const age = serverNow() - t.sampled_at;
  const stale = age > 3 * t.interval_seconds + 2;
  const m = t.memory;
  const words = [`source: ${t.source || "none"}`, `sample ${seconds(Math.max(0, age))} old${stale ? " (stale)" : ""}`];
  if (t.cpu.percent !== null) words.push(`CPU ${t.cpu.percent.toFixed(0)} %`);
  if (m.total_bytes) words.push(`memory ${bytes(m.used_bytes)} of ${bytes(m.total_bytes)} used`);
  if (m.unified && m.gpu_shared_bytes !== null) words.push(`GPU-shared ${bytes(m.gpu_shared_bytes)}`);
  $("telemetry-now").textContent = words.join(" · ");
}

// --- charts (uPlot, vendored)

const PALETTE = ["#2563eb", "#b45309", "#059669", "#7c3aed", "#dc2626", "#0891b2", "#4d7c0f",
  "#be185d", "#475569", "#ca8a04", "#1e3a8a", "#9a3412"];

function chartWidth(id) { return Math.max(280, $(id).clientWidth || 600); }

function drawChart(id, series, data, axes, empty) {
  const hasData = data.slice(1).some((column, i) => !series[i].threshold && column.some((v) => v !== null));
  if (!hasData && empty) {
    if (state.charts[id]) { state.charts[id].plot.destroy(); delete state.charts[id]; }
    $(id).replaceChildren(el("p", { class: "no-gpu", text: empty }));
    return;
  }
  const old = state.charts[id];
  const signature = series.map((s) => s.label).join("|");
  if (old && old.signature === signature) { old.plot.setData(data); return; }
  if (old) old.plot.destroy();
  const target = $(id);
  target.replaceChildren();
  if (!window.uPlot) { target.textContent = "chart library not loaded"; return; }
  const plot = new window.uPlot({
    width: chartWidth(id), height: 170,
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: s.stroke || PALETTE[i % PALETTE.length], width: 1.5,
      dash: s.dash, scale: s.scale || "y", spanGaps: false, points: { show: false },
    }))],
    scales: { x: { time: true } },
    axes: axes || [{}, {}],
    legend: { live: false },
    cursor: { show: false },
  }, data, target);
  state.charts[id] = { plot, signature };
}

async function refreshCharts(t, force = false) {
  const now = Date.now();
  if (!force && (t.sampled_at === state.historySampledAt || now - state.historyAt < 4000)) return;
  state.historyAt = now;
  state.historySampledAt = t.sampled_at;
  let history;
  try {
    const response = await fetch(`/api/stats/history?seconds=${state.windowSeconds}&max_points=360`,
      { headers: headers(), cache: "no-store" });
    if (!response.ok) return;
    history = await response.json();
  } catch (_) { return; }
  const points = history.points;
  const xs = points.map((p) => p.t);
  const col = (f) => points.map((p) => { const v = f(p); return v === undefined ? null : v; });
  const gb = (v) => (v === null || v === undefined ? null : v / 1e9);
  const keysOf = (field) => {
    const names = new Set();
    for (const p of points) for (const k of Object.keys(p[field] || {})) names.add(k);
    return [...names].sort();
  };

  const cores = Math.max(0, ...points.map((p) => (p.cpu_per_core_percent || []).length));
  const cpuSeries = cores
    ? [...Array(cores).keys()].map((i) => ({ label: `core ${i}` }))
    : [{ label: "all cores" }];
  const cpuData = cores
    ? [...Array(cores).keys()].map((i) => col((p) => (p.cpu_per_core_percent || [])[i]))
    : [col((p) => p.cpu_percent)];
  drawChart("chart-cpu", cpuSeries, [xs, ...cpuData]);

  const unified = points.some((p) => p.memory_unified);
  drawChart("chart-memory",
    [{ label: "used" }, { label: unified ? "GPU-shared" : "GPU memory" }, { label: "cache", dash: [4, 3] }],
    [xs, col((p) => gb(p.memory_used_bytes)), col((p) => gb(p.gpu_memory_used_bytes)),
      col((p) => gb(p.memory_cached_bytes))]);

  if (t.gpu_reading) {
    drawChart("chart-gpu", [{ label: "load %" }, { label: "MHz", scale: "mhz", dash: [4, 3] }],
      [xs, col((p) => p.gpu_utilization_percent), col((p) => p.gpu_frequency_mhz)],
      [{}, { label: "%" }, { side: 1, scale: "mhz", label: "MHz", grid: { show: false } }]);
  }

  const zones = keysOf("thermal_c");
  const tempSeries = zones.length ? zones.map((z) => ({ label: z })) : [{ label: "GPU" }];
  const tempData = zones.length
    ? zones.map((z) => col((p) => (p.thermal_c || {})[z]))
    : [col((p) => p.gpu_temperature_c)];
  drawChart("chart-temp",
    [...tempSeries, { label: "warning 84 °C", stroke: "#ca8a04", dash: [6, 4], threshold: true },
      { label: "critical 100 °C", stroke: "#dc2626", dash: [2, 2], threshold: true }],
    [xs, ...tempData, xs.map(() => t.thresholds_c.warning), xs.map(() => t.thresholds_c.critical)],
    undefined, "no temperature reading");

  const rails = keysOf("power_rails_w");
  const powerSeries = rails.length ? rails.map((r) => ({ label: r })) : [{ label: "GPU board power" }];
  const powerData = rails.length
    ? rails.map((r) => col((p) => (p.power_rails_w || {})[r]))
    : [col((p) => p.gpu_power_w)];
  drawChart("chart-power", powerSeries, [xs, ...powerData], undefined, "no power reading");
}

for (const radio of document.querySelectorAll('input[name="window"]')) {
  radio.addEventListener("change", () => {
    state.windowSeconds = Number(radio.value);
    if (state.status) refreshCharts(state.status.telemetry, true);
  });
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const [id, chart] of Object.entries(state.charts)) chart.plot.setSize({ width: chartWidth(id), height: 170 });
  }, 150);
});

// --- actions: POSTs (and one DELETE) with the key header; the API decides who may

function confirmAction(text) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function send(method, url, body, out) {
  out.textContent = "working…";
  out.className = "result";
  let response;
  try {
    response = await fetch(url, {
      method, cache: "no-store",
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    out.textContent = "failed: the service did not answer";
    out.className = "result failed";
    return null;
  }
  if (response.ok) {
    state.etag = null;
    poll();
    return response.json().catch(() => ({}));
  }
  const reason = await errorText(response);
  out.textContent = `refused (${response.status}): ${reason}`;
  out.className = "result failed";
  if (response.status === 401) askForKey(reason);
  return null;
}

const ACTIONS = {
  "cache-clear": ["Unload every loaded model now? Requests running on them are cancelled.",
    "/api/cache/clear", undefined],
  "gpu-recover": ["Unload every model to free GPU memory? Requests running on them are cancelled.",
    "/api/gpu/recover", undefined],
  "reset-soft": ["Reset the session: unload every model, then load the default model?",
    "/api/session/reset", {}],
  "reset-hard": ["Hard reset: restart the Ollama process, then load the default model? Every request is cut off.",
    "/api/session/reset", { hard: true }],
};

for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", async () => {
    const [question, url, body] = ACTIONS[button.dataset.action];
    if (!(await confirmAction(question))) return;
    const out = $("action-result");
    const result = await send("POST", url, body, out);
    if (result) {
      const unloaded = result.unloaded_models || [];
      out.textContent = `done: ${result.message || result.status}` +
        (unloaded.length ? ` (unloaded: ${unloaded.join(", ")})` : "");
    }
  });
}

$("pull-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const model = $("pull-model").value.trim();
  if (!model) return;
  const out = $("pull-result");
  const job = await send("POST", "/api/models/pull", { model, stream: false }, out);
  if (job) out.textContent = `pull of ${model} started (job ${job.id || job.job_id || "?"})`;
});

async function cancelPull(id, model) {
  if (!(await confirmAction(`Cancel the pull of ${model}?`))) return;
  const out = $("pull-result");
  const result = await send("DELETE", `/api/models/pulls/${encodeURIComponent(id)}`, undefined, out);
  if (result) out.textContent = `pull of ${model} cancelled`;
}

// --- diagnostics for a bug report

function diagnostics(s) {
  const lines = [];
  const svc = s.service;
  const p = svc.platform || {};
  lines.push(`llm-service ${svc.version}; Ollama ${svc.ollama_version || "unknown"}`);
  lines.push(`platform: ${p.model || "unknown"}; jetson=${p.jetson}; L4T ${p.l4t || "-"}; JetPack ${p.jetpack || "-"}; kernel ${p.kernel || "-"}`);
  lines.push(`telemetry source: ${svc.telemetry_source}; uptime ${seconds(serverNow() - svc.started_at)}`);
  lines.push(`verdict: ${s.verdict} (health ${s.health.status}, HTTP ${s.health.http_status})`);
  for (const r of s.reasons) lines.push(`  ${r.level}: ${r.text}`);
  lines.push(`checks: ${Object.entries(s.health.checks).map(([k, v]) => `${k}=${v}`).join(", ")}`);
  lines.push(`limits: defaults ${JSON.stringify(s.limits.defaults)}; global ${JSON.stringify(s.limits.global)}`);
  for (const m of s.models) {
    lines.push(`  ${m.name}: limit ${m.limit}, running ${m.running}, queued ${m.queued}, rejected 5 min ${m.rejected_recent}, total rejected ${m.rejected_total}, loaded ${m.loaded ? "yes" : "no"}`);
  }
  lines.push("last errors in Ollama's log:");
  for (const e of s.recent_errors) lines.push(`  ${e.at} ${e.line}`);
  if (!s.recent_errors.length) lines.push("  none");
  lines.push("last healing actions:");
  for (const e of s.healing.slice(0, 10)) lines.push(`  ${new Date(e.at * 1000).toISOString()} ${e.action} by ${e.who || "no key"}: ${e.ok ? "ok" : "failed"}: ${e.result}`);
  return lines.join("\n");
}

$("copy-diagnostics").addEventListener("click", async () => {
  const out = $("diag-result");
  if (!state.status) { out.textContent = "no status yet"; return; }
  const text = diagnostics(state.status);
  const area = $("diag-text");
  area.value = text;
  area.hidden = false;
  try {
    await navigator.clipboard.writeText(text);
    out.textContent = "copied to the clipboard";
  } catch (_) {
    area.select();
    out.textContent = "select the text below and copy it (the browser refused the clipboard)";
  }
});

poll();
