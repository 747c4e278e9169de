// The mlipilot dashboard page: four views behind a hash router, drawn from the JSON API.
// Every piece of text (an agent wrote many of them) goes into the page with textContent or as
// an attribute value, never as markup; the server's Content-Security-Policy allows no inline
// script either.
"use strict";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
let stream = null; // the open EventSource, if the view follows a campaign
let plots = []; // uPlot instances of the current view, destroyed on re-render
let generation = 0; // bumped by every navigation: a slower, older view never draws over it

class Stale extends Error {}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the CSP
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toPrecision(digits);
  if (typeof x === "object") return JSON.stringify(x);
  return String(x);
}

function swatch(color) {
  return el("span", { class: "swatch", style: `background:${/^#[0-9a-f]{6}$/i.test(color) ? color : "#999"}` });
}

async function getJSON(path) {
  const mine = generation;
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  const body = await response.json();
  if (mine !== generation) throw new Stale();
  return body;
}

function clear() {
  if (stream) { stream.close(); stream = null; }
  for (const p of plots) p.destroy();
  plots = [];
  live.textContent = "";
  main.replaceChildren();
  crumbs.replaceChildren();
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function plot(title, opts, data, attrs) {
  const box = el("div", { class: "figure", ...(attrs || {}) }, el("div", { class: "title" }, title));
  const scales = { x: { time: false }, ...(opts.scales || {}) };
  const p = new uPlot({ width: 520, height: 240, ...opts, scales }, data, box);
  plots.push(p);
  return box;
}

const scatter = { paths: () => null, points: { show: true, size: 8 } };

// --- view 1: every campaign -------------------------------------------------------------

async function listView() {
  const { campaigns } = await getJSON("/api/campaigns");
  clear();
  const chosen = new Set();
  const compare = el("a", { href: "#/", id: "compare-link" }, "compare selected");
  const rows = campaigns.map((c) => {
    const box = el("input", { type: "checkbox", "data-id": c.id });
    box.addEventListener("change", () => {
      if (box.checked) chosen.add(c.id); else chosen.delete(c.id);
      compare.setAttribute("href", `#/compare/${[...chosen].map(encodeURIComponent).join(",")}`);
    });
    return el("tr", { "data-id": c.id },
      el("td", {}, box),
      el("td", {}, swatch(c.color), el("a", { href: `#/c/${encodeURIComponent(c.id)}` }, c.id)),
      el("td", {}, c.status), el("td", {}, c.agent), el("td", {}, c.scorecard),
      el("td", { class: "num" }, c.proposals), el("td", { class: "num" }, c.decided),
      el("td", { class: "num" }, c.agent_failures),
      el("td", {}, c.best_candidate ?? "–"),
      el("td", { class: c.best_feasible ? "ok" : "bad" }, c.best_feasible === null ? "–" : c.best_feasible ? "feasible" : "infeasible"),
      el("td", { class: "num" }, fmt(c.best_feasible ? c.best_composite : c.best_violation)),
      el("td", { class: "num" }, c.tokens));
  });
  main.append(el("h2", {}, `Campaigns (${campaigns.length})`),
    table(["", "run", "status", "agent", "scorecard", "proposals", "decided candidates",
      "agent failures", "best", "feasibility", "best composite / violation", "LLM tokens"], rows, { id: "campaigns" }),
    compare);
}

// --- view 2: one campaign, live ----------------------------------------------------------

function campaignView(runId) {
  clear();
  crumbs.append(el("a", { href: `#/c/${encodeURIComponent(runId)}` }, runId));
  main.append(el("p", {}, "connecting…"));
  stream = new EventSource(`/api/campaigns/${encodeURIComponent(runId)}/stream`);
  stream.addEventListener("campaign", (event) => {
    drawCampaign(runId, JSON.parse(event.data));
    live.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  });
  stream.onerror = () => { live.textContent = "reconnecting…"; };
}

function drawCampaign(runId, view) {
  for (const p of plots) p.destroy();
  plots = [];
  const s = view.summary;
  const cards = el("div", { class: "cards" },
    el("div", { class: "card" }, swatch(s.color), "status", el("b", { id: "status" }, s.status)),
    el("div", { class: "card" }, "agent", el("b", {}, s.agent)),
    el("div", { class: "card" }, "proposals", el("b", { id: "proposals" }, s.proposals)),
    el("div", { class: "card" }, "decided candidates", el("b", { id: "decided" }, s.decided)),
    el("div", { class: "card" }, "agent failures", el("b", {}, s.agent_failures)),
    el("div", { class: "card" }, "best", el("b", {}, s.best_candidate ?? "–")),
    el("div", { class: "card" }, "LLM tokens", el("b", {}, s.tokens)));
  const points = view.score.points;
  const x = points.map((_, i) => i);
  const feasible = points.map((p) => (p.feasible ? p.composite : null));
  const infeasible = points.map((p) => (p.feasible === false ? p.violation : null));
  const incumbent = view.score.incumbent.map((st) => (st.feasible ? st.composite : st.violation));
  const scored = points.filter((p) => !p.failed).length;
  const score = plot("score against decisions: composite (feasible), violation (infeasible); line: incumbent", {
    series: [{ label: "decision" },
      { label: "composite", stroke: s.color, ...scatter },
      { label: "violation", stroke: "#c62828", ...scatter },
      { label: "incumbent", stroke: "#263238", width: 2 }],
    axes: [{ label: "decision (ledger order)" }, { label: "score" }],
  }, [x, feasible, infeasible, incumbent], { id: "score-figure", "data-points": scored });
  const tokens = plot("LLM tokens per iteration", {
    series: [{ label: "iteration" }, { label: "tokens", stroke: s.color, fill: s.color + "55" }],
    axes: [{ label: "iteration" }, { label: "tokens" }],
  }, [view.tokens.map((t) => t.iteration), view.tokens.map((t) => t.tokens)], { id: "tokens-figure" });
  const rows = view.candidates.map((c) => el("tr", { "data-candidate": c.name },
    el("td", {}, el("a", { href: `#/c/${encodeURIComponent(runId)}/${encodeURIComponent(c.name)}` }, c.name)),
    el("td", { class: "stage" }, c.stage,
      c.progress && ["training", "scoring"].includes(c.stage) ? ` ${c.progress.stage} ${c.progress.done}/${c.progress.total}` : ""),
    el("td", { class: c.verdict || "" }, c.verdict ?? "–"),
    el("td", { class: "num" }, fmt(c.composite)), el("td", { class: "num" }, fmt(c.violation)),
    el("td", { class: "text hypothesis" }, c.hypothesis),
    el("td", { class: "text" }, fmt(c.patch)),
    el("td", { class: "text reason" }, c.reason ?? ""),
    el("td", { class: "num" }, c.tokens ?? "–")));
  main.replaceChildren(el("h2", {}, swatch(s.color), `${s.campaign} · ${s.id}`), cards,
    el("div", { class: "figures" }, score, tokens),
    el("h3", {}, "Candidates"),
    table(["candidate", "stage", "verdict", "composite", "violation", "hypothesis", "change", "reason", "tokens"],
      rows, { id: "candidates" }));
}

// --- view 3: one candidate -----------------------------------------------------------------

async function candidateView(runId, name) {
  const c = await getJSON(`/api/campaigns/${encodeURIComponent(runId)}/candidates/${encodeURIComponent(name)}`);
  clear();
  crumbs.append(el("a", { href: `#/c/${encodeURIComponent(runId)}` }, runId), " / ", name);
  main.append(el("h2", {}, `${c.name} (iteration ${c.iteration})`),
    el("p", { class: "text hypothesis" }, c.hypothesis),
    el("p", {}, "decision: ", el("span", { class: c.decision.verdict || "" }, c.decision.verdict ?? "not yet"),
      " ", el("span", { class: "muted" }, c.decision.reason ?? "")));
  if (c.duplicate_of) main.append(el("p", { class: "muted" }, `same training as ${c.duplicate_of}`));
  main.append(el("h3", {}, "Recipe against the incumbent it was proposed from"),
    c.recipe_diff.length
      ? table(["key", "incumbent", "candidate"], c.recipe_diff.map((d) =>
        el("tr", {}, el("td", {}, d.key), el("td", {}, fmt(d.incumbent)), el("td", {}, fmt(d.candidate)))), { id: "recipe-diff" })
      : el("p", { class: "muted" }, "no recipe change"));
  if (c.code_diff) main.append(el("h3", {}, "Code diff"), el("pre", { class: "diff" }, c.code_diff));
  const figures = el("div", { class: "figures" });
  if (c.training.curve.length) {
    figures.append(plot(`training loss (${c.training.status})`, {
      series: [{ label: "epoch" }, { label: "loss", stroke: "#1f77b4" }],
      scales: { y: { distr: 3 } }, axes: [{ label: "epoch" }, { label: "loss" }],
    }, [c.training.curve.map((r) => r.epoch), c.training.curve.map((r) => r.loss)]));
  }
  for (const t of c.md) {
    figures.append(plot(`MD ${t.replica}: ${t.status}`, {
      series: [{ label: "ps" }, { label: "T (K)", stroke: t.failed ? "#c62828" : "#2e7d32" }],
      axes: [{ label: "time (ps)" }, { label: "temperature (K)" }],
    }, [t.time_ps, t.temperature_K], { "data-failed": t.failed }));
  }
  main.append(figures);
  if (c.training.reason) main.append(el("p", { class: "bad" }, c.training.reason));
  main.append(el("h3", {}, "Constraints"), c.constraints.length
    ? table(["metric", "value", "threshold", ""], c.constraints.map((k) => el("tr", {},
      el("td", {}, k.metric), el("td", { class: "num" }, `${fmt(k.value)} ${k.unit}`),
      el("td", { class: "num" }, `${k.op} ${fmt(k.threshold)}`),
      el("td", { class: k.ok ? "ok" : "bad" }, k.ok === null ? "–" : k.ok ? "met" : "violated"))), { id: "constraints" })
    : el("p", { class: "muted" }, "not scored"));
  if (c.validation.length) {
    main.append(el("h3", {}, "Validation"));
    for (const v of c.validation) {
      main.append(el("p", {}, el("span", { class: v.status === "passed" ? "ok" : "bad" }, v.status), " ", v.reason ?? ""));
      const checks = Array.isArray(v.detail.checks) ? v.detail.checks : [];
      if (checks.length) main.append(table(["check", "model", "reference", "tolerance", ""], checks.map((k) => el("tr", {},
        el("td", {}, k.metric), el("td", { class: "num" }, fmt(k.value)), el("td", { class: "num" }, fmt(k.reference)),
        el("td", {}, k.tolerance), el("td", { class: k.passed ? "ok" : "bad" }, k.passed ? "pass" : "fail"))), { id: "validation" }));
    }
  }
}

// --- view 4: campaigns compared, live ---------------------------------------------------

async function compareView(ids) {
  const view = await getJSON(`/api/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
  clear();
  crumbs.append(`compare ${view.campaigns.length}`);
  const longest = Math.max(0, ...view.campaigns.map((c) => c.incumbent.length));
  const x = [...Array(longest).keys()];
  const series = [{ label: "decision" }];
  const columns = [x];
  for (const c of view.campaigns) {
    series.push({ label: c.summary.id, stroke: c.summary.color, width: 2 });
    columns.push(x.map((i) => {
      const st = c.incumbent[i];
      return st ? (st.feasible ? st.composite : st.violation) : null;
    }));
  }
  const tokenColumns = [x];
  for (const c of view.campaigns) {
    tokenColumns.push(x.map((i) => (c.tokens[i] ? c.tokens[i].tokens : null)));
  }
  const rows = view.campaigns.map((c) => el("tr", {},
    el("td", {}, swatch(c.summary.color), el("a", { href: `#/c/${encodeURIComponent(c.summary.id)}` }, c.summary.id)),
    el("td", {}, c.summary.agent), el("td", {}, c.summary.status),
    el("td", { class: "num" }, c.summary.proposals), el("td", { class: "num" }, c.summary.decided),
    el("td", { class: "num" }, c.summary.agent_failures),
    el("td", {}, c.summary.best_feasible ? "feasible" : "infeasible"),
    el("td", { class: "num" }, fmt(c.summary.best_feasible ? c.summary.best_composite : c.summary.best_violation)),
    el("td", { class: "num" }, c.summary.tokens)));
  main.append(el("h2", {}, "Campaigns compared"),
    table(["run", "agent", "status", "proposals", "decided candidates", "agent failures", "best", "score", "LLM tokens"], rows, { id: "compared" }),
    el("div", { class: "figures" },
      plot("incumbent after each decision (composite if feasible, else violation)", { series, axes: [{ label: "decision" }, { label: "score" }] }, columns, { id: "compare-figure" }),
      plot("LLM tokens spent before each decision", { series: series.map((x) => ({ ...x })), axes: [{ label: "decision" }, { label: "tokens" }] }, tokenColumns, { id: "compare-tokens" })));
  // Live: redrawn while any of them runs.
  if (view.campaigns.some((c) => c.summary.status === "running")) {
    live.textContent = "live · refreshed every 5 s";
    const again = location.hash;
    setTimeout(() => { if (location.hash === again) route(); }, 5000);
  }
}

// --- the router ------------------------------------------------------------------------

async function route() {
  generation += 1;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "c" && parts[1] && parts[2]) await candidateView(parts[1], parts[2]);
    else if (parts[0] === "c" && parts[1]) campaignView(parts[1]);
    else if (parts[0] === "compare" && parts[1]) await compareView(parts[1].split(","));
    else await listView();
  } catch (error) {
    if (error instanceof Stale) return;
    clear();
    main.append(el("p", { class: "bad", id: "error" }, String(error.message || error)));
  }
}

window.addEventListener("hashchange", route);
route();
