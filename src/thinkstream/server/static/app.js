// thinkstream playground: plain JavaScript modules (this one, api.js, stream.js), no
// dependencies, no build step, served by `thinkstream serve`. The server's public API only:
//   GET  /health, /v1/models, /metrics          server state, model name, metrics panel
//   POST /v1/chat/completions (stream: true)    chat mode, the "sent whole" comparison and
//                                               parallel paths (`parallel`)
//   WS   /v1/sessions/ws                        streaming input: open, append / replace with
//                                               sequence numbers, close on Enter
//   GET  /v1/sessions/{id}                      tokens computed while the input is open
import {
  $, apiKey, chatStream, checkServer, headers, say, setApiKey, systemMessages,
} from "./api.js";
import { stream } from "./stream.js";

const METRICS_MS = 2000;

// ------------------------------------------------------------------ API key
$("api-key").value = apiKey();
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = $("api-key").value.trim();
  if (!/^[\x21-\x7e]*$/.test(v)) {  // it travels in an HTTP header: no fetch could send it
    say("An API key is printable ASCII without spaces: not saved.");
    return;
  }
  setApiKey(v);
  say(v ? "API key saved in this browser." : "API key removed.", "info");
  stream.reset();
  checkServer();
});

// ------------------------------------------------------------------ chat mode
const chat = { history: [], abort: null };
function chatEntry(role) {
  const li = document.createElement("li");
  li.className = "turn " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model";
  li.append(who);
  $("chat-log").append(li);
  return li;
}
async function sendChat() {
  const text = $("chat-input").value;
  if (!text.trim() || chat.abort) return;
  $("chat-input").value = "";
  chat.history.push({ role: "user", content: text });
  const u = chatEntry("user");
  u.append(Object.assign(document.createElement("div"), { textContent: text }));
  const a = chatEntry("assistant");
  const reasoning = document.createElement("details");
  reasoning.open = true;
  reasoning.hidden = true;
  reasoning.innerHTML = "<summary>Reasoning</summary>";
  const rtext = Object.assign(document.createElement("pre"), { className: "reasoning" });
  reasoning.append(rtext);
  const answer = Object.assign(document.createElement("div"), { className: "answer" });
  a.append(reasoning, answer);
  chat.abort = new AbortController();
  $("chat-stop").disabled = false;
  $("chat-send").disabled = true;
  try {
    await chatStream([...systemMessages(), ...chat.history], {}, chat.abort.signal, {
      reasoning: (t) => { reasoning.hidden = false; rtext.textContent += t; },
      content: (t) => { answer.textContent += t; },
    });
    chat.history.push({ role: "assistant", content: answer.textContent });
  } catch (e) {
    chat.history.pop();
    answer.classList.add("failed");
    if (e.name === "AbortError") answer.append(" [stopped]");
    else { answer.append(" [error]"); say(e.message || String(e)); }
  } finally {
    chat.abort = null;
    $("chat-stop").disabled = true;
    $("chat-send").disabled = false;
    $("chat-input").focus();
  }
}
$("chat-form").addEventListener("submit", (ev) => { ev.preventDefault(); sendChat(); });
$("chat-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendChat(); }
});
$("chat-stop").addEventListener("click", () => chat.abort && chat.abort.abort());
$("chat-clear").addEventListener("click", () => {
  chat.history = [];
  $("chat-log").replaceChildren();
});

// ------------------------------------------------------------------ parallel paths
// Paths stream first, each delta tagged with its path index, then the summary.
const par = { abort: null };
function pathColumns(n) {
  const out = $("par-paths-out");
  out.replaceChildren();
  const cols = [];
  for (let i = 0; i < n; i++) {
    const col = Object.assign(document.createElement("section"), { className: "path" });
    const h = Object.assign(document.createElement("h3"), { textContent: `Path ${i + 1}` });
    const pre = Object.assign(document.createElement("pre"), { className: "reasoning" });
    col.append(h, pre);
    out.append(col);
    cols.push(pre);
  }
  return cols;
}
async function sendParallel() {
  const text = $("par-input").value;
  if (!text.trim() || par.abort) return;
  const n = Math.max(1, Math.min(16, Number($("par-paths").value) || 1));
  const cols = pathColumns(n);
  const summary = $("par-summary");
  summary.textContent = "";
  summary.classList.remove("failed");
  const parallel = { paths: n, path_tokens: Number($("par-tokens").value) || 1,
                     merge: $("par-merge").value };
  if ($("par-temp").value.trim() !== "") parallel.temperature = Number($("par-temp").value);
  par.abort = new AbortController();
  $("par-send").disabled = true;
  $("par-stop").disabled = false;
  try {
    await chatStream([...systemMessages(), { role: "user", content: text }], { parallel },
                     par.abort.signal, {
      reasoning: (t, i) => { if (cols[i || 0]) cols[i || 0].textContent += t; },
      content: (t) => { summary.textContent += t; },
    });
  } catch (e) {
    summary.classList.add("failed");
    if (e.name === "AbortError") summary.append(" [stopped]");
    else { summary.append(" [error]"); say(e.message || String(e)); }
  } finally {
    par.abort = null;
    $("par-send").disabled = false;
    $("par-stop").disabled = true;
  }
}
$("par-form").addEventListener("submit", (ev) => { ev.preventDefault(); sendParallel(); });
$("par-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendParallel(); }
});
$("par-stop").addEventListener("click", () => par.abort && par.abort.abort());

// ------------------------------------------------------------------ tabs
const tabs = [...document.querySelectorAll('[role="tab"]')];
function select(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  tab.focus();
}
for (const t of tabs) {
  t.addEventListener("click", () => select(t));
  t.addEventListener("keydown", (ev) => {
    const i = tabs.indexOf(t);
    if (ev.key === "ArrowRight") select(tabs[(i + 1) % tabs.length]);
    else if (ev.key === "ArrowLeft") select(tabs[(i + tabs.length - 1) % tabs.length]);
    else if (ev.key === "Home") select(tabs[0]);
    else if (ev.key === "End") select(tabs[tabs.length - 1]);
  });
}

// ------------------------------------------------------------------ metrics
const ttftSamples = [];  // [time ms, sum s, count] of the TTFT histogram, last 30 s
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)/);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
  }
  return out;
}
// The server's state follows the scrapes: one that fails marks it unreachable (and the
// numbers unknown), the next that succeeds asks the server again.
async function pollMetrics() {
  let r;
  try {
    r = await fetch("/metrics", { headers: headers() });
  } catch (e) {
    for (const dd of $("metrics").querySelectorAll("dd")) dd.textContent = "–";
    $("m-running").textContent = "offline";
    ttftSamples.length = 0;
    $("server-state").textContent = "unreachable";
    $("server-state").className = "pill bad";
    return;
  }
  if ($("server-state").textContent === "unreachable") checkServer();
  try {
    if (!r.ok) { $("m-running").textContent = `HTTP ${r.status}`; return; }
    const m = parseMetrics(await r.text());
    const pct = (x) => (x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
    $("m-running").textContent = m.thinkstream_num_requests_running ?? "–";
    $("m-waiting").textContent = m.thinkstream_num_requests_waiting ?? "–";
    $("m-kv").textContent = pct(m.thinkstream_kv_cache_usage_ratio);
    $("m-hit").textContent = pct(m.thinkstream_prefix_cache_hit_rate);
    const now = performance.now();
    ttftSamples.push([now, m.thinkstream_time_to_first_token_seconds_sum || 0,
                      m.thinkstream_time_to_first_token_seconds_count || 0]);
    while (ttftSamples.length > 1 && now - ttftSamples[0][0] > 30000) ttftSamples.shift();
    const [, s0, c0] = ttftSamples[0];
    const [, s1, c1] = ttftSamples[ttftSamples.length - 1];
    $("m-ttft").textContent = c1 > c0 ? `${(1000 * (s1 - s0) / (c1 - c0)).toFixed(0)} ms` : "–";
  } catch (e) {
    $("m-running").textContent = "offline";
  }
}

checkServer();
pollMetrics();
setInterval(pollMetrics, METRICS_MS);
$("stream-input").focus();
