// The onceflight dashboard. It polls the API every two seconds and redraws
// the page in place; it keeps no state beyond the token (in sessionStorage)
// and a few minutes of /metrics samples for the chart.
//
// Every value that came from the server (keys, kinds, owners, error messages,
// results) reaches the DOM through textContent or createTextNode only: any
// client with a token can choose them, and innerHTML would make them markup.
// The Content-Security-Policy the server sends forbids inline script anyway.

const REFRESH_MS = 2000;
const REQUEST_TIMEOUT_MS = 10_000;
// Rows per table: a dashboard is for a glance; the filters narrow it down.
const ROWS = 50;
// Results longer than this (as pretty-printed JSON) are cut in the detail
// view, so that a multi-megabyte result cannot freeze the page.
const RESULT_LIMIT_CHARS = 20_000;
// The chart: 60 buckets of 5 s, five minutes of this server's claims.
const BUCKET_MS = 5_000;
const BUCKETS = 60;
const TOKEN_KEY = "onceflight.token";

const SERIES = [
  { name: "claims", outcomes: ["acquired", "retry", "takeover", "in_flight", "completed", "failed"] },
  { name: "hits", outcomes: ["completed"] },
  { name: "takeovers", outcomes: ["takeover"] },
  { name: "failures", outcomes: ["failed"] },
];

const $ = (id) => document.getElementById(id);

// ---- The token -------------------------------------------------------------

// sessionStorage, not localStorage: the token is forgotten with the tab, and
// it is never put in a URL (URLs end up in history and logs).
function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (a privacy mode): the token lives only until reload.
    memoryToken = value;
  }
  showTokenState();
}

let memoryToken = "";

function currentToken() {
  return token() || memoryToken;
}

function showTokenState() {
  $("token-state").textContent = currentToken() ? "token set for this tab" : "no token";
}

// ---- Talking to the API ----------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Fetches `path` from this server with the token; answers the parsed JSON
// body (or text, for /metrics), and when it arrived by the page's monotonic
// clock, which the lease countdowns count from.
async function api(path, { method = "GET", text = false } = {}) {
  const headers = {};
  const bearer = currentToken();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      cache: "no-store",
      credentials: "omit",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the server (${err.name === "TimeoutError" ? "timed out" : "network error"})`);
  }
  const receivedAt = performance.now();
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && body.error) {
        code = String(body.error.code);
        message = String(body.error.message);
      }
    } catch {
      // Not the API's error body (a proxy's page): keep the status line.
    }
    throw new ApiError(response.status, code, message);
  }
  if (response.status === 204) return { body: null, receivedAt };
  const body = text ? await response.text() : await response.json();
  return { body, receivedAt };
}

function recordPath(key) {
  return `/v1/requests/${encodeURIComponent(key)}`;
}

function listPath(params) {
  const query = new URLSearchParams(params);
  const kind = $("filter-kind").value.trim();
  const prefix = $("filter-prefix").value;
  if (kind) query.set("kind", kind);
  if (prefix) query.set("prefix", prefix);
  query.set("limit", String(ROWS));
  return `/v1/requests?${query}`;
}

// ---- Formatting ------------------------------------------------------------

function formatDuration(ms) {
  if (ms == null) return "–";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function formatTime(rfc3339) {
  if (!rfc3339) return "–";
  const date = new Date(rfc3339);
  return Number.isNaN(date.getTime()) ? String(rfc3339) : date.toLocaleString();
}

// A cell holding `value` as text, with the full value as its tooltip when
// the cell shortens it.
function cell(value, { title, className } = {}) {
  const td = document.createElement("td");
  td.textContent = value == null || value === "" ? "–" : String(value);
  if (title) td.title = title;
  if (className) td.className = className;
  return td;
}

// A cell holding one button labelled `label` (as text) that calls `onClick`.
function buttonCell(label, className, onClick, title) {
  const td = document.createElement("td");
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.textContent = label;
  if (title) button.title = title;
  button.addEventListener("click", onClick);
  td.append(button);
  return td;
}

function keyCell(key) {
  return buttonCell(key, "key-link", () => openDetail(key), "Show this record");
}

function deleteCell(key) {
  return buttonCell("Delete", "danger small-button", () => confirmDelete(key));
}

// ---- Lease countdowns ------------------------------------------------------

// A countdown runs from the record's `lease_ms`, the time the server said was
// left when it answered, counted down by the page's monotonic clock from the
// moment the answer arrived. Neither the browser's wall clock nor its offset
// from the server's enters into it, so a skewed laptop still shows the right
// time left (off by at most the answer's transit time).
const countdowns = [];

function countdownCell(record, receivedAt) {
  const td = document.createElement("td");
  td.className = "countdown";
  const entry = { td, leaseMs: record.lease_ms, receivedAt };
  countdowns.push(entry);
  paintCountdown(entry, performance.now());
  if (record.lease_expires_at) td.title = `ends ${record.lease_expires_at}`;
  return td;
}

function paintCountdown(entry, now) {
  if (entry.leaseMs == null) {
    entry.td.textContent = "–";
    return;
  }
  const left = entry.leaseMs - (now - entry.receivedAt);
  entry.td.textContent = left > 0 ? formatDuration(left + 999) : "over (takeover allowed)";
  entry.td.classList.toggle("over", left <= 0);
}

function tickCountdowns() {
  const now = performance.now();
  for (const entry of countdowns) if (entry.td.isConnected) paintCountdown(entry, now);
}

// ---- Tables ----------------------------------------------------------------

const TABLES = {
  inflight: {
    // Oldest first: the longest-running jobs are the interesting ones. Stuck
    // records are listed apart, so the live ones are kept here.
    params: { state: "processing", order: "oldest" },
    keep: (r) => !r.lease_expired,
    row: (r, at) => [keyCell(r.key), cell(r.kind), cell(r.owner), cell(r.attempt), countdownCell(r, at), deleteCell(r.key)],
  },
  stuck: {
    params: { state: "processing", stuck: "true", order: "oldest" },
    row: (r) => [
      keyCell(r.key),
      cell(r.kind),
      cell(r.owner),
      cell(r.attempt),
      cell(formatTime(r.lease_expires_at), { title: r.lease_expires_at }),
      deleteCell(r.key),
    ],
  },
  failed: {
    params: { state: "failed", order: "newest" },
    row: (r, at) => [
      keyCell(r.key),
      cell(r.kind),
      cell(r.error ? r.error.message : null, { className: "message" }),
      cell(r.error ? (r.error.retryable ? "yes" : "no") : null),
      retryCell(r, at),
      cell(`${r.attempt} of ${r.max_attempts ?? "?"}`),
      deleteCell(r.key),
    ],
  },
  completed: {
    params: { state: "completed", order: "newest" },
    row: (r) => [
      keyCell(r.key),
      cell(r.kind),
      cell(r.owner),
      cell(r.attempt),
      cell(formatTime(r.completed_at), { title: r.completed_at }),
      deleteCell(r.key),
    ],
  },
};

// When a claim may retry a failure: `retry_after_ms` is the server's answer
// (null: never). The instant shown is that delay added to the moment the
// answer arrived, converted to wall time only for display.
function retryCell(record, receivedAt) {
  if (record.retry_after_ms == null) return cell("never", { className: "never" });
  if (record.retry_after_ms === 0) return cell("now");
  const at = new Date(Date.now() - (performance.now() - receivedAt) + record.retry_after_ms);
  return cell(`${at.toLocaleTimeString()} (in ${formatDuration(record.retry_after_ms + 999)})`, { title: at.toISOString() });
}

function fillTable(name, page, receivedAt) {
  const spec = TABLES[name];
  const records = spec.keep ? page.records.filter(spec.keep) : page.records;
  const rows = records.map((record) => {
    const tr = document.createElement("tr");
    tr.dataset.key = record.key;
    tr.append(...spec.row(record, receivedAt));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = document.createElement("td");
    td.colSpan = $(name).tHead.rows[0].cells.length;
    td.textContent = "none";
    tr.append(td);
    rows.push(tr);
  }
  $(`${name}-rows`).replaceChildren(...rows);
  $(`${name}-note`).textContent = page.next_cursor ? `first ${ROWS} shown; narrow them with the filters` : "";
}

function clearData() {
  countdowns.length = 0;
  for (const name of Object.keys(TABLES)) {
    $(`${name}-rows`).replaceChildren();
    $(`${name}-note`).textContent = "";
  }
  for (const id of ["count-processing", "count-completed", "count-failed", "count-total", "leases-live", "leases-expired", "oldest-lease"]) {
    $(id).textContent = "–";
  }
  $("stats-as-of").textContent = "";
  $("updated").textContent = "";
}

function fillStats(stats) {
  $("count-processing").textContent = String(stats.records.processing);
  $("count-completed").textContent = String(stats.records.completed);
  $("count-failed").textContent = String(stats.records.failed);
  $("count-total").textContent = String(stats.records.total);
  $("leases-live").textContent = String(stats.leases.live);
  $("leases-expired").textContent = String(stats.leases.expired);
  $("oldest-lease").textContent = stats.oldest_live_lease_ms == null ? "none" : formatDuration(stats.oldest_live_lease_ms);
  const cached = stats.max_age_ms ? ` (counts may be up to ${formatDuration(stats.max_age_ms)} old)` : "";
  $("stats-as-of").textContent = `Counts of every record in this namespace as of ${formatTime(stats.as_of)}${cached}; the tables list at most ${ROWS} rows each.`;
}

// ---- The chart -------------------------------------------------------------

// Samples of the claim counters: { at: performance.now(), counts: {outcome: n} }.
// The counters belong to this server process; the chart shows how much each
// grew between samples, summed into buckets. A counter that went down means
// the server restarted, and its new value is all that was counted since.
// Buckets are fixed slices of the page's clock (not slices counted back from
// each redraw), so a sample stays in its bucket and the lines do not jitter;
// the last bucket is the one still filling.
const samples = [];

function parseClaims(text) {
  const counts = {};
  for (const line of text.split("\n")) {
    const match = /^onceflight_claims_total\{outcome="([a-z_]+)"\} ([0-9.eE+]+)$/.exec(line.trim());
    if (match) counts[match[1]] = Number(match[2]);
  }
  return counts;
}

function addSample(counts, at) {
  samples.push({ at, counts });
  const horizon = at - BUCKET_MS * (BUCKETS + 1);
  while (samples.length > 2 && samples[1].at < horizon) samples.shift();
}

function buckets(now) {
  const series = SERIES.map(() => new Array(BUCKETS).fill(0));
  const current = Math.floor(now / BUCKET_MS);
  for (let i = 1; i < samples.length; i++) {
    const bucket = BUCKETS - 1 - (current - Math.floor(samples[i].at / BUCKET_MS));
    if (bucket < 0 || bucket >= BUCKETS) continue;
    SERIES.forEach((s, n) => {
      for (const outcome of s.outcomes) {
        const before = samples[i - 1].counts[outcome] ?? 0;
        const after = samples[i].counts[outcome] ?? 0;
        series[n][bucket] += after >= before ? after - before : after;
      }
    });
  }
  return series;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [attribute, value] of Object.entries(attributes)) element.setAttribute(attribute, String(value));
  return element;
}

function drawChart() {
  // The drawing is as wide as its box, so that text in it keeps its size.
  const width = Math.max(320, Math.round($("chart").clientWidth) || 900);
  const height = 160;
  const pad = { left: 40, right: 8, top: 8, bottom: 20 };
  const data = buckets(performance.now());
  const max = Math.max(1, ...data.flat());
  const x = (i) => pad.left + (i * (width - pad.left - pad.right)) / (BUCKETS - 1);
  const y = (v) => height - pad.bottom - (v * (height - pad.top - pad.bottom)) / max;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "claims per 5 seconds" });
  for (const v of [0, max / 2, max]) {
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: pad.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = String(Math.round(v));
    root.append(label);
  }
  for (const [i, text] of [[0, "−5 min"], [BUCKETS / 2, "−2.5 min"], [BUCKETS - 1, "now"]]) {
    const label = svg("text", { x: x(i), y: height - 4, class: "axis", "text-anchor": i === 0 ? "start" : i === BUCKETS - 1 ? "end" : "middle" });
    label.textContent = text;
    root.append(label);
  }
  SERIES.forEach((s, n) => {
    const points = data[n].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, class: `series ${s.name}` }));
  });
  $("chart").replaceChildren(root);
}

// ---- The refresh loop ------------------------------------------------------

function showError(err) {
  const banner = $("banner");
  let text;
  if (err.status === 401) {
    text = currentToken()
      ? "The server refused this token (401 unauthorized). Enter a valid one above."
      : "This server needs a bearer token (401 unauthorized). Enter one above.";
  } else if (err.status === 0) {
    text = `Cannot reach the server: ${err.message}. Showing the last data received, if any.`;
  } else {
    text = `The server answered ${err.status} ${err.code}: ${err.message}. Showing the last data received, if any.`;
  }
  banner.textContent = text;
  banner.classList.remove("hidden");
  // A refused token must not leave another namespace's data on screen; on
  // other errors the last data stays, greyed out, with the banner saying so.
  if (err.status === 401) clearData();
  $("data").classList.toggle("stale", err.status !== 401);
}

function hideError() {
  $("banner").classList.add("hidden");
  $("banner").textContent = "";
  $("data").classList.remove("stale");
}

let refreshing = null;
let again = false;
let timer = null;

async function refreshOnce() {
  const names = Object.keys(TABLES);
  const metrics = api("/metrics", { text: true }).catch(() => null);
  try {
    const [stats, ...pages] = await Promise.all([
      api("/v1/stats"),
      ...names.map((name) => api(listPath(TABLES[name].params))),
    ]);
    countdowns.length = 0;
    fillStats(stats.body);
    names.forEach((name, i) => fillTable(name, pages[i].body, pages[i].receivedAt));
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    hideError();
  } catch (err) {
    showError(err instanceof ApiError ? err : new ApiError(0, "error", String(err && err.message)));
  }
  const scraped = await metrics;
  if (scraped) addSample(parseClaims(scraped.body), scraped.receivedAt);
  drawChart();
}

// One refresh at a time; the next one is scheduled when this one ends, so a
// slow server is never asked again before it answered. A refresh asked for
// while one runs (a new token, a new filter) runs right after it, so what the
// older one read never stays on screen for long.
function refresh() {
  if (refreshing) {
    again = true;
    return refreshing;
  }
  clearTimeout(timer);
  again = false;
  refreshing = refreshOnce().finally(() => {
    refreshing = null;
    timer = setTimeout(refresh, again ? 0 : REFRESH_MS);
  });
  return refreshing;
}

// ---- Detail, delete --------------------------------------------------------

let detailKey = null;

function field(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value == null ? "null" : typeof value === "object" ? JSON.stringify(value) : String(value);
  list.append(dt, dd);
}

async function openDetail(key) {
  detailKey = key;
  const dialog = $("detail");
  $("detail-title").textContent = key;
  $("detail-fields").replaceChildren();
  $("detail-result").textContent = "loading…";
  $("detail-result-note").textContent = "";
  $("detail-error").classList.add("hidden");
  if (!dialog.open) dialog.showModal();
  try {
    const { body: record } = await api(recordPath(key));
    if (detailKey !== key) return;
    const list = $("detail-fields");
    for (const [name, value] of Object.entries(record)) {
      if (name !== "result") field(list, name, value);
    }
    const pretty = record.result === null || record.result === undefined ? "null" : JSON.stringify(record.result, null, 2);
    if (pretty.length > RESULT_LIMIT_CHARS) {
      $("detail-result").textContent = pretty.slice(0, RESULT_LIMIT_CHARS);
      $("detail-result-note").textContent =
        `Truncated: showing the first ${Math.round(RESULT_LIMIT_CHARS / 1000)} kB of ${Math.round(pretty.length / 1000)} kB of pretty-printed JSON.`;
    } else {
      $("detail-result").textContent = pretty;
    }
  } catch (err) {
    if (detailKey !== key) return;
    $("detail-result").textContent = "";
    const box = $("detail-error");
    box.textContent = err.status === 404 ? "This record no longer exists." : `Cannot load the record: ${err.code}: ${err.message}`;
    box.classList.remove("hidden");
  }
}

let pendingDelete = null;

function confirmDelete(key) {
  pendingDelete = key;
  $("confirm-key").textContent = key;
  $("confirm").showModal();
}

async function deleteConfirmed() {
  const key = pendingDelete;
  pendingDelete = null;
  $("confirm").close();
  if (key == null) return;
  try {
    await api(recordPath(key), { method: "DELETE" });
  } catch (err) {
    // 404: someone else deleted it first, which is what was asked for.
    if (err.status !== 404) showError(err);
  }
  if ($("detail").open && detailKey === key) $("detail").close();
  await refresh();
}

// ---- Wiring ----------------------------------------------------------------

function debounce(fn, ms) {
  let handle;
  return () => {
    clearTimeout(handle);
    handle = setTimeout(fn, ms);
  };
}

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    setToken(input.value.trim());
    input.value = "";
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    setToken("");
    clearData();
    refresh();
  });
  const refilter = debounce(refresh, 300);
  $("filter-kind").addEventListener("input", refilter);
  $("filter-prefix").addEventListener("input", refilter);
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail-delete").addEventListener("click", () => detailKey != null && confirmDelete(detailKey));
  $("detail").addEventListener("close", () => {
    detailKey = null;
  });
  $("confirm-cancel").addEventListener("click", () => {
    pendingDelete = null;
    $("confirm").close();
  });
  $("confirm-delete").addEventListener("click", deleteConfirmed);
  showTokenState();
  setInterval(tickCountdowns, 1000);
  refresh();
}

start();
