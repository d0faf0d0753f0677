// warnd's duty console: plain ES modules, no build step. Pages are rendered from the API's JSON;
// the board, a warning's page, the devices and the audit log are kept live by server-sent events
// read with fetch(), so the token stays in a header (sessionStorage, never in a URL) and the page
// runs no polling loop.
import { lang, setLang, t } from "./i18n.js";
import { villageMap } from "./map.js";
import { TEMPLATES, headlineFor } from "./templates.js";

const TOKEN_KEY = "warnd.token";
const LEVELS = ["red", "orange", "yellow", "blue"];
const DEVICE_CHANNELS = ["loudspeaker", "led"];
// After a stream drops (warnd restarted, the LAN blinked) it is opened again this much later.
const RECONNECT_MS = 3000;

const state = { me: null, villages: null, cleanup: null, keepNotice: false };

// --- small helpers --------------------------------------------------------------------------

/** An element: h("div", {class: "x", onclick: f}, child, "text", …). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "testid") node.dataset.testid = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.field = error.field;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

/** One API call with the session's token; JSON back, or an ApiError. */
async function api(method, path, body, { raw = false } = {}) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { code: "network" });
  }
  if (!resp.ok) {
    let error = {};
    try { error = (await resp.json()).error || {}; } catch { /* not JSON */ }
    throw new ApiError(resp.status, error);
  }
  return raw ? resp : resp.json();
}

/** An API error in the reader's language (Chinese by default), naming the field when there is one. */
function errorText(e) {
  if (!(e instanceof ApiError)) return t("err.other", { status: "", message: String(e) });
  if (e.status === 0) return t("err.network");
  if (e.status === 401) return t("err.unauthorized");
  if (e.status === 429) return t("err.rate_limited");
  const key = `err.${e.code}`;
  if (e.code === "invalid" || e.code === "bad_json") {
    const root = (e.field || "").split(/[.[]/)[0];
    return t("err.invalid", { field: `${t(`field.${root}`)} — ${e.message}` });
  }
  if (t(key) !== key) return t(key);
  if (e.status === 403) return t("err.forbidden");
  return t("err.other", { status: e.status, message: e.message });
}

/** Replace a node's children, leaving out the null / false of conditional parts. */
function put(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text || "";
  box.hidden = !text;
}

function showNotice(text) {
  const box = document.getElementById("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

/** Read a server-sent event stream with the token in a header; returns a function that stops it. */
function stream(path, onEvent) {
  let stopped = false;
  let controller = null;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const resp = await fetch(path, {
          headers: { Authorization: `Bearer ${token() || ""}`, Accept: "text/event-stream" },
          signal: controller.signal,
        });
        if (!resp.ok) throw new ApiError(resp.status, {});
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const chunk = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message";
            const data = [];
            for (const line of chunk.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
            }
            if (data.length) onEvent(name, JSON.parse(data.join("\n")));
          }
        }
      } catch (e) {
        if (stopped) return;
        if (e instanceof ApiError && e.status === 401) { signOut(); return; }
      }
      if (!stopped) await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  }
  run();
  return () => { stopped = true; if (controller) controller.abort(); };
}

const can = (role) => Boolean(state.me && state.me.can[role]);
const levelName = (level) => t(`level.${level}`);
const stateName = (s) => t(`state.${s}`);
const channelName = (c) => t(`ch.${c}`);

/** Share of receivers reached: devices that confirmed playing or showing, people delivered to. */
function reachedShare(channel, c) {
  if (!c.expected) return 0;
  const reached = DEVICE_CHANNELS.includes(channel) ? c.acknowledged : c.delivered;
  return Math.round((100 * reached) / c.expected);
}

function coverageBars(coverage) {
  const rows = [];
  for (const [channel, c] of Object.entries(coverage || {})) {
    const pct = reachedShare(channel, c);
    const fill = h("span");
    fill.style.width = `${pct}%`;
    rows.push(h("span", {}, channelName(channel)), h("div", { class: "bar" }, fill),
      h("span", { testid: `coverage-${channel}` }, `${pct}%`));
  }
  return rows.length ? h("div", { class: "bars" }, rows) : null;
}

/** A time as warnd sends it (ISO 8601 in the township's zone) the way a duty log writes it: 07-01 08:00. */
function when(iso) {
  if (!iso) return "—";
  const m = /^\d{4}-(\d{2})-(\d{2})T(\d{2}:\d{2})/.exec(iso);
  return m ? `${m[1]}-${m[2]} ${m[3]}` : iso;
}

function badge(cls, text) { return h("span", { class: `badge ${cls}` }, text); }

/** A confirmation step in the page (no browser dialog): `onYes` runs only after "confirm". */
function confirmStep(slot, question, onYes, extra = null) {
  put(slot, h("div", { class: "confirm", testid: "confirm" },
    h("p", {}, question), extra,
    h("button", { class: "btn", testid: "confirm-yes", onclick: async (ev) => {
      ev.target.disabled = true;
      try { await onYes(); } finally { ev.target.disabled = false; }
    } }, t("yes")),
    h("button", { class: "btn secondary", onclick: () => put(slot, ) }, t("no"))));
}

// --- sign-in and the frame ------------------------------------------------------------------

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  location.hash = "#/";
  render();
}

function signInPage() {
  const input = h("input", { type: "password", id: "token", autocomplete: "current-password", testid: "token" });
  const form = h("form", { class: "card", onsubmit: async (ev) => {
    ev.preventDefault();
    showError("");
    const value = input.value.trim();
    if (!value) { showError(t("missing", { fields: t("token") })); return; }
    sessionStorage.setItem(TOKEN_KEY, value);
    try {
      state.me = await api("GET", "/api/v1/me");
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError(errorText(e));
      return;
    }
    render();
  } },
  h("label", { for: "token" }, t("token")), input, h("p", { class: "muted" }, t("token_hint")),
  h("button", { class: "btn", type: "submit", testid: "signin" }, t("signin")));
  return h("div", {}, h("h1", {}, t("title")), form);
}

function header(route) {
  const top = document.getElementById("top");
  const link = (href, key, id) => h("a", { href, class: route === id ? "active" : "", testid: `nav-${id}` }, t(key));
  const langButton = h("button", { testid: "lang", onclick: () => { setLang(lang() === "zh" ? "en" : "zh"); render(); } }, t("lang"));
  if (!state.me) { put(top, h("span", { class: "brand" }, t("title")), langButton); return; }
  put(top, ...[
    h("span", { class: "brand" }, t("title")),
    link("#/", "board", "board"),
    can("operator") ? link("#/issue", "issue", "issue") : null,
    link("#/devices", "devices", "devices"),
    can("approver") ? link("#/audit", "audit", "audit") : null,
    h("span", { class: "who", testid: "who" }, `${state.me.name} · ${t(`role.${state.me.role}`)}`),
    langButton,
    h("button", { testid: "signout", onclick: signOut }, t("signout"))].filter(Boolean));
}

async function render() {
  if (state.cleanup) { state.cleanup(); state.cleanup = null; }
  const main = document.getElementById("main");
  document.title = t("title");
  if (!token()) { header(null); put(main, signInPage()); return; }
  if (!state.me) {
    try { state.me = await api("GET", "/api/v1/me"); } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      header(null);
      put(main, signInPage());
      showError(errorText(e));
      return;
    }
  }
  const hash = location.hash.replace(/^#/, "") || "/";
  const [, page, arg] = hash.split("/");
  const route = page === "w" ? "warning" : (page || "board");
  header(route);
  const pages = { board: boardPage, issue: issuePage, warning: () => warningPage(decodeURIComponent(arg || "")), devices: devicesPage, audit: auditPage };
  put(main, await (pages[route] || boardPage)());
}

// --- board ----------------------------------------------------------------------------------

function boardCard(w) {
  return h("a", { href: `#/w/${encodeURIComponent(w.id)}`, class: `card warning-card lv-${w.level}`, testid: "warning-card", "data-id": w.id },
    h("div", {},
      badge(w.level, `${w.event}${levelName(w.level)}`), " ", badge(w.state, stateName(w.state)),
      w.status !== "actual" ? [" ", badge("", t(`status.${w.status}`))] : null,
      w.pending_change ? [" ", badge("awaiting_approval", t("state.awaiting_approval"))] : null),
    h("div", {}, h("strong", {}, w.headline)),
    h("div", { class: "muted" }, `${t("villages")}: ${w.villages.slice(0, 6).join("、")}${w.villages.length > 6 ? ` …(${w.villages.length})` : ""}`),
    h("div", { class: "muted" }, `${t("onset")}: ${when(w.onset)} · ${t("created")}: ${when(w.created_at)}`),
    coverageBars(w.coverage));
}

function boardPage() {
  const list = h("div", { testid: "board" }, h("p", { class: "muted" }, "…"));
  state.cleanup = stream("/api/v1/events", (name, snap) => {
    if (name !== "board") return;
    put(list, ...(snap.warnings.length ? snap.warnings.map(boardCard) : [h("p", { class: "muted" }, t("board_empty"))]));
  });
  return h("div", {}, h("h1", {}, t("board"), " ", badge("active", t("live"))), list);
}

// --- issue ----------------------------------------------------------------------------------

async function loadVillages() {
  if (!state.villages) state.villages = (await api("GET", "/api/v1/villages")).villages;
  return state.villages;
}

function localInput(id) { return h("input", { type: "datetime-local", id }); }

/** A datetime-local value as ISO 8601 with this browser's offset (the township's own time). */
function isoFromLocal(value) {
  if (!value) return undefined;
  const d = new Date(value);
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? "+" : "-";
  const pad = (n) => String(Math.floor(Math.abs(n))).padStart(2, "0");
  return `${value.length === 16 ? `${value}:00` : value}${sign}${pad(off / 60)}:${pad(off % 60)}`;
}

async function issuePage() {
  if (!can("operator")) {
    const msg = t("viewer_cannot_issue", { role: t(`role.${state.me.role}`) });
    showError(msg);
    return h("div", {}, h("h1", {}, t("issue")), h("p", { testid: "not-allowed" }, msg));
  }
  let villages = [];
  try { villages = await loadVillages(); } catch (e) { showError(errorText(e)); }
  const selected = new Set();
  const f = {
    event: h("input", { type: "text", id: "event", testid: "event" }),
    headline: h("input", { type: "text", id: "headline", testid: "headline" }),
    description: h("textarea", { id: "description", testid: "description" }),
    instruction: h("textarea", { id: "instruction", testid: "instruction" }),
    onset: localInput("onset"),
    expires: localInput("expires"),
    status: h("select", { id: "status", testid: "status" }, ["actual", "exercise"].map((s) => h("option", { value: s }, t(`status.${s}`)))),
  };
  const levelInputs = LEVELS.map((lv) => h("input", { type: "radio", name: "level", value: lv, testid: `level-${lv}` }));
  const level = () => (levelInputs.find((i) => i.checked) || {}).value;
  const setLevel = (lv) => levelInputs.forEach((i) => { i.checked = i.value === lv; });
  const preview = h("div", { testid: "preview" });
  const confirmSlot = h("div");
  const sendButton = h("button", { class: "btn", testid: "send", disabled: true, type: "button" }, t("send"));

  const chips = h("div", { class: "chips", testid: "templates" }, Object.keys(TEMPLATES).map((name) =>
    h("button", { type: "button", testid: `template-${name}`, onclick: (ev) => {
      const tpl = TEMPLATES[name];
      f.event.value = name;
      setLevel(level() || tpl.level);
      f.headline.value = headlineFor(name, level());
      f.description.value = tpl.description;
      f.instruction.value = tpl.instruction;
      chips.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b === ev.target));
      stale();
    } }, name)));
  levelInputs.forEach((i) => i.addEventListener("change", () => {
    if (TEMPLATES[f.event.value]) f.headline.value = headlineFor(f.event.value, level());
    stale();
  }));

  const count = h("span", { class: "muted", testid: "selected-count" });
  const listBox = h("div", { class: "villages", testid: "village-list" });
  const mapBox = h("div");
  const search = h("input", { type: "search", placeholder: t("search"), testid: "village-search", oninput: () => drawVillages() });
  function toggle(code) { if (selected.has(code)) selected.delete(code); else selected.add(code); drawVillages(); stale(); }
  function drawVillages() {
    const q = search.value.trim();
    const shown = villages.filter((v) => !q || v.name.includes(q) || v.code.includes(q));
    // Township → villages: a township's box selects (or clears) all its shown villages.
    const townships = [...new Set(shown.map((v) => v.township))];
    put(listBox, townships.map((code) => {
      const own = shown.filter((v) => v.township === code);
      const all = own.every((v) => selected.has(v.code));
      return [
        h("label", { class: "township" }, h("input", { type: "checkbox", checked: all, testid: `township-${code}`, onchange: () => {
          own.forEach((v) => (all ? selected.delete(v.code) : selected.add(v.code)));
          drawVillages(); stale();
        } }), `${t("township")} ${code}`),
        own.map((v) => h("label", { class: "village" },
          h("input", { type: "checkbox", checked: selected.has(v.code), "data-code": v.code, testid: `village-${v.code}`, onchange: () => toggle(v.code) }),
          `${v.name}${v.test ? "（测试）" : ""}`, h("span", { class: "muted" }, v.code))),
      ];
    }));
    put(mapBox, villageMap(villages, selected, toggle));
    count.textContent = t("selected", { n: selected.size });
  }
  const selectAll = h("button", { type: "button", class: "btn secondary", testid: "select-all", onclick: () => {
    const q = search.value.trim();
    villages.filter((v) => !v.test && (!q || v.name.includes(q))).forEach((v) => selected.add(v.code));
    drawVillages(); stale();
  } }, t("select_all"));
  const clearAll = h("button", { type: "button", class: "btn secondary", onclick: () => { selected.clear(); drawVillages(); stale(); } }, t("clear"));

  function body() {
    const out = {
      event: f.event.value.trim(), level: level(), headline: f.headline.value.trim(),
      description: f.description.value.trim(), instruction: f.instruction.value.trim(),
      area: { codes: [...selected] }, status: f.status.value,
    };
    if (f.onset.value) out.onset = isoFromLocal(f.onset.value);
    if (f.expires.value) out.expires = isoFromLocal(f.expires.value);
    return out;
  }
  function missing(b) {
    const names = [];
    if (!b.event) names.push(t("field.event"));
    if (!b.level) names.push(t("field.level"));
    if (!b.headline) names.push(t("field.headline"));
    if (!b.area.codes.length) names.push(t("field.area"));
    return names;
  }
  function stale() { sendButton.disabled = true; put(preview, ); put(confirmSlot, ); }
  [f.event, f.headline, f.description, f.instruction, f.onset, f.expires, f.status].forEach((i) => i.addEventListener("input", stale));

  async function doPreview() {
    showError("");
    const b = body();
    const absent = missing(b);
    if (absent.length) { showError(t("missing", { fields: absent.join("、") })); return; }
    let p;
    try { p = await api("POST", "/api/v1/warnings/preview", b); } catch (e) { showError(errorText(e)); return; }
    const audioSlot = h("div", { testid: "audio-slot" });
    const audioButton = h("button", { class: "btn secondary", type: "button", testid: "play-audio", onclick: async () => {
      audioButton.disabled = true;
      audioSlot.textContent = t("audio_busy");
      try {
        const resp = await api("POST", "/api/v1/warnings/preview/audio", b, { raw: true });
        const url = URL.createObjectURL(await resp.blob());
        const player = h("audio", { controls: true, src: url, testid: "audio" });
        put(audioSlot, player);
        player.play().catch(() => { /* autoplay may be refused; the controls are there */ });
      } catch (e) { put(audioSlot, ); showError(errorText(e)); }
      audioButton.disabled = false;
    } }, t("audio"));
    const kinds = Object.entries(p.messages || {});
    // People near a provider's daily quota per number: the warning may be the message it blocks.
    const near = p.quota_warnings || [];
    const quota = near.length ? h("div", { class: "quota", testid: "quota-warnings" },
      h("strong", {}, t("quota_title", { n: near.length })),
      h("table", {}, h("tr", {}, h("th", {}, t("person")), h("th", {}, t("channel")), h("th", {}, t("provider")), h("th", {}, t("quota_used"))),
        near.map((q) => h("tr", {}, h("td", {}, q.name || q.person), h("td", {}, channelName(q.channel)), h("td", {}, q.provider),
          h("td", {}, `${q.used} / ${q.limit}`))))) : null;
    put(preview, h("div", { class: "card" },
      h("h2", {}, t("preview_title")),
      quota,
      h("p", {}, `${t("villages")}（${p.villages.length}）：${p.villages.map((v) => v.name).join("、")}`),
      h("h2", {}, t("timeline")),
      h("div", { class: "scroll" }, h("table", { testid: "timeline" },
        h("tr", {}, h("th", {}, t("at")), h("th", {}, t("step")), h("th", {}, t("reaches")), h("th", {}, t("unavailable"))),
        p.schedule.map((s) => h("tr", {}, h("td", {}, when(s.at)), h("td", {}, s.step),
          h("td", {}, Object.entries(s.targets).map(([c, n]) => `${channelName(c)} ${n}`).join("，") || "—"),
          h("td", {}, (s.unavailable_channels || []).map(channelName).join("，") || "—"))))),
      h("h2", {}, t("texts")),
      kinds.slice(0, 1).map(([kind, texts]) => [h("h3", {}, t(`kind.${kind}`)),
        Object.entries(texts).map(([c, text]) => [h("strong", {}, channelName(c)), h("pre", { class: "text", testid: `text-${c}` }, text)])]),
      kinds.length > 1 ? h("details", {}, h("summary", {}, `${t("kind.update")} / ${t("kind.all_clear")} / …`),
        kinds.slice(1).map(([kind, texts]) => [h("h3", {}, t(`kind.${kind}`)),
          Object.entries(texts).map(([c, text]) => [h("strong", {}, channelName(c)), h("pre", { class: "text" }, text)])])) : null,
      audioButton, audioSlot));
    sendButton.disabled = false;
  }

  sendButton.addEventListener("click", () => {
    const b = body();
    const absent = missing(b);
    if (absent.length) { showError(t("missing", { fields: absent.join("、") })); return; }
    confirmStep(confirmSlot, t("confirm_send"), async () => {
      try {
        const r = await api("POST", "/api/v1/warnings", b);
        showNotice(r.state === "awaiting_approval" ? t("issued_waiting") : t("issued"));
        state.keepNotice = true;
        location.hash = `#/w/${encodeURIComponent(r.id)}`;
      } catch (e) { showError(errorText(e)); }
    });
  });

  drawVillages();
  return h("form", { testid: "issue-form", onsubmit: (ev) => ev.preventDefault() },
    h("h1", {}, t("issue")),
    h("label", {}, t("template")), chips,
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "event" }, t("event")), f.event),
      h("div", {}, h("label", {}, t("level")), h("div", { class: "levels" }, levelInputs.map((i) => h("label", {}, i, badge(i.value, levelName(i.value)))))),
      h("div", {}, h("label", { for: "status" }, t("status")), f.status)),
    h("label", { for: "headline" }, t("headline")), f.headline,
    h("label", { for: "description" }, t("description")), f.description,
    h("label", { for: "instruction" }, t("instruction")), f.instruction,
    h("label", {}, t("area"), " ", count),
    h("div", { class: "picker" }, h("div", {}, search, listBox, selectAll, clearAll), h("div", {}, h("div", { class: "muted" }, t("map")), mapBox)),
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "onset" }, t("onset")), f.onset),
      h("div", {}, h("label", { for: "expires" }, t("expires")), f.expires)),
    h("button", { class: "btn secondary", type: "button", testid: "preview-button", onclick: doPreview }, t("preview")),
    sendButton, confirmSlot, preview);
}

// --- a warning's page ---------------------------------------------------------------------

function table(testid, headings, rows) {
  if (!rows.length) return h("p", { class: "muted", testid }, t("none"));
  return h("div", { class: "scroll" }, h("table", { testid },
    h("tr", {}, headings.map((x) => h("th", {}, x))), rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

async function downloadCsv(id) {
  try {
    const resp = await api("GET", `/api/v1/warnings/${encodeURIComponent(id)}/report?format=csv`, undefined, { raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: url, download: `${id}-report.csv` });
    document.body.append(a); a.click(); a.remove();
  } catch (e) { showError(errorText(e)); }
}

function actions(w, slot) {
  const id = encodeURIComponent(w.id);
  const buttons = [];
  const waiting = w.state === "awaiting_approval" || w.pending_change;
  const inForce = w.state === "active" || w.state === "updated";
  if (waiting && can("approver")) {
    buttons.push(h("button", { class: "btn", testid: "approve", onclick: () => confirmStep(slot, t("confirm_approve"), async () => {
      try { await api("POST", `/api/v1/warnings/${id}/approve`); showError(""); showNotice(t("approved")); put(slot, ); } catch (e) { showError(errorText(e)); }
    }) }, t("approve")));
    buttons.push(h("button", { class: "btn danger", testid: "reject", onclick: () => {
      const reason = h("input", { type: "text", testid: "reject-reason", placeholder: t("reject_reason") });
      confirmStep(slot, t("confirm_reject"), async () => {
        if (!reason.value.trim()) { showError(t("missing", { fields: t("field.reason") })); return; }
        try { await api("POST", `/api/v1/warnings/${id}/reject`, { reason: reason.value.trim() }); showError(""); showNotice(t("rejected")); put(slot, ); } catch (e) { showError(errorText(e)); }
      }, reason);
    } }, t("reject")));
  }
  if ((inForce || w.state === "awaiting_approval") && can("operator")) {
    if (inForce) {
      buttons.push(h("button", { class: "btn secondary", testid: "update", onclick: () => {
        const headline = h("input", { type: "text", value: w.headline, testid: "update-headline" });
        const instruction = h("textarea", { testid: "update-instruction" }, w.instruction || "");
        const lv = h("select", { testid: "update-level" }, LEVELS.map((x) => h("option", { value: x, selected: x === w.level }, levelName(x))));
        confirmStep(slot, t("update"), async () => {
          const changes = {};
          if (headline.value.trim() !== w.headline) changes.headline = headline.value.trim();
          if (instruction.value.trim() !== (w.instruction || "")) changes.instruction = instruction.value.trim();
          if (lv.value !== w.level) changes.level = lv.value;
          try {
            const r = await api("POST", `/api/v1/warnings/${id}/update`, changes);
            showError(""); showNotice(r.state === "awaiting_approval" ? t("update_waiting") : t("updated")); put(slot, );
          } catch (e) { showError(errorText(e)); }
        }, [h("label", {}, t("level")), lv, h("label", {}, t("headline")), headline, h("label", {}, t("instruction")), instruction]);
      } }, t("update")));
    }
    buttons.push(h("button", { class: "btn danger", testid: "cancel", onclick: () => {
      const reason = h("input", { type: "text", testid: "cancel-reason", placeholder: t("cancel_reason") });
      confirmStep(slot, t("confirm_cancel"), async () => {
        try {
          const r = await api("POST", `/api/v1/warnings/${id}/cancel`, { reason: reason.value.trim() });
          showError(""); showNotice(r.state === "awaiting_approval" ? t("cancel_waiting") : t("cancelled")); put(slot, );
        } catch (e) { showError(errorText(e)); }
      }, reason);
    } }, t("cancel")));
  }
  buttons.push(h("button", { class: "btn secondary", testid: "report-csv", onclick: () => downloadCsv(w.id) }, t("report_csv")));
  return buttons;
}

function warningPage(id) {
  const head = h("div");
  const buttons = h("div");
  const slot = h("div");
  const body = h("div", { testid: "warning-body" }, h("p", { class: "muted" }, "…"));
  let shownState = null;
  state.cleanup = stream(`/api/v1/events?warning_id=${encodeURIComponent(id)}`, (name, snap) => {
    if (name !== "warning") return;
    const { warning: w, report: rep, replies } = snap;
    put(head, 
      h("h1", {}, badge(w.level, `${w.event}${levelName(w.level)}`), " ", w.headline),
      h("p", {}, badge(w.state, stateName(w.state)), " ", h("span", { testid: "state", "data-state": w.state }, stateName(w.state)),
        ` · ${t("version")} ${w.version} · ${t("drafted_by")}: ${w.drafted_by || "—"}`),
      w.state === "awaiting_approval" && w.drafted_by === state.me.name && can("approver") ? h("p", { class: "muted" }, t("drafted_by_you")) : null,
      w.pending_change ? h("p", { class: "confirm", testid: "pending-change" }, t("pending_change", { kind: t(`kind.${w.pending_change.kind === "cancel" ? "all_clear" : "update"}`), who: w.pending_change.drafted_by })) : null,
      h("p", {}, w.instruction || ""),
      coverageBars(w.coverage));
    // The buttons are redrawn only when the state changes, so an open confirmation stays open.
    const key = `${w.state}|${Boolean(w.pending_change)}`;
    if (key !== shownState) { shownState = key; put(slot, ); put(buttons, ...actions(w, slot)); }
    const counts = (c) => [c.expected, c.sent, c.delivered, c.acknowledged, c.failed];
    put(body, 
      h("h2", {}, t("per_village")),
      table("per-village", [t("villages"), t("channel"), t("expected"), t("sent"), t("delivered"), t("confirmed"), t("failed")],
        rep.villages.flatMap((v) => Object.entries(v.channels).map(([c, n]) => [v.name, channelName(c), ...counts(n)]))),
      h("h2", {}, t("unconfirmed")),
      table("unconfirmed", [t("name"), t("role"), t("phone"), t("villages")],
        rep.unconfirmed.map((u) => [u.name || u.person_id, u.role ? t(`prole.${u.role}`) : "",
          u.phone ? h("a", { href: `tel:${u.phone}` }, u.phone) : "—", u.villages.join(" ")])),
      h("h2", {}, t("not_played")),
      table("not-played", [t("device"), t("villages"), t("state")], rep.speakers_not_played.map((s) => [s.device, s.village, s.state])),
      h("h2", {}, t("escalations")),
      table("escalations", [t("at"), t("name"), t("kind"), t("detail")], rep.escalations.map((e) => [when(e.at), e.person_id, channelName(e.channel), e.skipped || e.reason])),
      h("h2", {}, t("replies")),
      replies.length ? h("div", { testid: "replies" }, replies.map((r) => h("div", { class: "reply" }, h("strong", {}, `${r.name || r.person_id || ""} ${r.phone || ""} ${when(r.at)}`), h("div", {}, r.body))))
        : h("p", { class: "muted" }, t("none")),
      h("h2", {}, t("schedule")),
      table("schedule", [t("at"), t("step"), t("state")], (w.schedule || []).map((s) => [when(s.at), s.step, s.state])));
  });
  return h("div", {}, h("p", {}, h("a", { href: "#/" }, `← ${t("back")}`)), head, buttons, slot, body);
}

// --- devices and audit ----------------------------------------------------------------------

function devicesPage() {
  const box = h("div", { testid: "devices" }, h("p", { class: "muted" }, "…"));
  let names = {};
  let last = null;
  function draw() {
    if (!last) return;
    put(box, table("device-table", [t("villages"), t("device"), t("kind"), t("state"), t("last_seen")],
      last.devices.map((d) => [names[d.village] || d.village, d.id, d.kind === "led" ? t("led_board") : t("speaker"),
        h("span", { class: d.state === "online" ? "online" : d.state === "offline" ? "offline" : "muted" }, t(`dev.${d.state}`)), when(d.last_seen)])));
  }
  loadVillages().then((vs) => { names = Object.fromEntries(vs.map((v) => [v.code, v.name])); draw(); },
    (e) => showError(errorText(e)));
  // Live: a speaker or board going off- or online shows within seconds, without a refresh.
  state.cleanup = stream("/api/v1/events?view=devices", (name, snap) => {
    if (name !== "devices") return;
    last = snap;
    draw();
  });
  return h("div", {}, h("h1", {}, t("devices"), " ", badge("active", t("live"))), box);
}

function auditPage() {
  if (!can("approver")) { showError(t("not_allowed")); return h("p", {}, t("not_allowed")); }
  const box = h("div", { testid: "audit-live" }, h("p", { class: "muted" }, "…"));
  // Live: what another operator or approver does appears at the top without a refresh.
  state.cleanup = stream("/api/v1/events?view=audit", (name, snap) => {
    if (name !== "audit") return;
    put(box, table("audit", [t("at"), t("actor"), t("action"), t("warning"), t("remote"), t("detail")],
      snap.events.map((e) => [when(e.at), e.actor, t(`act.${e.action}`), e.warning_id ? h("a", { href: `#/w/${encodeURIComponent(e.warning_id)}` }, e.warning_id) : "—",
        e.remote || "—", JSON.stringify(e.detail)])));
  });
  return h("div", {}, h("h1", {}, t("audit"), " ", badge("active", t("live"))), box);
}

// --- start ----------------------------------------------------------------------------------

setLang(lang());
window.addEventListener("hashchange", () => {
  // A notice said on the way to a page (the issued warning's) stays on that page only.
  if (!state.keepNotice) showNotice("");
  state.keepNotice = false;
  showError("");
  render();
});
render();
