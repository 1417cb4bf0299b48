// The reservation portal. Talks only to the controller's REST API with the signed-in
// user's bearer token (kept in sessionStorage for this tab), like the CLI does.
"use strict";

const HOURS_BACK = 24;
const HOURS_AHEAD = 168;
const SVG = "http://www.w3.org/2000/svg";

let token = sessionStorage.getItem("vcluster-token") || "";
let refreshTimer = null;
let freshReservation = null;

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function fmtTime(iso) {
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

// ---------------------------------------------------------------------------------------
// Sign in / out

async function signIn(candidate) {
  token = candidate;
  const me = await api("GET", "/v1/whoami");
  if (me.role === "agent") throw new Error("This is a host agent's token; sign in with a user token.");
  sessionStorage.setItem("vcluster-token", token);
  $("who-name").textContent = `${me.name} · ${me.role}`;
  $("who").hidden = false;
  $("login").hidden = true;
  $("app").hidden = false;
  await refresh();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => refresh().catch(() => {}), 10000);
}

function signOut() {
  token = "";
  sessionStorage.removeItem("vcluster-token");
  clearInterval(refreshTimer);
  $("app").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("token").value = "";
}

// ---------------------------------------------------------------------------------------
// Sites and their charts

async function refresh() {
  const [sites, reservations, clusters] = await Promise.all([
    api("GET", "/v1/sites"),
    api("GET", "/v1/reservations?mine=true"),
    api("GET", "/v1/clusters"),
  ]);
  const timelines = await Promise.all(
    sites.map((s) => api("GET", `/v1/sites/${encodeURIComponent(s.name)}/timeline?hours_back=${HOURS_BACK}&hours_ahead=${HOURS_AHEAD}`)),
  );
  renderSites(sites, timelines);
  renderSiteChoices(sites);
  renderReservations(reservations);
  renderClusters(clusters);
  renderNodes(clusters);
}

function renderSites(sites, timelines) {
  const box = $("sites");
  box.replaceChildren();
  sites.forEach((s, i) => {
    const card = el("article", { class: "card site", "data-site": s.name });
    card.append(
      el("div", { class: "site-head" },
        el("span", { class: "site-name" }, s.name),
        el("span", { class: "site-hosts" }, `${s.hosts_online}/${s.hosts} hosts online`)),
      el("div", { class: "figures" },
        figure("capacity", s.capacity.cpus, "CPUs capacity"),
        figure("reserved", s.reserved.cpus, "reserved now"),
        figure("inuse", s.in_use.cpus, "in use")),
    );
    card.append(chart(timelines[i]));
    box.append(card);
  });
  if (sites.length === 0) box.append(el("p", { class: "muted" }, "No sites yet."));
}

function figure(kind, n, label) {
  return el("div", { class: `figure ${kind}` }, el("div", { class: "n" }, n), el("div", { class: "l" }, label));
}

// Step chart: capacity as a dashed line, reserved and in use as areas, "now" marked.
function chart(timeline) {
  const W = 520, H = 170, L = 34, R = 8, T = 10, B = 22;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const now = new Date(timeline.now).getTime();
  const t0 = now - HOURS_BACK * 3600e3, t1 = now + HOURS_AHEAD * 3600e3;
  const pts = timeline.points
    .map((p) => ({ t: new Date(p.at).getTime(), cap: p.capacity.cpus, res: p.reserved.cpus, use: p.in_use.cpus }))
    .filter((p) => p.t >= t0 - 1 && p.t <= t1 + 1)
    .sort((a, b) => a.t - b.t);
  if (pts.length === 0) return root;
  const ymax = Math.max(1, ...pts.map((p) => Math.max(p.cap, p.res, p.use))) * 1.1;
  // Two scales meeting at "now": the last day gets 30% of the width, the next week the rest,
  // so neither the recent past nor what is booked ahead is squeezed to a sliver.
  const xNow = L + 0.3 * (W - L - R);
  const x = (t) => t <= now
    ? L + ((t - t0) / (now - t0)) * (xNow - L)
    : xNow + ((t - now) / (t1 - now)) * (W - R - xNow);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);

  // gridlines and y ticks
  const ticks = niceTicks(ymax);
  for (const v of ticks) {
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const label = svg("text", { class: "tick", x: L - 4, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = v;
    root.append(label);
  }
  // x ticks: hours back on the left, days ahead on the right
  const tick = (t, text) => {
    const label = svg("text", { class: "tick", x: x(t), y: H - 6, "text-anchor": "middle" });
    label.textContent = text;
    root.append(label);
  };
  tick(t0 + 1800e3, `−${HOURS_BACK} h`);
  tick(now - 12 * 3600e3, "−12 h");
  const day = 24 * 3600e3;
  for (let t = Math.ceil((now + 12 * 3600e3) / day) * day; t <= t1 - 6 * 3600e3; t += day) {
    tick(t, new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" }));
  }

  const step = (key) => {
    let d = "";
    pts.forEach((p, i) => {
      const nx = i + 1 < pts.length ? pts[i + 1].t : t1;
      d += `${i === 0 ? "M" : "L"}${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)} L${x(nx).toFixed(1)},${y(p[key]).toFixed(1)} `;
    });
    return d;
  };
  const area = (key) => `${step(key)} L${x(t1).toFixed(1)},${y(0)} L${x(pts[0].t).toFixed(1)},${y(0)} Z`;
  root.append(svg("path", { class: "reserved", d: area("res") }));
  root.append(svg("path", { class: "inuse", d: area("use") }));
  root.append(svg("path", { class: "capacity", d: step("cap") }));
  root.append(svg("line", { class: "now", x1: x(now), x2: x(now), y1: T, y2: H - B }));
  const nl = svg("text", { class: "now-label", x: x(now) + 3, y: T + 8 });
  nl.textContent = "now";
  root.append(nl);
  const title = svg("title");
  title.textContent = `${timeline.site}: capacity, reserved and in-use CPUs`;
  root.append(title);
  return root;
}

function niceTicks(max) {
  const raw = max / 4;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = 0; v <= max; v += step) out.push(Math.round(v * 100) / 100);
  return out;
}

function renderSiteChoices(sites) {
  const sel = $("r-site");
  const keep = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "Anywhere"));
  for (const s of sites) sel.append(el("option", { value: s.name }, s.name));
  sel.value = keep;
}

// ---------------------------------------------------------------------------------------
// Lists

function stateBadge(state) {
  const s = String(state).toLowerCase();
  return el("span", { class: `state ${s}` }, s);
}

function renderReservations(list) {
  const body = $("reservations").querySelector("tbody");
  body.replaceChildren();
  for (const r of list) {
    const size = r.nodes != null ? `${r.nodes} nodes` : `${r.resources.cpus} CPUs`;
    const cancel = el("button", { class: "small", type: "button" }, "Cancel");
    cancel.addEventListener("click", async () => {
      try { await api("DELETE", `/v1/reservations/${r.id}`); await refresh(); }
      catch (e) { showResult(false, e.message); }
    });
    const row = el("tr", { "data-id": r.id },
      el("td", {}, r.id), el("td", {}, r.site), el("td", {}, size),
      el("td", {}, fmtTime(r.start)), el("td", {}, fmtTime(r.end)),
      el("td", {}, stateBadge(r.state)), el("td", {}, r.clusters.join(", ") || "–"),
      el("td", {}, r.state === "accepted" ? cancel : ""));
    if (r.id === freshReservation) row.className = "fresh";
    body.append(row);
  }
  $("reservations-empty").hidden = list.length > 0;
}

function renderClusters(list) {
  const body = $("clusters").querySelector("tbody");
  body.replaceChildren();
  for (const c of list) {
    const running = c.nodes.filter((n) => n.state === "running").length;
    const sites = [...new Set(c.nodes.map((n) => n.site))].join(", ");
    body.append(el("tr", {},
      el("td", {}, c.name), el("td", {}, stateBadge(c.state)), el("td", {}, stateBadge(c.overlay)),
      el("td", {}, `${running}/${c.nodes.length} running`), el("td", {}, sites || "–"), el("td", {}, c.subnet)));
  }
  $("clusters-empty").hidden = list.length > 0;
}

// Every node of the user's clusters, by site: state, install (provisioned clusters),
// health from its agent's heartbeats,
// load and memory, and its load over the last hour as a small line.
function renderNodes(clusters) {
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  const nodes = clusters.flatMap((c) => c.nodes);
  nodes.sort((a, b) => a.site.localeCompare(b.site) || a.cluster.localeCompare(b.cluster) || a.index - b.index);
  for (const n of nodes) {
    const h = n.health;
    const load = h && h.load1 != null ? h.load1.toFixed(2) : "–";
    const mem = h && h.memory_total_bytes
      ? `${Math.round(h.memory_used_bytes / 1048576)} / ${Math.round(h.memory_total_bytes / 1048576)} MiB`
      : "–";
    const i = n.install;
    let install = "–";
    if (i) {
      install = i.state;
      if (i.state === "installing" && i.step) install += ` ${i.step}`;
      if (i.state === "installing" && i.packages_total != null) install += ` ${i.packages_done}/${i.packages_total}`;
    }
    body.append(el("tr", { "data-node": n.name },
      el("td", {}, n.site), el("td", {}, n.name), el("td", {}, stateBadge(n.state)),
      el("td", { class: "install", title: i && i.reason ? i.reason : "" }, install),
      el("td", { class: "health" }, h ? stateBadge(h.health) : "–"),
      el("td", { class: "load" }, load), el("td", {}, mem),
      el("td", {}, sparkline(h ? h.load_history || [] : []))));
  }
  $("nodes-empty").hidden = nodes.length > 0;
}

// A line of (time ms, value) samples over the last hour, scaled to its own maximum.
function sparkline(samples) {
  const w = 120, hgt = 24;
  const box = svg("svg", { class: "spark", width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}` });
  if (samples.length === 0) return box;
  const end = Date.now(), start = end - 3600 * 1000;
  const top = Math.max(1, ...samples.map((s) => s[1]));
  const pts = samples.map(([t, v]) => {
    const x = Math.max(0, Math.min(w, ((t - start) / (end - start)) * w));
    const y = hgt - 1 - (v / top) * (hgt - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  if (pts.length === 1) pts.push(`${w},${pts[0].split(",")[1]}`);
  box.append(svg("polyline", { points: pts.join(" ") }));
  return box;
}

// ---------------------------------------------------------------------------------------
// The reservation form

function clearErrors() {
  for (const p of document.querySelectorAll("#reserve-form .error")) p.textContent = "";
  for (const i of document.querySelectorAll("#reserve-form .invalid")) i.classList.remove("invalid");
  showResult(null, "");
}

function fieldError(field, message) {
  const p = document.querySelector(`#reserve-form .error[data-for="${field}"]`);
  if (!p) return false;
  p.textContent = message;
  const input = document.querySelector(`#reserve-form [name="${field}"]`);
  if (input) input.classList.add("invalid");
  return true;
}

function showResult(ok, message) {
  const p = $("reserve-result");
  p.textContent = message;
  p.className = ok === null ? "message" : ok ? "message ok" : "message bad";
}

function readForm() {
  const f = $("reserve-form");
  const intOf = (name) => {
    const v = f.elements[name].value.trim();
    return v === "" ? NaN : Number(v);
  };
  const start = f.elements.start.value, end = f.elements.end.value;
  const problems = [];
  const nodes = intOf("nodes"), cpus = intOf("node_cpus"), mem = intOf("node_memory_mib");
  if (!Number.isInteger(nodes) || nodes < 1) problems.push(["nodes", "Enter a whole number of nodes, 1 or more."]);
  if (!Number.isInteger(cpus) || cpus < 1) problems.push(["node_cpus", "Enter a whole number of CPUs, 1 or more."]);
  if (!Number.isInteger(mem) || mem < 16) problems.push(["node_memory_mib", "Enter at least 16 MiB."]);
  if (!start) problems.push(["start", "Pick a start time."]);
  if (!end) problems.push(["end", "Pick an end time."]);
  const body = {
    nodes, node_cpus: cpus, node_memory_mib: mem,
    start: start && new Date(start).toISOString(),
    end: end && new Date(end).toISOString(),
    note: f.elements.note.value,
  };
  if (f.elements.site.value) body.site = f.elements.site.value;
  return { body, problems };
}

async function submitReservation(ev) {
  ev.preventDefault();
  clearErrors();
  const { body, problems } = readForm();
  if (problems.length) {
    for (const [field, msg] of problems) fieldError(field, msg);
    showResult(false, "Please fix the highlighted fields.");
    return;
  }
  $("r-submit").disabled = true;
  try {
    const r = await api("POST", "/v1/reservations", body);
    freshReservation = r.id;
    showResult(true, `Reservation #${r.id} accepted: ${r.nodes} nodes at ${r.site}, ${fmtTime(r.start)} – ${fmtTime(r.end)}.`);
    await refresh();
  } catch (e) {
    if (e.field && fieldError(e.field, e.message)) {
      showResult(false, "The controller did not accept this request; see the highlighted field.");
    } else {
      showResult(false, e.status === 409 ? `Not accepted — ${e.message.replace(/^refused: /, "")}` : e.message);
    }
  } finally {
    $("r-submit").disabled = false;
  }
}

async function findEarliest() {
  clearErrors();
  const { body, problems } = readForm();
  const bad = problems.filter(([f]) => f !== "start");
  if (bad.length) { for (const [f, m] of bad) fieldError(f, m); return; }
  const hours = (new Date(body.end) - new Date(body.start)) / 3600e3;
  if (!(hours > 0)) { fieldError("end", "End must be after start to know how long you need the nodes."); return; }
  const q = new URLSearchParams({ nodes: body.nodes, hours, node_cpus: body.node_cpus, node_memory_mib: body.node_memory_mib });
  if (body.site) q.set("site", body.site);
  try {
    const slot = await api("GET", `/v1/reservations/earliest?${q}`);
    $("r-start").value = localInputValue(new Date(slot.start));
    $("r-end").value = localInputValue(new Date(slot.end));
    $("r-site").value = slot.site;
    showResult(true, `Earliest: ${fmtTime(slot.start)} at ${slot.site}. Press Request to book it.`);
  } catch (e) {
    showResult(false, e.message);
  }
}

// ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const start = new Date(Date.now() + 5 * 60e3);
  start.setSeconds(0, 0);
  $("r-start").value = localInputValue(start);
  $("r-end").value = localInputValue(new Date(start.getTime() + 4 * 3600e3));

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    const t = $("token").value.trim();
    if (!t) { $("login-error").textContent = "Enter your token."; return; }
    try { await signIn(t); }
    catch (e) { token = ""; $("login-error").textContent = e.status === 401 ? "That token is not valid." : e.message; }
  });
  $("sign-out").addEventListener("click", signOut);
  $("reserve-form").addEventListener("submit", submitReservation);
  $("r-earliest").addEventListener("click", findEarliest);
  if (token) signIn(token).catch(signOut);
});
