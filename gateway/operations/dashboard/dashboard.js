// The wsgate ops dashboard: polls /metrics and the admin's JSON endpoints; no build step, no dependencies.
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("every") || 2000);
const HISTORY = 60; // chart points per API (2 minutes at the default poll)
const TOKEN_KEY = "wsgate-admin-token";
const state = { previous: null, rates: new Map(), upstreams: "unknown" };

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

// GET an admin endpoint with the admin token, if one was entered. Resolves to null on 404 (endpoint absent).
async function get(path, kind) {
  const headers = {};
  const sent = token();
  if (sent) headers.Authorization = "Bearer " + sent;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    // Ask again only if this answer is about the token in use (not a request sent before it was entered).
    if (sent === token()) document.getElementById("auth").hidden = false;
    throw new Error("the admin listener wants a token");
  }
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return kind === "text" ? response.text() : response.json();
}

// Prometheus text format -> [{name, labels, value}]
function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw[0] === "#") continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function fillTable(id, rows, empty) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "4" }, empty))]));
}

function renderHeader(samples) {
  const generation = samples.find((s) => s.name === "wsgate_config_generation");
  const info = samples.find((s) => s.name === "wsgate_config_info" && s.value === 1);
  document.getElementById("generation").textContent = generation ? generation.value : "–";
  const digest = document.getElementById("digest");
  digest.textContent = info ? info.labels.digest.slice(0, 19) : "–";
  digest.title = info ? info.labels.digest : "";
}

function renderApis(samples, now) {
  const live = new Map(); // api -> Map(application -> n)
  for (const s of samples) {
    if (s.name !== "wsgate_connections_active") continue;
    const apps = live.get(s.labels.api) || new Map();
    apps.set(s.labels.application, (apps.get(s.labels.application) || 0) + s.value);
    live.set(s.labels.api, apps);
  }
  const totals = new Map();
  for (const s of samples) {
    if (s.name === "wsgate_messages_total") totals.set(s.labels.api, (totals.get(s.labels.api) || 0) + s.value);
  }
  if (state.previous) {
    const seconds = (now - state.previous.at) / 1000;
    for (const [api, total] of totals) {
      const before = state.previous.totals.get(api);
      const rate = before === undefined || total < before ? 0 : (total - before) / seconds;
      const points = state.rates.get(api) || [];
      points.push(rate);
      if (points.length > HISTORY) points.shift();
      state.rates.set(api, points);
    }
  }
  state.previous = { at: now, totals };
  const rows = [];
  for (const api of [...live.keys()].sort()) {
    const apps = live.get(api);
    const names = [...apps.keys()].sort();
    const points = state.rates.get(api) || [];
    names.forEach((app, i) => {
      const n = apps.get(app);
      if (i > 0 && n === 0 && app !== "") return; // an application with nothing open: keep the table short
      rows.push(el("tr", { "data-api": api, "data-application": app },
        el("td", {}, i === 0 ? api : ""), el("td", {}, app || el("i", {}, "none")),
        el("td", { class: "num live" }, String(n)),
        el("td", { class: "num" }, i === 0 ? (points.length ? points[points.length - 1].toFixed(1) : "…") : "")));
    });
  }
  fillTable("apis", rows, "no API declared");
  renderCharts([...live.keys()].sort());
}

function renderCharts(apis) {
  const charts = document.getElementById("charts");
  charts.replaceChildren(...apis.map((api) => {
    const points = state.rates.get(api) || [];
    const max = Math.max(1, ...points);
    const coords = points.map((v, i) => `${(i / (HISTORY - 1)) * 100},${40 - (v / max) * 38}`).join(" ");
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 100 40");
    svg.setAttribute("preserveAspectRatio", "none");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", coords);
    svg.append(line);
    const latest = points.length ? points[points.length - 1] : 0;
    return el("div", { class: "chart", "data-api": api },
      el("div", { class: "label" }, el("span", {}, api), el("span", { class: "rate" }, latest.toFixed(1) + "/s")), svg);
  }));
}

function renderUpstreams(samples, upstreams) {
  const failures = new Map(); // "api endpoint" -> n
  for (const s of samples) {
    if (s.name !== "wsgate_upstream_connect_failures_total") continue;
    const key = s.labels.api + " " + s.labels.endpoint;
    failures.set(key, (failures.get(key) || 0) + s.value);
  }
  const rows = [];
  const seen = new Set();
  const note = document.getElementById("upstreams-note");
  if (upstreams && upstreams.apis) {
    for (const api of Object.keys(upstreams.apis).sort()) {
      for (const endpoint of upstreams.apis[api]) {
        const key = api + " " + endpoint.url;
        seen.add(key);
        const health = endpoint.healthy
          ? el("span", { class: "healthy" }, "healthy")
          : el("span", { class: "unhealthy", title: endpoint.reason || "" }, "unhealthy" + (endpoint.reason ? ": " + endpoint.reason : ""));
        rows.push(el("tr", {}, el("td", {}, api), el("td", { class: "mono" }, endpoint.url), el("td", {}, health),
          el("td", { class: "num" }, String(failures.get(key) || 0))));
      }
    }
    note.textContent = "";
  } else {
    note.textContent = "This gateway has no /upstreams endpoint: health checks are not shown, connect failures are.";
  }
  for (const [key, n] of [...failures].sort()) {
    if (seen.has(key)) continue;
    const [api, endpoint] = key.split(" ");
    rows.push(el("tr", {}, el("td", {}, api), el("td", { class: "mono" }, endpoint), el("td", {}, "–"),
      el("td", { class: "num" }, String(n))));
  }
  fillTable("upstreams", rows, "no upstream endpoint");
}

// POST an admin action with the admin token; the answer's JSON (or throws with its reason).
async function post(path) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { method: "POST", headers, cache: "no-store" });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.reason || path + " answered " + response.status);
  return answer;
}

function renderConnections(answer) {
  const listed = (answer && answer.connections) || [];
  const rows = listed.slice(0, 200).map((c) => {
    const close = el("button", { type: "button", class: "link", title: "close with 1008" }, "close");
    close.addEventListener("click", async () => {
      close.disabled = true;
      try { await post("/connections/close?id=" + encodeURIComponent(c.id)); close.textContent = "closing"; }
      catch (error) { close.textContent = String(error.message || error); }
    });
    return el("tr", {}, el("td", { class: "mono" }, c.id || "–"), el("td", {}, c.api),
      el("td", {}, c.application || "–"), el("td", { class: "mono" }, (c.groups || []).join(", ")),
      el("td", {}, c.id ? close : null));
  });
  const body = document.querySelector("#connections tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "5" },
    answer && answer.connections ? "no connection" : "not answered"))]));
}

function when(seconds) { return new Date(seconds * 1000).toLocaleTimeString(); }

function renderReloads(answer) {
  const history = (answer && answer.history) || [];
  document.getElementById("reload-count").textContent = answer ? `${answer.reloads} since start, newest first` : "";
  const items = history.slice().reverse().map((outcome) => {
    const verdict = !outcome.ok ? el("span", { class: "failed" }, "failed")
      : outcome.noop ? el("span", { class: "noop" }, "unchanged") : el("span", { class: "ok" }, "applied");
    const plan = outcome.plan ? `+${outcome.plan.add} ~${outcome.plan.change} -${outcome.plan.destroy}` : "";
    const item = el("li", { class: outcome.ok ? "reload-ok" : "reload-failed" },
      el("div", { class: "head" }, verdict, el("time", {}, when(outcome.at)),
        el("span", { class: "meta" }, `${outcome.trigger} · generation ${outcome.generation} ${plan}`)));
    if (outcome.error) item.append(el("div", { class: "diagnostic" }, el("div", { class: "where" }, outcome.error)));
    for (const d of outcome.diagnostics || []) {
      const where = d.file ? `${d.file}:${d.line}:${d.col}: ` : "";
      item.append(el("div", { class: "diagnostic " + d.severity },
        el("div", { class: "where" }, `${where}${d.severity} ${d.code}: ${d.summary}`),
        d.hint ? el("div", { class: "hint-line" }, "hint: " + d.hint) : null));
    }
    return item;
  });
  document.getElementById("reloads").replaceChildren(...(items.length ? items
    : [el("li", { class: "meta" }, "no reload since the gateway started")]));
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const [text, reloads, upstreams, connections] = await Promise.all([get("/metrics", "text"), get("/reload"),
      get("/upstreams"), get("/connections")]);
    const samples = parseMetrics(text);
    renderHeader(samples);
    renderApis(samples, Date.now());
    renderUpstreams(samples, upstreams);
    renderReloads(reloads);
    renderConnections(connections);
    const last = reloads && reloads.last_reload;
    const failing = last && !last.ok;
    status.textContent = failing ? "last reload failed" : "serving";
    status.className = "status " + (failing ? "bad" : "ok");
  } catch (error) {
    status.textContent = String(error.message || error);
    status.className = "status bad";
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("auth").hidden = true;
});

poll();
