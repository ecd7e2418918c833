// The page of `dtb serve`: asks through POST / (answers) and POST /explain (what each layer kept), reads the
// frontier from GET /info. Plain DOM code; every text from the server goes in as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  frontier: [],      // points of /info's frontier, cheapest first
  asked: null,       // {question, context, top_k, handle_impossible_answer} of the last question asked
  sequence: 0,       // a newer request makes the answer of an older one stale
  history: 0,        // requests listed so far
};
const HISTORY_ROWS = 20;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svgElement(tag, attributes = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

// ---- talking to the server -------------------------------------------------------------------------------

// One request; {ok, status, data, headers, ms}. A network failure is {ok: false, status: 0} with its reason.
async function request(path, body) {
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (error) {
    return { ok: false, status: 0, data: { detail: `the server could not be reached (${error.message})` } };
  }
  const text = await response.text();
  const ms = performance.now() - started;
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* not JSON: shown as it came */ }
  return { ok: response.ok, status: response.status, data, headers: response.headers, ms };
}

// An error body in words: FastAPI's `detail` as a string, a list of validation errors, or an object.
function describeDetail(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map(describeDetail).filter(Boolean).join("; ");
  if (typeof detail === "object") {
    if ("msg" in detail) {
      const where = (detail.loc || []).filter((part) => part !== "body").join(" → ");
      return where ? `${where}: ${detail.msg}` : String(detail.msg);
    }
    for (const key of ["detail", "error", "message"]) {
      if (key in detail) {
        const said = describeDetail(detail[key]);
        const field = detail.field || detail.param || detail.parameter;
        if (said) return field && !said.includes(field) ? `${field}: ${said}` : said;
      }
    }
    return Object.entries(detail).map(([key, value]) => `${key}: ${describeDetail(value)}`).join("; ");
  }
  return String(detail);
}

function describeFailure(reply) {
  const body = reply.data;
  const said = typeof body === "object" && body !== null
    ? describeDetail("detail" in body ? body.detail : body)
    : String(body || "").trim().slice(0, 500);
  if (reply.status === 0) return `No answer: ${said}.`;
  return `The server refused the request (HTTP ${reply.status}): ${said || "it gave no reason"}.`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// ---- the frontier and the budget slider -------------------------------------------------------------------

function chosenPoint() {
  return state.frontier.length ? state.frontier[Number($("budget").value)] : null;
}

function describePoint(point) {
  const parts = [`${point.macs_ratio.toFixed(3)} of the MACs`];
  if (point.f1 !== null && point.f1 !== undefined) parts.push(`F1 ${point.f1.toFixed(2)}`);
  if (point.latency_ms !== null && point.latency_ms !== undefined) parts.push(`${point.latency_ms.toFixed(1)} ms`);
  return parts.join(", ");
}

function showBudget() {
  const point = chosenPoint();
  if (!point) return;
  const label = describePoint(point);
  $("budget-label").textContent = `${label} (${point.length_config})`;
  $("budget").setAttribute("aria-valuetext", label);
  drawFrontier();
}

function drawFrontier() {
  const svg = $("frontier-plot");
  svg.replaceChildren();
  const points = state.frontier.filter((p) => p.f1 !== null && p.f1 !== undefined);
  if (!points.length) return;
  const [width, height, left, right, top, bottom] = [360, 200, 44, 12, 12, 34];
  const f1s = points.map((p) => p.f1);
  const [low, high] = [Math.floor(Math.min(...f1s) - 1), Math.ceil(Math.max(...f1s) + 1)];
  const macs = state.frontier.map((p) => p.macs_ratio);
  const [cheapest, dearest] = [Math.min(...macs, 0.3), Math.max(...macs, 1)];
  const x = (m) => left + ((m - cheapest) / (dearest - cheapest || 1)) * (width - left - right);
  const y = (f) => top + (1 - (f - low) / (high - low || 1)) * (height - top - bottom);
  svg.append(svgElement("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }));
  svg.append(svgElement("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }));
  for (const [value, at] of [[cheapest, x(cheapest)], [dearest, x(dearest)]]) {
    const text = svgElement("text", { x: at, y: height - bottom + 14, "text-anchor": "middle", class: "tick" });
    text.textContent = value.toFixed(2);
    svg.append(text);
  }
  for (const value of [low, high]) {
    const text = svgElement("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick" });
    text.textContent = String(value);
    svg.append(text);
  }
  const xLabel = svgElement("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle", class: "tick" });
  xLabel.textContent = "fraction of the MACs";
  const yLabel = svgElement("text", { x: 10, y: top + 8, class: "tick" });
  yLabel.textContent = "F1";
  svg.append(xLabel, yLabel);
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.macs_ratio).toFixed(1)},${y(p.f1).toFixed(1)}`).join(" ");
  svg.append(svgElement("path", { d: path, class: "curve" }));
  const chosen = chosenPoint();
  for (const p of points) {
    const dot = svgElement("circle", {
      cx: x(p.macs_ratio), cy: y(p.f1), r: p === chosen ? 6 : 4, class: p === chosen ? "point chosen" : "point",
    });
    const title = svgElement("title");
    title.textContent = `${describePoint(p)}: ${p.length_config}`;
    dot.append(title);
    svg.append(dot);
  }
}

// The frontier point a server default chooses: its length config, else the most accurate within its budget.
function defaultPointIndex(defaults) {
  const last = state.frontier.length - 1;
  if (!defaults) return last;
  if (defaults.length_config) {
    const same = state.frontier.findIndex((p) => p.length_config === defaults.length_config);
    return same >= 0 ? same : last;
  }
  if (typeof defaults.budget === "number") {
    let best = last;
    state.frontier.forEach((p, i) => {
      if (p.macs_ratio <= defaults.budget && (best === last || (p.f1 ?? 0) >= (state.frontier[best].f1 ?? 0))) best = i;
    });
    return best;
  }
  return last;
}

// ---- answers in the text ----------------------------------------------------------------------------------

function highlight(context, answers) {
  // per character, the best answer covering it (answers come best first)
  const rank = new Array(context.length).fill(0);
  answers.forEach((answer, i) => {
    for (let c = answer.start; c < answer.end; c++) if (!rank[c]) rank[c] = i + 1;
  });
  const view = $("highlighted");
  view.replaceChildren();
  let start = 0;
  for (let c = 1; c <= context.length; c++) {
    if (c < context.length && rank[c] === rank[start]) continue;
    const text = context.slice(start, c);
    if (rank[start]) {
      const answer = answers[rank[start] - 1];
      view.append(element("mark", {
        class: rank[start] === 1 ? "answer best" : "answer",
        "data-rank": rank[start],
        title: `answer ${rank[start]}, score ${answer.score.toFixed(3)}`,
      }, text));
    } else {
      view.append(text);
    }
    start = c;
  }
}

function showAnswers(answers, context, reply, point) {
  $("answers-section").hidden = false;
  const list = $("answers");
  list.replaceChildren();
  const spans = answers.filter((a) => a.answer !== "");
  const empty = answers.find((a) => a.answer === "");
  for (const answer of answers) {
    const text = answer.answer === "" ? element("em", {}, "no answer in the text") : element("strong", {}, answer.answer);
    list.append(element("li", {}, text, ` score ${answer.score.toFixed(3)}`));
  }
  const noAnswer = $("no-answer");
  noAnswer.hidden = !empty && answers.length > 0;
  if (!answers.length) noAnswer.textContent = "The model found no answer in this text.";
  else if (empty) noAnswer.textContent = `Probability that the text holds no answer: ${empty.score.toFixed(3)}.`;
  highlight(context, spans);
  const ran = reply.headers.get("X-Length-Config");
  const macs = reply.headers.get("X-MACs-Ratio");
  const queue = reply.headers.get("X-Queue-Ms");
  const parts = [`Answered in ${reply.ms.toFixed(0)} ms (round trip from this page)`];
  if (queue !== null) parts.push(`${Number(queue).toFixed(0)} ms of it queued`);
  if (ran !== null) parts.push(`length configuration ${ran}`);
  else if (point) parts.push(`asked at length configuration ${point.length_config}`);
  if (macs !== null) parts.push(`${Number(macs).toFixed(3)} of the full model's MACs`);
  $("run-info").textContent = parts.join("; ") + ".";
}

function addHistory(answers, reply, point) {
  const body = $("history").tBodies[0];
  const best = answers[0];
  state.history += 1;
  const ran = reply.headers.get("X-Length-Config") || (point ? point.length_config : "server default");
  const macs = reply.headers.get("X-MACs-Ratio") || (point ? String(point.macs_ratio) : "");
  const row = element("tr", {},
    element("td", {}, String(state.history)),
    element("td", {}, macs ? Number(macs).toFixed(3) : "-"),
    element("td", { class: "config" }, ran),
    element("td", {}, best ? (best.answer || "(no answer)") : "-"),
    element("td", {}, best ? best.score.toFixed(3) : "-"),
    element("td", { class: "ms" }, `${reply.ms.toFixed(0)} ms`));
  body.prepend(row);
  while (body.rows.length > HISTORY_ROWS) body.deleteRow(-1);
}

// ---- what each layer kept ----------------------------------------------------------------------------------

function showLayers(explained) {
  $("layers-section").hidden = false;
  const answerTokens = new Set(explained.answer_tokens);
  const total = explained.tokens.length;
  const where = explained.windows > 1
    ? `window ${explained.window + 1} of ${explained.windows} (the one holding the best answer)`
    : "the whole text (one window)";
  $("layers-summary").textContent =
    `${total} tokens of ${where}, run with length configuration ${explained.length_config} ` +
    `(${explained.macs_ratio.toFixed(3)} of the full model's MACs on it).`;
  const rows = $("layers");
  rows.replaceChildren();
  explained.kept.forEach((positions, layer) => {
    const kept = new Set(positions);
    const tokens = element("p", { class: "tokens" });
    explained.tokens.forEach((token, i) => {
      const classes = ["tok", kept.has(i) ? "kept" : "dropped"];
      if (answerTokens.has(i)) classes.push("answer");
      if (explained.segments[i] === 0) classes.push("question");
      if (explained.segments[i] === null) classes.push("special");
      if (token.startsWith("##")) classes.push("piece");
      tokens.append(element("span", { class: classes.join(" ") }, token.startsWith("##") ? token.slice(2) : token));
      tokens.append(" ");
    });
    const heading = element("h3", {}, `Layer ${layer + 1}: kept ${positions.length} of ${total} tokens`);
    rows.append(element("div", { class: "layer", "data-layer": layer + 1, "data-kept": positions.length }, heading, tokens));
  });
}

// ---- asking ------------------------------------------------------------------------------------------------

function parameters(asked) {
  const chosen = { top_k: asked.top_k, handle_impossible_answer: asked.handle_impossible_answer };
  const point = chosenPoint();
  if (point) chosen.length_config = point.length_config;
  return chosen;
}

async function ask(asked) {
  const sequence = ++state.sequence;
  state.asked = asked;
  const point = chosenPoint();
  const body = { inputs: { question: asked.question, context: asked.context }, parameters: parameters(asked) };
  $("ask").disabled = true;
  $("status").textContent = "Asking…";
  try {
    const reply = await request("./", body);
    if (sequence !== state.sequence) return;
    if (!reply.ok) {
      showError(describeFailure(reply));
      $("status").textContent = "";
      return;
    }
    showError("");
    const answers = Array.isArray(reply.data) ? reply.data : [reply.data];
    showAnswers(answers, asked.context, reply, point);
    addHistory(answers, reply, point);
    $("status").textContent = `Answered in ${reply.ms.toFixed(0)} ms; tracing the layers…`;
    const traced = await request("./explain", body);
    if (sequence !== state.sequence) return;
    if (!traced.ok) {
      showError(`The answer came, but not the layers' trace. ${describeFailure(traced)}`);
      $("status").textContent = "";
      return;
    }
    showLayers(traced.data);
    $("status").textContent =
      `Answered in ${reply.ms.toFixed(0)} ms; layers traced in ${traced.ms.toFixed(0)} ms.`;
  } finally {
    if (sequence === state.sequence) $("ask").disabled = false;
  }
}

function askFromForm(event) {
  event.preventDefault();
  const topK = Number($("top-k").value);
  if (!Number.isInteger(topK) || topK < 1 || topK > 10) {
    showError("Answers to list: give a whole number from 1 to 10.");
    $("top-k").focus();
    return;
  }
  ask({
    question: $("question").value,
    context: $("context").value,
    top_k: topK,
    handle_impossible_answer: $("impossible").checked,
  });
}

let reaskTimer = null;
function budgetMoved() {
  showBudget();
  if (!state.asked) return;
  clearTimeout(reaskTimer);
  reaskTimer = setTimeout(() => ask(state.asked), 200);  // arrow keys held down ask once they stop
}

// ---- start -------------------------------------------------------------------------------------------------

async function loadExamples() {
  const reply = await request("static/examples.json");
  if (!reply.ok) return;
  $("examples-source").textContent = `Example texts: ${reply.data.source}.`;
  const select = $("example");
  reply.data.examples.forEach((example, i) => select.append(element("option", { value: String(i) }, example.title)));
  select.addEventListener("change", () => {
    const example = reply.data.examples[Number(select.value)];
    if (select.value === "" || !example) return;
    $("context").value = example.context;
    $("question").value = example.question;
  });
}

async function loadInfo() {
  const reply = await request("info");
  if (!reply.ok) {
    showError(`Could not read the model's description. ${describeFailure(reply)}`);
    return;
  }
  const info = reply.data;
  $("model-info").textContent =
    `Model ${info.model}: ${info.layers} layers, ${info.hidden_size} wide; each layer keeps the tokens ` +
    (info.token_selection === "learned" ? "its learned scorer ranks highest." : "that receive the most attention.");
  if (!info.frontier || !info.frontier.length) {
    $("no-frontier").hidden = false;
    return;
  }
  state.frontier = [...info.frontier].sort((a, b) => a.macs_ratio - b.macs_ratio);
  const slider = $("budget");
  slider.max = String(state.frontier.length - 1);
  slider.value = String(defaultPointIndex(info.defaults));
  $("budget-section").hidden = false;
  showBudget();
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", askFromForm);
  $("budget").addEventListener("input", budgetMoved);
  window.dtbReady = Promise.all([loadInfo(), loadExamples()]);
});
