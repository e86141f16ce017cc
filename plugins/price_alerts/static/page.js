// The "Price alerts" page: reads /price-alerts/api/history and draws it as SVG (no library, no network
// beyond this server). Record text only ever enters the page through textContent, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const SLOT_MS = 300000;
const PAGE_ROWS = 200;
const SENT = new Set(["notified"]); // other decisions (notify, publishing, suppressed_*) are not a sent alert
const WIDTH = 1200;
const MARGIN = { left: 70, right: 10, top: 10, bottom: 22 };

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svgEl(tag, attrs = {}, title) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (title) node.appendChild(svgEl("title")).textContent = title;
  return node;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "" : Number(value).toFixed(digits);
}

function when(iso) {
  return iso.replace("T", " ").replace(/:00Z$/, "");
}

function isBreach(row, threshold) {
  const limit = row.threshold_pct ?? threshold;
  return row.change_pct !== null && Math.abs(row.change_pct) > limit;
}

// The markers of a window: for another pair, one per rule that fired (sent or not; the server says which);
// for the default pair, its breach.
function firings(row, threshold) {
  if (row.price === null) return [];
  if (row.fired) return row.fired.map((f) => ({ up: f.direction === "up", decision: f.decision, rule: f.rule }));
  if (!(SENT.has(row.decision) || isBreach(row, threshold))) return [];
  return [{ up: (row.change_pct ?? 0) > 0 || row.direction === "up", decision: row.decision, rule: "" }];
}

function levels(data) {
  return (data.rules ?? []).filter((rule) => rule.kind === "crossing").map((rule) => rule.level);
}

// A long range's steps (the server's envelope: each step's lowest and highest value, null: none), each at
// the middle of its time.
function steps(data, field) {
  if (!data.envelope) return [];
  const start = Date.parse(data.start);
  const step = data.envelope.step_seconds * 1000;
  return data.envelope[field]
    .map((span, index) => span && { t: start + index * step + step / 2, low: span[0], high: span[1] })
    .filter(Boolean);
}

function scale(domainMin, domainMax, rangeMin, rangeMax) {
  const span = domainMax - domainMin || 1;
  return (value) => rangeMin + ((value - domainMin) / span) * (rangeMax - rangeMin);
}

function axis(svg, x, height, start, end, yTicks) {
  const group = svg.appendChild(svgEl("g", { class: "axis" }));
  const bottom = height - MARGIN.bottom;
  group.appendChild(svgEl("path", { d: `M${MARGIN.left},${bottom}H${WIDTH - MARGIN.right}` }));
  for (let i = 0; i <= 4; i++) {
    const t = start + ((end - start) * i) / 4;
    const label = new Date(t).toISOString().slice(5, 16).replace("T", " ");
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    group.appendChild(svgEl("text", { x: x(t), y: height - 6, "text-anchor": anchor })).textContent = label;
  }
  for (const [value, y] of yTicks) {
    group.appendChild(svgEl("text", { x: MARGIN.left - 6, y: y + 4, "text-anchor": "end" })).textContent = value;
    group.appendChild(svgEl("line", { x1: MARGIN.left - 3, x2: MARGIN.left, y1: y, y2: y }));
  }
}

function drawPrice(data, focus) {
  const height = 280;
  const start = Date.parse(data.start);
  const end = Date.parse(data.end);
  const rows = data.windows;
  const envelope = steps(data, "price");
  const prices = [
    ...rows.filter((r) => r.price !== null).map((r) => r.price),
    ...envelope.flatMap((s) => [s.low, s.high]),
  ];
  const lines = levels(data);
  const svg = svgEl("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "weighted average" });
  const x = scale(start, end, MARGIN.left, WIDTH - MARGIN.right);
  const low = prices.length || lines.length ? Math.min(...prices, ...lines) : 0;
  const high = prices.length || lines.length ? Math.max(...prices, ...lines) : 1;
  // 16 px inside the plot at both ends: room for the alert markers above and below the line.
  const y = scale(low, high === low ? low + 1 : high, height - MARGIN.bottom - 16, MARGIN.top + 16);
  let line = "";
  let gaps = "";
  let previous = null;
  for (const row of rows) {
    const t = Date.parse(row.window_start);
    if (row.price === null) {
      if (row.decision === "missing") gaps += `M${x(t).toFixed(1)},${height - MARGIN.bottom}v-6`;
      previous = null;
      continue;
    }
    if (envelope.length) continue; // over a long range the listed rows are not neighbours: the envelope is the line
    const point = `${x(t).toFixed(1)},${y(row.price).toFixed(1)}`;
    line += previous === null || t - previous > SLOT_MS ? `M${point}` : `L${point}`;
    previous = t;
  }
  // A step a pixel wide from its lowest to its highest price (at least a pixel tall).
  for (const { t, low, high } of envelope) line += `M${x(t).toFixed(1)},${(y(high) - 0.5).toFixed(1)}V${(y(low) + 0.5).toFixed(1)}`;
  for (const level of lines) {
    const at = y(level).toFixed(1);
    svg.appendChild(
      svgEl("path", { class: "level", d: `M${MARGIN.left},${at}H${WIDTH - MARGIN.right}`, "data-level": level }, `level ${level}`),
    );
  }
  svg.appendChild(svgEl("path", { class: "gap", d: gaps || "M0,0" }));
  svg.appendChild(svgEl("path", { class: "price", d: line || "M0,0" }));
  // A price with no neighbour (missing windows on both sides) has no segment: draw it as a dot.
  rows.forEach((row, index) => {
    if (envelope.length || row.price === null || rows[index - 1]?.price != null || rows[index + 1]?.price != null) return;
    svg.appendChild(svgEl("circle", { class: "point", r: 2.5, cx: x(Date.parse(row.window_start)), cy: y(row.price) }));
  });
  for (const row of rows) {
    const marks = firings(row, data.threshold_pct);
    marks.forEach(({ up, decision, rule }, index) => {
      const cx = x(Date.parse(row.window_start)) + (index - (marks.length - 1) / 2) * 11; // side by side
      const cy = y(row.price);
      const d = up ? `M${cx},${cy - 14}l-5,9h10z` : `M${cx},${cy + 14}l-5,-9h10z`;
      const sent = SENT.has(decision) ? "sent" : "unsent";
      const classes = ["marker", up ? "up" : "down", decision === "pending" ? "pending" : sent];
      if (focus && row.window_start >= focus.start && row.window_start < focus.end) classes.push("focus");
      const what = rule ? `${rule} ${decision}` : decision;
      const title = `${when(row.window_start)} ${what}: ${fmt(row.change_pct, 2)}% at ${fmt(row.price, 4)}`;
      const attrs = { class: classes.join(" "), d, "data-window": row.window_start, "data-decision": decision };
      svg.appendChild(svgEl("path", rule ? { ...attrs, "data-rule": rule } : attrs, title));
    });
  }
  axis(svg, x, height, start, end, [
    [fmt(high, 2), y(high)],
    [fmt(low, 2), y(low)],
  ]);
  return svg;
}

function drawChange(data) {
  const height = 170;
  const start = Date.parse(data.start);
  const end = Date.parse(data.end);
  const rows = data.windows.filter((r) => r.change_pct !== null);
  const quiet = steps(data, "change"); // a long range's quiet windows, a bar a step
  const threshold = data.threshold_pct; // null: another pair without a change rule (no band)
  const extent = Math.max(
    (threshold ?? 0) * 1.5,
    ...rows.map((r) => Math.abs(r.change_pct)),
    ...quiet.flatMap((s) => [Math.abs(s.low), Math.abs(s.high)]),
  );
  const svg = svgEl("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "% change" });
  const x = scale(start, end, MARGIN.left, WIDTH - MARGIN.right);
  const y = scale(-extent, extent, height - MARGIN.bottom, MARGIN.top);
  if (threshold !== null) {
    const bandTop = y(threshold);
    svg.appendChild(
      svgEl(
        "rect",
        { class: "band", x: MARGIN.left, y: bandTop, width: WIDTH - MARGIN.left - MARGIN.right, height: y(-threshold) - bandTop },
        `threshold ±${threshold}%`,
      ),
    );
  }
  const paths = { within: "", up: "", down: "" };
  const zero = y(0).toFixed(1);
  for (const row of rows) {
    const fired = row.fired ? row.fired.length > 0 : isBreach(row, threshold);
    const kind = !fired ? "within" : row.change_pct > 0 ? "up" : "down";
    paths[kind] += `M${x(Date.parse(row.window_start)).toFixed(1)},${zero}V${y(row.change_pct).toFixed(1)}`;
  }
  for (const { t, low, high } of quiet) paths.within += `M${x(t).toFixed(1)},${y(Math.max(high, 0)).toFixed(1)}V${y(Math.min(low, 0)).toFixed(1)}`;
  for (const [kind, d] of Object.entries(paths)) svg.appendChild(svgEl("path", { class: `bars ${kind}`, d: d || "M0,0" }));
  const ticks = threshold === null ? [["0", y(0)]] : [
    [`+${fmt(threshold, 2)}%`, y(threshold)],
    ["0", y(0)],
    [`-${fmt(threshold, 2)}%`, y(-threshold)],
  ];
  axis(svg, x, height, start, end, ticks);
  return svg;
}

// Every window's decision: the listed rows' and, over a long range, those of the quiet windows not listed.
function countDecisions(data) {
  const counts = { ...(data.unlisted_counts ?? {}) };
  for (const row of data.windows) counts[row.decision] = (counts[row.decision] ?? 0) + 1;
  return Object.fromEntries(Object.entries(counts).sort());
}

function drawCounts(data) {
  const box = document.getElementById("counts");
  box.replaceChildren();
  const select = document.getElementById("decision");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"));
  for (const [decision, count] of Object.entries(countDecisions(data))) {
    box.appendChild(el("span", { "data-decision": decision }, `${decision}: ${count}`));
    select.appendChild(el("option", { value: decision }, `${decision} (${count})`));
  }
  select.value = chosen;
  box.appendChild(el("span", { "data-decision": "quarantined" }, `quarantined objects: ${data.quarantined.length}`));
}

function openInUi(event) {
  // Inside the UI's iframe (sandboxed, same origin) a link may not navigate the top window itself:
  // the UI's own document follows it instead.
  if (window.top === window) return;
  event.preventDefault();
  const link = window.top.document.createElement("a");
  link.href = event.currentTarget.href;
  window.top.document.body.appendChild(link);
  link.click();
  link.remove();
}

function cell(text, className) {
  return el("td", className ? { class: className } : {}, text);
}

// The price cell; a price the Glue job took as the typical price (the record's exchange gives no quote volume
// to derive the weighted average from) says it is an approximation.
function priceCell(row) {
  const td = cell(fmt(row.price, 4), "num");
  if (row.price !== null && row.price_basis === "typical_price") {
    const attrs = { class: "basis", "data-basis": row.price_basis, title: "not a volume-weighted average" };
    td.append(" ", el("span", attrs, "≈ typical price (h+l+c)/3"));
  }
  return td;
}

function drawTable(data, focus, decision, page) {
  const rows = data.windows.filter((r) => !decision || r.decision === decision).reverse();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  page = Math.min(page, pages - 1);
  const body = document.querySelector("#windows tbody");
  body.replaceChildren();
  for (const row of rows.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS)) {
    const tr = el("tr", { "data-window": row.window_start, "data-decision": row.decision });
    if (focus && row.window_start >= focus.start && row.window_start < focus.end) tr.classList.add("focus");
    const computed = row.source === "parquet" ? "computed" : "";
    tr.append(
      cell(when(row.window_start)),
      priceCell(row),
      cell(fmt(row.change_pct, 4), "num"),
      cell(fmt(row.threshold_pct, 2), "num"),
      cell(row.decision, computed),
      cell(row.reason ?? (computed ? "from the Parquet price (ledger not read)" : ""), computed),
      cell(row.sns_message_id ?? "", "key"),
    );
    const run = el("td");
    if (row.run_url) {
      const link = run.appendChild(el("a", { href: row.run_url, class: "run" }, "run"));
      link.addEventListener("click", openInUi);
    }
    tr.appendChild(run);
    body.appendChild(tr);
  }
  const pager = document.getElementById("pager");
  pager.replaceChildren(el("span", {}, `${rows.length} windows, page ${page + 1} of ${pages} (newest first)`));
  for (const [label, target] of [["newer", page - 1], ["older", page + 1]]) {
    const button = pager.appendChild(el("button", { type: "button" }, label));
    button.disabled = target < 0 || target >= pages;
    button.addEventListener("click", () => drawTable(data, focus, decision, target));
  }
}

function drawQuarantine(data) {
  const body = document.querySelector("#quarantine tbody");
  body.replaceChildren();
  for (const item of data.quarantined) {
    const tr = el("tr", { "data-window": item.window_start });
    tr.append(
      cell(when(item.window_start)),
      cell(item.reason ?? ""),
      cell(item.source_key ?? "", "key"),
      cell(item.key, "key"),
      cell(item.reason_key ?? "", "key"),
    );
    body.appendChild(tr);
  }
  if (!data.quarantined.length) body.appendChild(el("tr")).appendChild(el("td", { colspan: 5 }, "none in this range"));
}

function drawIncidents(data) {
  const body = document.querySelector("#incidents tbody");
  body.replaceChildren();
  const rows = [...data.incidents.open.map((item) => ["open", item]), ...data.incidents.closed.map((item) => ["resolved", item])];
  for (const [state, item] of rows) {
    const tr = el("tr", { "data-incident": state });
    tr.append(
      cell(state),
      cell(item.kind),
      cell(item.subject),
      cell(when(item.first)),
      cell(when(item.last)),
      cell(String(item.windows)),
      cell(item.resolved ? when(item.resolved) : ""),
    );
    body.appendChild(tr);
  }
  if (!rows.length) body.appendChild(el("tr")).appendChild(el("td", { colspan: 7 }, "none"));
}

function presets() {
  const box = document.getElementById("presets");
  const end = new Date(Math.ceil(Date.now() / SLOT_MS) * SLOT_MS);
  for (const [label, days] of [["24 h", 1], ["7 days", 7], ["30 days", 30], ["a year", 365]]) {
    const start = new Date(end.getTime() - days * 86400000);
    const query = new URLSearchParams({ start: start.toISOString(), end: end.toISOString() });
    box.appendChild(el("a", { href: `?${query}` }, label));
  }
}

function draw(data, decision) {
  const focus = data.focus;
  document.getElementById("price-chart").replaceChildren(drawPrice(data, focus));
  document.getElementById("change-chart").replaceChildren(drawChange(data));
  drawCounts(data);
  const select = document.getElementById("decision");
  if (decision !== undefined) select.value = decision;
  select.onchange = () => drawTable(data, focus, select.value, 0);
  drawTable(data, focus, select.value, 0);
  drawQuarantine(data);
  drawIncidents(data);
}

function settle(state, mark) {
  return new Promise((resolve) =>
    requestAnimationFrame(() => {
      performance.mark(mark);
      document.body.dataset.state = state;
      resolve();
    }),
  );
}

async function getJson(path, query) {
  const response = await fetch(`${path}?${query}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const data = await response.json();
  if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`);
  return data;
}

async function main() {
  const params = new URLSearchParams(window.location.search);
  for (const name of ["start", "end"]) if (params.get(name)) document.getElementById(name).value = params.get(name);
  presets();
  const query = new URLSearchParams();
  for (const name of ["start", "end", "dag_id", "run_id", "pair"]) if (params.get(name)) query.set(name, params.get(name));
  const status = document.getElementById("status");
  const data = await getJson("api/history", query);
  const pairs = document.getElementById("pair");
  pairs.replaceChildren(...(data.pairs ?? []).map((name) => el("option", { value: name }, name)));
  pairs.value = data.pair ?? "";
  const total = Object.values(countDecisions(data)).reduce((sum, count) => sum + count, 0);
  const unlisted = total - data.windows.length;
  const listed = unlisted ? ` (${data.windows.length} listed; the other ${unlisted}, quiet or without a price, are drawn and counted: a range of up to 31 days lists them)` : "";
  const range = `${when(data.start)} to ${when(data.end)} UTC: ${total} windows${listed}`;
  // Over a long range the windows without a price are not listed: the ledger may have their entries too.
  const unpriced = data.envelope ? (data.unlisted_counts.missing ?? 0) : 0;
  const pending = data.windows.filter((row) => row.decision === "pending").length + unpriced;
  draw(data, params.get("decision") ?? "");
  status.textContent = pending
    ? `${range} from the monthly Parquet prices; reading the ledger entries of ${pending} windows…`
    : `${range} from the ledger entries.`;
  await settle("drawn", "price-alerts-drawn");
  if (!pending) return settle("complete", "price-alerts-complete");
  const details = await getJson("api/ledger", query);
  const byWindow = new Map(details.windows.map((row) => [row.window_start, row]));
  const shown = new Set(data.windows.map((row) => row.window_start));
  data.windows = data.windows.map((row) =>
    byWindow.has(row.window_start) ? { ...byWindow.get(row.window_start), run_url: row.run_url } : row,
  );
  // Over a long range a window without a price is counted missing; the ledger may have its entry after all.
  const found = details.windows.filter((row) => !shown.has(row.window_start));
  if (found.length) {
    data.unlisted_counts.missing -= found.length;
    if (!data.unlisted_counts.missing) delete data.unlisted_counts.missing;
    data.windows = [...data.windows, ...found].sort((a, b) => a.window_start.localeCompare(b.window_start));
  }
  draw(data);
  status.textContent = `${range} from the monthly Parquet prices and ${details.windows.length} ledger entries.`;
  return settle("complete", "price-alerts-complete");
}

main().catch((error) => {
  const status = document.getElementById("status");
  status.textContent = `Cannot show this range: ${error.message ?? error}`;
  status.classList.add("error");
  document.body.dataset.state = "error";
});
