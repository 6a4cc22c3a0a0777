// The console page: reads /api, listens to /api/events, sends state changes with the
// session's CSRF token. No framework, nothing from a CDN.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { session: null, stats: null, dlq: null, offset: 0, filter: {}, page: null,
  selected: new Set(), open: null, lastDepth: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = state.session.csrf;
  }
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) { location.href = "/signin"; throw new Error("sign in"); }
  const data = await response.json();
  if (!response.ok) { const error = new Error(data.error || response.statusText); error.data = data; throw error; }
  return data;
}

const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body) });

function notice(text, bad = false) {
  const box = $("#notice");
  box.textContent = text; box.className = bad ? "bad" : ""; box.hidden = false;
}

const rate = (value) => (value ?? 0).toFixed(1);

// -- queues ------------------------------------------------------------------------------

function renderStats(stats) {
  state.stats = stats;
  $("#problem").hidden = !stats.problem;
  $("#problem").textContent = stats.problem || "";
  $("#queues-table tbody").replaceChildren(...stats.queues.map((q) => el("tr", { "data-queue": q.queue },
    el("td", {}, q.queue), el("td", {}, q.routing_key), el("td", {}, q.exchange),
    el("td", { class: "n" }, String(q.prefetch_count)),
    el("td", { class: "n depth" }, q.stats ? String(q.stats.depth) : "–"),
    el("td", { class: "n" }, q.stats ? String(q.stats.ready) : "–"),
    el("td", { class: "n" }, q.stats ? String(q.stats.unacked) : "–"),
    el("td", { class: "n consumers" }, q.stats ? String(q.stats.consumers) : "–"),
    el("td", { class: "n" }, q.stats ? rate(q.stats.publish_rate) : "–"),
    el("td", { class: "n" }, q.stats ? rate(q.stats.ack_rate) : "–"),
    el("td", {}, q.dlq), el("td", {}, q.tasks.join(", ")), el("td", {}, q.plugin))));
  $("#dlqs-table tbody").replaceChildren(...stats.dlqs.map((d) => el("tr", { "data-dlq": d.dlq },
    el("td", {}, d.dlq), el("td", { class: "n depth" }, d.stats ? String(d.stats.depth) : "–"),
    el("td", {}, d.sources.join(", ")),
    el("td", {}, el("a", { href: "#dead-letters", onclick: () => chooseDlq(d.dlq) }, "browse")))));
  const current = stats.dlqs.find((d) => d.dlq === state.dlq);
  const depth = current && current.stats ? current.stats.depth : null;
  if (state.page && depth !== null && depth !== state.lastDepth) {
    state.lastDepth = depth;
    // New or replayed dead letters: refresh, unless the operator is in the middle of something.
    if (!state.selected.size && !state.open && !$("#view-dead-letters").hidden) loadPage();
  }
}

function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("stats", (event) => {
    $("#live").textContent = "● live"; $("#live").className = "live on";
    renderStats(JSON.parse(event.data));
  });
  source.onerror = () => { $("#live").textContent = "○ reconnecting"; $("#live").className = "live off"; };
}

// -- dead letters ------------------------------------------------------------------------

function fillSelect(select, values) {
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "any"), ...values.map((v) => el("option", { value: v }, v)));
  select.value = values.includes(current) ? current : "";
}

function chooseDlq(name) {
  state.dlq = name; state.offset = 0; state.selected.clear(); closeDetail();
  $("#dlq-select").value = name;
  const info = state.stats && state.stats.dlqs.find((d) => d.dlq === name);
  fillSelect($("#f-queue"), info ? info.sources : []);
  fillSelect($("#f-task"), info ? info.tasks : []);
  loadPage();
}

function readFilter() {
  const filter = {};
  for (const name of ["queue", "task", "reason", "text"]) {
    const value = $(`#f-${name}`).value.trim();
    if (value) filter[name] = value;
  }
  return filter;
}

async function loadPage() {
  if (!state.dlq) return;
  const size = state.session.page_size;
  const query = new URLSearchParams({ ...state.filter, offset: state.offset, limit: size });
  const page = await api(`/api/dlqs/${encodeURIComponent(state.dlq)}/letters?${query}`);
  state.page = page; state.lastDepth = page.depth;
  const first = page.matched ? page.offset + 1 : 0;
  const last = page.offset + page.letters.length;
  const filtered = Object.keys(state.filter).length;
  $("#summary").textContent = `${first}–${last} of ${page.matched} ${filtered ? "matching" : "dead letters"}` +
    (filtered ? ` (DLQ depth ${page.depth})` : "");
  $("#page-label").textContent = `page ${Math.floor(page.offset / size) + 1} of ${Math.max(1, Math.ceil(page.matched / size))}`;
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = last >= page.matched;
  $("#letters tbody").replaceChildren(...page.letters.map((letter) => {
    const box = el("input", { type: "checkbox", "aria-label": `select ${letter.message_id}` });
    box.checked = state.selected.has(letter.message_id);
    if (!letter.message_id) box.disabled = true;
    box.addEventListener("click", (event) => {
      event.stopPropagation();
      if (box.checked) state.selected.add(letter.message_id); else state.selected.delete(letter.message_id);
      updateSelection();
    });
    const row = el("tr", { "data-id": letter.message_id || "", onclick: () => openLetter(letter.message_id, row) },
      el("td", {}, box), el("td", { class: "n" }, String(letter.position)),
      el("td", {}, letter.task || "–"), el("td", {}, letter.source_queue || "–"),
      el("td", {}, letter.reason || "–"),
      el("td", {}, letter.exception_type ? `${letter.exception_type}: ${letter.exception_message || ""}` : (letter.error || "")),
      el("td", { class: "n" }, letter.attempts == null ? "–" : String(letter.attempts)),
      el("td", {}, (letter.dead_lettered_at || "").replace("T", " ").slice(0, 19)),
      el("td", { class: "id" }, letter.message_id || "(none)"), el("td", { class: "body" }, letter.preview));
    if (state.open === letter.message_id) row.classList.add("open");
    return row;
  }));
  updateSelection();
}

function updateSelection() {
  $("#replay-selected").disabled = state.selected.size === 0;
  $("#replay-selected").textContent = `Replay selected (${state.selected.size})`;
}

function closeDetail() { state.open = null; $("#detail").hidden = true; }

async function openLetter(id, row) {
  if (!id) return;
  const letter = await api(`/api/dlqs/${encodeURIComponent(state.dlq)}/letters/${encodeURIComponent(id)}`);
  state.open = id;
  document.querySelectorAll("#letters tr.open").forEach((r) => r.classList.remove("open"));
  if (row) row.classList.add("open");
  $("#detail-id").textContent = id;
  const fields = [["task", letter.task], ["from queue", letter.source_queue], ["reason", letter.reason],
    ["exception", letter.exception_type ? `${letter.exception_type}: ${letter.exception_message}` : letter.error],
    ["attempts", letter.attempts], ["dead-lettered at", letter.dead_lettered_at], ["size", `${letter.size} bytes`],
    ["payload schema", letter.schema ? "yes (typed handler)" : "none"]];
  $("#detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v == null ? "–" : String(v))]));
  $("#detail-headers").textContent = JSON.stringify(letter.headers, null, 2);
  $("#edit-body").value = letter.body_is_json ? JSON.stringify(letter.body, null, 2) : letter.body;
  $("#edit-errors").hidden = true;
  $("#detail").hidden = false;
}

function showReport(report, what) {
  const bad = report.failed > 0;
  notice(`${what}: replayed ${report.replayed}, failed ${report.failed}` +
    (report.problems.length ? ` (${report.problems.join("; ")})` : ""), bad);
}

async function replaySelected() {
  const ids = [...state.selected];
  try {
    showReport(await post(`/api/dlqs/${encodeURIComponent(state.dlq)}/replay`, { ids }), `${ids.length} selected`);
    state.selected.clear(); closeDetail(); await loadPage();
  } catch (error) { notice(error.message, true); }
}

async function replayMatching() {
  const filter = state.filter;
  const count = state.page ? state.page.matched : 0;
  if (!confirm(`Replay all ${count} dead letter(s) that match the filter?`)) return;
  try {
    showReport(await post(`/api/dlqs/${encodeURIComponent(state.dlq)}/replay`, { filter }), "all matching");
    state.selected.clear(); closeDetail(); await loadPage();
  } catch (error) { notice(error.message, true); }
}

async function replayEdited(edited) {
  const box = $("#edit-errors");
  let body;
  if (edited) {
    try { body = JSON.parse($("#edit-body").value); } catch (error) {
      box.textContent = `Not JSON: ${error.message}`; box.hidden = false; return;
    }
  }
  const id = state.open;
  try {
    const report = edited
      ? await post(`/api/dlqs/${encodeURIComponent(state.dlq)}/letters/${encodeURIComponent(id)}/replay`, { body })
      : await post(`/api/dlqs/${encodeURIComponent(state.dlq)}/replay`, { ids: [id] });
    showReport(report, `message ${id}${edited ? " (edited)" : ""}`);
    state.selected.delete(id); closeDetail(); await loadPage();
  } catch (error) {
    const problems = (error.data && error.data.schema_errors) || [];
    box.textContent = [error.message, ...problems.map((p) => `${p.path}: ${p.message}`)].join("\n");
    box.hidden = false;
  }
}

function askPurge() {
  $("#purge-name").textContent = state.dlq;
  $("#purge-confirm").value = ""; $("#purge-go").disabled = true;
  $("#purge-dialog").showModal();
}

async function purgeConfirmed() {
  try {
    const result = await post(`/api/dlqs/${encodeURIComponent(state.dlq)}/purge`, { confirm: $("#purge-confirm").value });
    notice(`purged ${result.purged} message(s) from ${state.dlq}`);
    state.selected.clear(); closeDetail(); await loadPage();
  } catch (error) { notice(error.message, true); }
}

// -- views -------------------------------------------------------------------------------

function showView() {
  const view = (location.hash || "#queues").slice(1);
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === view);
  if (view === "dead-letters" && !state.page && state.dlq) loadPage();
}

async function start() {
  state.session = await api("/api/session");
  $("#broker").textContent = `${state.session.amqp_url}`;
  $("#signout").hidden = !state.session.signed_in;
  fillSelect($("#f-reason"), state.session.reasons);
  $("#dlq-select").replaceChildren(...state.session.dlqs.map((d) => el("option", { value: d }, d)));
  renderStats(await api("/api/queues"));
  $("#topology").innerHTML = await (await fetch("/api/topology.svg", { credentials: "same-origin" })).text();
  const wanted = new URLSearchParams(location.search).get("dlq");
  state.dlq = wanted || state.session.dlqs[0] || null;
  if (state.dlq) {
    $("#dlq-select").value = state.dlq;
    const info = state.stats.dlqs.find((d) => d.dlq === state.dlq);
    fillSelect($("#f-queue"), info ? info.sources : []);
    fillSelect($("#f-task"), info ? info.tasks : []);
  }
  $("#dlq-select").addEventListener("change", (e) => chooseDlq(e.target.value));
  $("#filters").addEventListener("submit", (e) => {
    e.preventDefault(); state.filter = readFilter(); state.offset = 0; state.selected.clear(); closeDetail(); loadPage();
  });
  $("#clear").addEventListener("click", () => { $("#filters").reset(); $("#filters").requestSubmit(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.session.page_size); loadPage(); });
  $("#next").addEventListener("click", () => { state.offset += state.session.page_size; loadPage(); });
  $("#select-all").addEventListener("change", (e) => {
    for (const letter of state.page ? state.page.letters : []) {
      if (!letter.message_id) continue;
      if (e.target.checked) state.selected.add(letter.message_id); else state.selected.delete(letter.message_id);
    }
    loadPage();
  });
  $("#replay-selected").addEventListener("click", replaySelected);
  $("#replay-matching").addEventListener("click", replayMatching);
  $("#replay-edited").addEventListener("click", () => replayEdited(true));
  $("#replay-one").addEventListener("click", () => replayEdited(false));
  $("#detail-close").addEventListener("click", () => { closeDetail(); loadPage(); });
  $("#purge").addEventListener("click", askPurge);
  $("#purge-confirm").addEventListener("input", (e) => { $("#purge-go").disabled = e.target.value !== state.dlq; });
  $("#purge-dialog").addEventListener("close", () => { if ($("#purge-dialog").returnValue === "purge") purgeConfirmed(); });
  window.addEventListener("hashchange", showView);
  showView();
  if ((location.hash || "#queues") === "#dead-letters") await loadPage();
  listen();
  document.body.dataset.ready = "yes";
}

start().catch((error) => notice(error.message, true));
