// The tfmux dashboard: a thin client of GET /status and GET /status/history, acting through
// the management API. Plain JavaScript, no dependency; all state is replaced on every poll,
// so a tab left open keeps a constant size.
"use strict";

const STATUS_EVERY_MS = 2000;
const HISTORY_EVERY_MS = 2500;
const MAX_ROWS = 500; // table rows rendered at once; the filter narrows the rest
const COLORS = ["#2f6fde", "#e8710a", "#1a7f37", "#c62828", "#8e44ad", "#00838f", "#795548", "#d81b60"];

const state = {
  token: sessionStorage.getItem("tfmux-token") || "",
  overview: null,
  history: null,
  sortKey: "name",
  sortAsc: true,
  filter: "",
  picked: "",
  statusProblem: false, // the notice shows that /status could not be read
};

const $ = (selector) => document.querySelector(selector);

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function formatNumber(value, digits = 1) {
  if (value === null || value === undefined) return "";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
  return Number(value.toFixed(digits)).toString();
}

function formatAgo(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function notice(text, isError = false) {
  const element = $("#notice");
  element.hidden = !text;
  element.textContent = text || "";
  element.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (error) {
    body = { error: text };
  }
  if (!response.ok) {
    const message = (body && body.error) || `HTTP ${response.status}`;
    const failure = new Error(`${response.status}: ${message}`);
    failure.status = response.status;
    throw failure;
  }
  return body;
}

// -- rows of the table -------------------------------------------------------------------------

function rows() {
  const result = [];
  for (const model of state.overview.models) {
    const versions = model.versions.length ? model.versions : [null];
    versions.forEach((v, index) => {
      const labels = Object.entries(model.labels).filter(([, version]) => v && version === v.version).map(([label]) => label);
      result.push({
        model, v, first: index === 0, labels,
        name: model.name,
        version: v ? v.version : -1,
        state: v ? v.state : "NONE",
        pinned: model.pinned ? 1 : 0,
        memory: v && v.memory_bytes !== null ? v.memory_bytes : -1,
        idle: v && v.last_used_seconds_ago !== null ? v.last_used_seconds_ago : Infinity,
        load: v && v.load_seconds !== null ? v.load_seconds : -1,
        rate: v ? v.requests_per_second : 0,
        errors: v && v.error_rate !== null ? v.error_rate : -1,
        p50: v && v.p50_ms !== null ? v.p50_ms : -1,
        p99: v && v.p99_ms !== null ? v.p99_ms : -1,
        batch: v && v.mean_batch_size !== null ? v.mean_batch_size : -1,
        queue: v ? v.queue_depth : 0,
        replicas: v && v.replicas ? v.replicas.map((r) => r.replica).join(",") : "",
      });
    });
  }
  return result;
}

function compareRows(a, b) {
  const key = state.sortKey;
  let order;
  if (key === "labels") order = a.labels.join(",").localeCompare(b.labels.join(","));
  else if (key === "replicas") order = a.replicas.split(",").length - b.replicas.split(",").length || a.replicas.localeCompare(b.replicas);
  else if (typeof a[key] === "string") order = a[key].localeCompare(b[key]);
  else order = a[key] - b[key];
  if (order === 0 && key !== "name") order = a.name.localeCompare(b.name) || b.version - a.version;
  return state.sortAsc ? order : -order;
}

function rowHtml(row, canManage) {
  const v = row.v;
  const name = escapeHtml(row.name);
  if (!v) {
    const problem = row.model.problem ? `<span class="error-text">${escapeHtml(row.model.problem)}</span>` : "";
    return `<tr data-model="${name}"><td>${name}</td><td></td><td class="state-END failed">no version${problem}</td><td colspan="13"></td></tr>`;
  }
  const failed = v.error_code !== "OK";
  const stateText = v.evicted && v.state === "END" ? "EVICTED" : v.state;
  const error = failed ? `<span class="error-text">${escapeHtml(v.error_code)}: ${escapeHtml(v.error_message)}</span>` : "";
  const memory = v.memory_bytes === null ? "" : `${formatBytes(v.memory_bytes)}${v.memory_measured ? "" : " (est.)"}`;
  const errors = v.error_rate === null ? "" : `${(v.error_rate * 100).toFixed(1)}%`;
  let actions = "";
  if (canManage && row.first) {
    actions = `<button data-action="load" data-model="${name}">load</button> <button data-action="unload" data-model="${name}">unload</button>`;
  }
  return `<tr data-model="${name}" data-version="${v.version}">` +
    `<td><a href="#" data-pick="${name}">${name}</a></td><td class="num">${v.version}</td>` +
    `<td class="state-${v.state}${failed ? " failed" : ""}">${stateText}${error}</td>` +
    `<td>${row.labels.map((l) => `<span class="chip">${escapeHtml(l)}</span>`).join("")}</td>` +
    `<td>${row.model.pinned ? "pinned" : ""}</td><td class="num">${memory}</td>` +
    `<td class="cluster-only placements">${placements(v)}</td>` +
    `<td>${formatAgo(v.last_used_seconds_ago)}</td><td class="num">${v.load_seconds === null ? "" : `${formatNumber(v.load_seconds, 2)} s`}</td>` +
    `<td class="num">${formatNumber(v.requests_per_second, 2)}</td><td class="num">${errors}</td>` +
    `<td class="num">${formatNumber(v.p50_ms, 2)}</td><td class="num">${formatNumber(v.p99_ms, 2)}</td>` +
    `<td class="num">${formatNumber(v.mean_batch_size, 1)}</td><td class="num">${v.queue_depth}</td>` +
    `<td class="actions">${actions}</td></tr>`;
}

// Which replicas hold a version (cluster gateway only): one chip each, its state if not AVAILABLE.
function placements(v) {
  return (v.replicas || []).map((p) => {
    const note = p.state === "AVAILABLE" ? "" : ` ${p.state.toLowerCase()}`;
    return `<span class="chip replica-chip" title="node ${escapeHtml(p.node)}">${escapeHtml(p.replica)}${note}</span>`;
  }).join("");
}

function renderReplicas() {
  const replicas = state.overview.replicas;
  document.body.classList.toggle("cluster", Boolean(replicas));
  $("#replicas-section").hidden = !replicas;
  if (!replicas) return;
  const up = replicas.filter((r) => r.state === "up").length;
  $("#replica-count").textContent = `${up} of ${replicas.length} answering`;
  $("#replicas tbody").innerHTML = replicas.map((r) => {
    const id = escapeHtml(r.replica);
    const budget = r.memory_budget_bytes === null ? "" : ` / ${formatBytes(r.memory_budget_bytes)}`;
    const problem = r.message ? `<span class="error-text">${escapeHtml(r.message)}</span>` : "";
    return `<tr data-replica="${id}"><td>${id}</td><td title="${escapeHtml(r.node)}">${escapeHtml(r.node.slice(0, 12))}</td>` +
      `<td class="replica-${r.state}">${r.state}${problem}</td><td class="num">${formatBytes(r.memory_used_bytes)}${budget}</td>` +
      `<td class="models-held">${r.models.map((m) => `<span class="chip">${escapeHtml(m)}</span>`).join("")}</td>` +
      `<td class="num">${r.inflight}</td><td class="num">${r.requests}</td><td class="num">${r.misses}</td>` +
      `<td class="num">${formatNumber(r.requests_per_second, 2)}</td></tr>`;
  }).join("") || '<tr><td colspan="9" class="muted">no replica yet</td></tr>';
}

function renderTable() {
  const canManage = state.overview.management_enabled;
  const filter = state.filter.toLowerCase();
  const all = rows();
  const shown = all.filter((row) => row.name.toLowerCase().includes(filter)).sort(compareRows);
  $("#models tbody").innerHTML = shown.slice(0, MAX_ROWS).map((row) => rowHtml(row, canManage)).join("");
  $("#model-count").textContent = `${state.overview.models.length} models, ${all.length} rows`;
  $("#row-note").textContent = shown.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${shown.length} rows: filter by name to narrow` : "";
  for (const th of document.querySelectorAll("#models th[data-key]")) {
    th.classList.toggle("sorted", th.dataset.key === state.sortKey);
    th.classList.toggle("asc", th.dataset.key === state.sortKey && state.sortAsc);
  }
}

// -- memory, traffic, events ---------------------------------------------------------------------

function renderMemory() {
  const o = state.overview;
  const budget = o.memory_budget_bytes;
  const parts = [];
  for (const model of o.models) {
    const bytes = model.versions.reduce((sum, v) => sum + (v.memory_bytes || 0), 0);
    if (bytes > 0) parts.push([model.name, bytes]);
  }
  parts.sort((a, b) => b[1] - a[1]);
  const top = parts.slice(0, COLORS.length - 1);
  const rest = parts.slice(COLORS.length - 1).reduce((sum, [, bytes]) => sum + bytes, 0);
  if (rest > 0) top.push([`${parts.length - top.length} others`, rest]);
  const whole = Math.max(budget || 0, o.memory_used_bytes, 1);
  const bar = $("#memory-bar");
  bar.replaceChildren(...top.map(([name, bytes], i) => {
    const span = document.createElement("span");
    span.style.width = `${(100 * bytes) / whole}%`;
    span.style.background = COLORS[i % COLORS.length];
    span.title = `${name}: ${formatBytes(bytes)}`;
    return span;
  }));
  $("#memory-legend").innerHTML = top.map(([name, bytes], i) =>
    `<li><span class="swatch" data-color="${i}"></span>${escapeHtml(name)} ${formatBytes(bytes)}</li>`).join("");
  document.querySelectorAll("#memory-legend .swatch").forEach((s) => { s.style.background = COLORS[Number(s.dataset.color)]; });
  const of = budget ? ` of a ${formatBytes(budget)} budget (${((100 * o.memory_used_bytes) / budget).toFixed(0)}%)` : " (no budget set)";
  $("#memory-text").textContent = `${formatBytes(o.memory_used_bytes)} used${of}`;
}

function renderTraffic() {
  const blocks = [];
  for (const model of state.overview.models) {
    const labels = Object.entries(model.labels);
    if (!labels.length && !model.arms.length && !model.shadow) continue;
    const versions = Object.fromEntries(model.versions.map((v) => [v.version, v]));
    let html = `<div class="traffic-model"><strong>${escapeHtml(model.name)}</strong> `;
    html += labels.map(([label, version]) => `<span class="chip">${escapeHtml(label)} → v${version}</span>`).join("");
    if (model.arms.length) {
      html += "<table><thead><tr><th>arm</th><th>weight</th><th>version</th><th>req/s</th><th>p50 ms</th><th>p99 ms</th></tr></thead><tbody>";
      for (const arm of model.arms) {
        const v = versions[arm.version] || {};
        html += `<tr><td>${escapeHtml(arm.arm)}</td><td class="num">${formatNumber(arm.weight, 2)}</td><td class="num">${arm.version ?? ""}</td>` +
          `<td class="num">${formatNumber(arm.requests_per_second, 2)}</td><td class="num">${formatNumber(v.p50_ms, 2)}</td><td class="num">${formatNumber(v.p99_ms, 2)}</td></tr>`;
      }
      html += "</tbody></table>";
    }
    if (model.shadow) {
      const s = model.shadow;
      const compared = s.agree + s.disagree;
      const agreement = compared ? `${((100 * s.agree) / compared).toFixed(1)}% agree` : "no comparisons yet";
      html += `<div>shadow → ${escapeHtml(s.target)} (${formatNumber(s.percent, 1)}%): ${agreement}; ${s.disagree} disagree, ${s.error} errors, ${s.dropped} dropped</div>`;
    }
    blocks.push(`${html}</div>`);
  }
  $("#traffic").innerHTML = blocks.join("") || '<p class="muted">no labels, splits or shadows</p>';
  $("#traffic-actions").hidden = !state.overview.management_enabled;
}

function renderEvents() {
  const events = state.overview.events.slice().reverse();
  $("#events").innerHTML = events.map((e) => {
    const when = new Date(e.time * 1000).toLocaleTimeString("en-GB");
    const version = e.version === null ? "" : ` v${e.version}`;
    return `<li><span class="muted">${when}</span> <span class="kind kind-${escapeHtml(e.kind)}">${escapeHtml(e.kind)}</span> ` +
      `${e.model ? `<strong>${escapeHtml(e.model)}${version}</strong>: ` : ""}${escapeHtml(e.message)}</li>`;
  }).join("") || '<li class="muted">nothing yet</li>';
}

function renderPicker() {
  const select = $("#pick");
  const names = state.overview.models.map((m) => m.name);
  const current = Array.from(select.options).slice(1).map((o) => o.value);
  if (current.join("\n") !== names.join("\n")) {
    select.replaceChildren(new Option("busiest", ""), ...names.map((n) => new Option(n, n)));
  }
  select.value = state.picked;
}

// -- plots: line charts on canvas ----------------------------------------------------------------

function plot(canvas, lines, format = (v) => formatNumber(v, 1)) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 46;
  const bottom = height - 16;
  const top = 14;
  const values = lines.flatMap((l) => l.values).filter((v) => v !== null);
  const peakValue = Math.max(0, ...values);
  const most = peakValue > 0 ? peakValue * 1.1 : 1;
  g.font = "10px system-ui, sans-serif";
  g.fillStyle = "#6b7280";
  g.strokeStyle = "#e3e5ea";
  g.lineWidth = 1;
  for (let i = 0; i <= 2; i += 1) {
    const y = bottom - ((bottom - top) * i) / 2;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(width, y);
    g.stroke();
    g.fillText(values.length ? format((most * i) / 2) : "", 2, y + 3);
  }
  const points = lines.length ? lines[0].values.length : 0;
  const seconds = state.history ? points * state.history.resolution_seconds : 0;
  g.fillText(seconds >= 120 ? `-${Math.round(seconds / 60)} min` : `-${Math.round(seconds)} s`, left, height - 3);
  g.fillText("now", width - 20, height - 3);
  let legendX = left;
  lines.forEach((line, i) => {
    const color = line.color || COLORS[i % COLORS.length];
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.setLineDash(line.dashed ? [4, 3] : []);
    g.beginPath();
    const at = (x, v) => [left + ((width - left) * x) / Math.max(1, points - 1), bottom - ((bottom - top) * v) / most];
    line.values.forEach((v, x) => {
      if (v === null) return;
      const [px, py] = at(x, v);
      if (x > 0 && line.values[x - 1] !== null) g.lineTo(px, py);
      else g.moveTo(px, py);
    });
    g.stroke();
    g.fillStyle = color;
    line.values.forEach((v, x) => {
      const alone = (x === 0 || line.values[x - 1] === null) && (x === points - 1 || line.values[x + 1] === null);
      if (v === null || !alone) return;
      const [px, py] = at(x, v);
      g.fillRect(px - 2, py - 2, 4, 4); // a point with no neighbour is a dot, not nothing
    });
    g.setLineDash([]);
    g.fillStyle = color;
    g.fillText(line.name, legendX, 10);
    legendX += g.measureText(line.name).width + 12;
  });
  if (!values.length) {
    g.fillStyle = "#6b7280";
    g.fillText("no data yet", left + 8, (top + bottom) / 2);
  }
  // What was drawn, for people using assistive technology and for tests.
  const peak = values.length ? Math.max(...values) : null;
  canvas.dataset.lines = lines.map((l) => l.name).join(",");
  canvas.dataset.peak = peak === null ? "" : String(peak);
  canvas.setAttribute("aria-label", `${lines.map((l) => l.name).join(", ")}; peak ${peak === null ? "none" : format(peak)}`);
}

const MIN_PLOT_POINTS = 24; // two minutes at 5 s: a young server's plots start at its first point

function visible(h) {
  // The series from the server's first point on (at least MIN_PLOT_POINTS), so a server that
  // started a minute ago shows that minute across the plot, not in its last pixels.
  const first = h.overall.requests_per_second.findIndex((v) => v !== null);
  const start = Math.min(first < 0 ? h.points : first, h.points - MIN_PLOT_POINTS);
  const cut = (values) => values.slice(Math.max(0, start));
  return {
    ...h,
    overall: Object.fromEntries(Object.entries(h.overall).map(([k, v]) => [k, cut(v)])),
    models: Object.fromEntries(Object.entries(h.models).map(([name, series]) =>
      [name, Object.fromEntries(Object.entries(series).map(([k, v]) => [k, cut(v)]))])),
  };
}

function renderPlots() {
  if (!state.history) return;
  const h = visible(state.history);
  const chosen = state.picked ? [state.picked] : h.busiest;
  const named = chosen.filter((name) => h.models[name]);
  const series = (key) => named.map((name) => ({ name, values: h.models[name][key] }));
  const total = { name: "all models", values: h.overall.requests_per_second, color: "#9aa0aa", dashed: true };
  plot($("#plot-rate"), [...series("requests_per_second"), ...(state.picked ? [] : [total])], (v) => formatNumber(v, 1));
  const latency = [];
  named.slice(0, 4).forEach((name, i) => {
    latency.push({ name: `${name} p50`, values: h.models[name].p50_ms, color: COLORS[i] });
    latency.push({ name: `p99`, values: h.models[name].p99_ms, color: COLORS[i], dashed: true });
  });
  plot($("#plot-latency"), latency, (v) => formatNumber(v, 2));
  const queue = state.picked ? series("queue_depth") : [{ name: "all models", values: h.overall.queue_depth }];
  plot($("#plot-queue"), queue);
  plot($("#plot-batch"), series("mean_batch_size"));
  plot($("#plot-memory"), [{ name: "used", values: h.overall.memory_used_bytes }], formatBytes);
  plot($("#plot-lifecycle"), [
    { name: "loads", values: h.overall.loads, color: COLORS[2] },
    { name: "evictions", values: h.overall.evictions, color: COLORS[3] },
  ], (v) => formatNumber(v, 0));
}

// -- polling -----------------------------------------------------------------------------------

function render() {
  const o = state.overview;
  const failed = o.models.filter((m) => m.versions.some((v) => v.error_code !== "OK")).length;
  const loaded = o.models.filter((m) => m.versions.some((v) => v.state === "AVAILABLE")).length;
  let replicas = "";
  if (o.replicas) {
    const away = o.replicas.filter((r) => r.state !== "up").length;
    replicas = `, ${o.replicas.length} replicas${away ? ` (${away} unreachable)` : ""}`;
  }
  $("#summary").textContent = `${o.models.length} models, ${loaded} loaded${failed ? `, ${failed} failed` : ""}${replicas}`;
  $("#updated").textContent = `updated ${new Date(o.time * 1000).toLocaleTimeString("en-GB")}`;
  renderReplicas();
  renderTable();
  renderMemory();
  renderTraffic();
  renderEvents();
  renderPicker();
}

async function pollStatus() {
  try {
    state.overview = await api("/status");
    if (state.statusProblem) notice(""); // recovered: clear what this poll reported, only
    state.statusProblem = false;
    render();
  } catch (error) {
    state.statusProblem = true;
    if (error.status === 401) notice("This server's status needs the admin token: enter it above.", true);
    else notice(`Cannot read the status (${error.message}); retrying.`, true);
  } finally {
    setTimeout(pollStatus, STATUS_EVERY_MS);
  }
}

async function pollHistory() {
  try {
    const query = new URLSearchParams({ busiest: "5" });
    if (state.picked) query.append("model", state.picked);
    state.history = await api(`/status/history?${query}`);
    renderPlots();
  } catch (error) {
    // pollStatus reports the problem; the plots keep their last data.
  } finally {
    setTimeout(pollHistory, HISTORY_EVERY_MS);
  }
}

// -- actions through the management API ---------------------------------------------------------

async function act(description, path, body) {
  notice(`${description}…`);
  try {
    await api(path, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    notice(`${description}: done.`);
  } catch (error) {
    notice(`${description} refused: ${error.message}`, true);
  }
  const fresh = await api("/status").catch(() => null);
  if (fresh) {
    state.overview = fresh;
    render();
  }
}

function setUp() {
  $("#token").value = state.token;
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("tfmux-token", state.token);
    notice(state.token ? "Token set: it is sent with status reads and actions." : "");
  });
  $("#forget-token").addEventListener("click", () => {
    state.token = "";
    $("#token").value = "";
    sessionStorage.removeItem("tfmux-token");
    notice("");
  });
  $("#filter").addEventListener("input", (event) => {
    state.filter = event.target.value;
    if (state.overview) renderTable();
  });
  $("#models thead").addEventListener("click", (event) => {
    const key = event.target.dataset && event.target.dataset.key;
    if (!key) return;
    state.sortAsc = state.sortKey === key ? !state.sortAsc : key === "name" || key === "state";
    state.sortKey = key;
    renderTable();
  });
  $("#models tbody").addEventListener("click", (event) => {
    const target = event.target;
    if (target.dataset.pick) {
      event.preventDefault();
      state.picked = target.dataset.pick;
      $("#pick").value = state.picked;
      pollHistoryNow();
    } else if (target.dataset.action) {
      const { action, model } = target.dataset;
      act(`${action} ${model}`, `/v2/repository/models/${encodeURIComponent(model)}/${action}`, {});
    }
  });
  $("#pick").addEventListener("change", (event) => {
    state.picked = event.target.value;
    pollHistoryNow();
  });
  $("#label-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target.elements;
    const version = Number(form.version.value);
    act(`move label ${form.label.value} of ${form.model.value} to version ${version}`,
      `/v2/repository/models/${encodeURIComponent(form.model.value)}/traffic`, { labels: { [form.label.value]: version } });
  });
  $("#split-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target.elements;
    const split = {};
    for (const part of form.weights.value.split(",")) {
      const [arm, weight] = part.split("=").map((s) => s.trim());
      if (arm) split[arm] = Number(weight);
    }
    act(`change the split of ${form.model.value}`, `/v2/repository/models/${encodeURIComponent(form.model.value)}/traffic`, { split });
  });
  pollStatus();
  pollHistory();
}

let historyTimer = null;
function pollHistoryNow() {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => {
    const query = new URLSearchParams({ busiest: "5" });
    if (state.picked) query.append("model", state.picked);
    api(`/status/history?${query}`).then((h) => { state.history = h; renderPlots(); }).catch(() => {});
  }, 0);
}

setUp();
