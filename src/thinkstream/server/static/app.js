// thinkstream playground: plain JavaScript, no dependencies, served by `thinkstream serve`.
// It uses the server's public API only:
//   GET  /health, /v1/models, /metrics          server state, model name, metrics panel
//   POST /v1/chat/completions (stream: true)    chat mode, the "sent whole" comparison and
//                                               parallel paths (`parallel`)
//   WS   /v1/sessions/ws                        streaming input: open, append / replace with
//                                               sequence numbers, close on Enter
//   GET  /v1/sessions/{id}                      tokens computed while the input is open
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "thinkstream.apiKey";
  const MIN_GAP_MS = 30;        // at most ~33 updates a second (the server allows 50)
  const POLL_MS = 250;          // session progress while typing
  const METRICS_MS = 2000;
  const RETRY_MS = 1000;        // after a refused session open
  const RESTART_CODES = new Set(["session_closed", "session_not_found", "no_session",
                                 "sequence_gap", "chunk_rate_exceeded"]);

  // ------------------------------------------------------------------ messages
  function say(text, kind = "error") {
    const box = $("messages");
    const p = document.createElement("p");
    p.className = "msg " + kind;
    p.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.textContent = "Dismiss";
    close.setAttribute("aria-label", "Dismiss message");
    close.addEventListener("click", () => p.remove());
    p.append(" ", close);
    box.append(p);
    while (box.children.length > 4) box.firstElementChild.remove();
    if (kind !== "error") setTimeout(() => p.remove(), 8000);
  }

  function describe(status, body) {
    const err = body && body.error ? body.error : body;
    const msg = err && err.message ? err.message : (typeof body === "string" ? body : "");
    const code = err && err.code ? ` (${err.code})` : "";
    return status ? `HTTP ${status}: ${msg || "request failed"}${code}` : `${msg}${code}`;
  }

  // ------------------------------------------------------------------ API key
  const apiKey = () => localStorage.getItem(KEY_STORE) || "";
  function headers(json = false) {
    const h = {};
    if (apiKey()) h.Authorization = "Bearer " + apiKey();
    if (json) h["Content-Type"] = "application/json";
    return h;
  }
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("api-key").value.trim();
    if (v) localStorage.setItem(KEY_STORE, v); else localStorage.removeItem(KEY_STORE);
    say(v ? "API key saved in this browser." : "API key removed.", "info");
    stream.reset();
    checkServer();
  });

  // ------------------------------------------------------------------ settings
  function sampling() {
    const num = (id) => {
      const v = $(id).value.trim();
      return v === "" ? undefined : Number(v);
    };
    const stop = $("stop").value.split("\n").filter((s) => s.length > 0);
    const body = { temperature: num("temperature"), top_p: num("top-p"),
                   max_tokens: num("max-tokens"), seed: num("seed") };
    if (stop.length) body.stop = stop;
    if (model) body.model = model;
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    return body;
  }
  function systemMessages() {
    const s = $("system").value;
    return s.trim() ? [{ role: "system", content: s }] : [];
  }

  // ------------------------------------------------------------------ server state
  let model = null;
  async function checkServer() {
    const pill = $("server-state");
    try {
      const h = await fetch("/health");
      if (!h.ok) {
        pill.textContent = "server " + ((await h.json().catch(() => ({}))).status || h.status);
        pill.className = "pill bad";
        return;
      }
      const r = await fetch("/v1/models", { headers: headers() });
      const body = await r.json().catch(() => null);
      if (r.status === 401) {
        pill.textContent = "needs an API key";
        pill.className = "pill bad";
        say(describe(401, body) + " — enter the server's key above.");
        return;
      }
      if (!r.ok) throw new Error(describe(r.status, body));
      model = body.data && body.data.length ? body.data[0].id : null;
      pill.textContent = "ready · " + (model || "model");
      pill.className = "pill ok";
    } catch (e) {
      pill.textContent = "unreachable";
      pill.className = "pill bad";
      say("Cannot reach the server: " + (e.message || e));
    }
  }

  // ------------------------------------------------------------------ SSE reading
  // Reads an OpenAI-style event stream; calls onChunk(obj) per data event.
  async function readSSE(response, onChunk) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          const obj = JSON.parse(data);
          if (obj.error) throw new Error(describe(0, obj));
          onChunk(obj);
        }
      }
    }
    throw new Error("the stream ended early (connection lost?)");
  }

  // A streamed chat completion (or, given `prompt` instead of `messages`, a completion);
  // callbacks per reasoning / content delta.
  async function chatStream(messages, extra, signal, on) {
    const input = Array.isArray(messages) ? { messages } : { prompt: messages.prompt };
    const path = input.messages ? "/v1/chat/completions" : "/v1/completions";
    const body = { ...sampling(), ...extra, ...input, stream: true };
    const r = await fetch(path, {
      method: "POST", headers: headers(true), body: JSON.stringify(body), signal });
    if (!r.ok) {
      const err = await r.json().catch(() => null);
      throw new Error(describe(r.status, err));
    }
    await readSSE(r, (chunk) => {
      for (const c of chunk.choices || []) {
        const d = c.delta || { content: c.text };
        if (d.reasoning_content) on.reasoning(d.reasoning_content, d.path);
        if (d.content) on.content(d.content);
        if (c.finish_reason && on.finish) on.finish(c.finish_reason);
      }
    });
  }

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

  // ------------------------------------------------------------------ streaming input
  // One WebSocket per session. `sent` is the text the server holds; every edit that
  // extends it is an append, anything else (an edit or deletion earlier on) a replace of
  // the whole input. Each update carries the next sequence number.
  const stream = {
    s: null,            // {ws, sid, seq, sent, ready, closing, done, t0, first, poll}
    timer: null,
    lastSend: 0,
    retryAt: 0,
    restarts: 0,        // sessions restarted in a row (reset by an open that succeeds)
    plain: false,       // the model has no chat template: stream a plain prompt
    text: () => $("stream-input").value,

    setState(text) { $("st-state").textContent = text; },

    start(closeNow) {
      const text = this.text();
      const q = apiKey() ? "?api_key=" + encodeURIComponent(apiKey()) : "";
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${scheme}//${location.host}/v1/sessions/ws${q}`);
      const s = { ws, sid: null, seq: 0, sent: text, ready: false, closing: false, done: false,
                  t0: 0, first: false, poll: null, closeNow, acked: 0, infoSeq: -1 };
      this.s = s;
      this.setState("opening");
      $("stream-notes").textContent = "";
      ws.onopen = () => {
        const open = { type: "open", ...sampling() };
        if (!this.plain) open.messages = systemMessages();
        if (text) open.prompt = text;
        if ($("think").checked) open.thinking = { note_tokens: Number($("note-tokens").value) || 24 };
        ws.send(JSON.stringify(open));
      };
      ws.onmessage = (ev) => this.receive(s, JSON.parse(ev.data));
      ws.onclose = (ev) => {
        if (this.s !== s) return;
        this.stopPolling(s);
        this.s = null;
        if (!s.done) {
          this.setState("disconnected");
          if (ev.code !== 1008) {  // 1008: refused (key, origin): the error said why
            say("The session's connection was lost; it starts afresh on your next edit.");
          }
          this.retryAt = performance.now() + RETRY_MS;
          $("stream-send").disabled = false;
        }
      };
      $("notes-box").hidden = !$("think").checked;
    },

    receive(s, msg) {
      if (this.s !== s) return;
      if (msg.type === "opened") {
        s.sid = msg.session.id;
        $("st-state").dataset.session = s.sid;
        s.ready = true;
        this.restarts = 0;
        this.setState("open");
        s.infoSeq = msg.session.next_seq;
        this.show(msg.session.tokens_received, msg.session.tokens_computed);
        this.mark(s);
        s.poll = setInterval(() => this.pollInfo(s), POLL_MS);
        if (s.closeNow) this.close(s); else this.schedule();
      } else if (msg.type === "ack") {
        s.acked += 1;
        $("st-received").textContent = msg.tokens_received;
        this.mark(s);
      } else if (msg.type === "reasoning") {
        $("notes-box").hidden = false;
        $("stream-notes").textContent += msg.delta;
      } else if (msg.type === "chunk") {
        for (const c of msg.choices || []) {
          const d = c.delta || {};
          if (d.content) {
            if (!s.first) {
              s.first = true;
              const ms = performance.now() - s.t0;
              $("t-stream").textContent = `${ms.toFixed(0)} ms`;
              $("t-stream").dataset.ms = ms.toFixed(1);
            }
            $("stream-answer").textContent += d.content;
          }
        }
      } else if (msg.type === "done") {
        s.done = true;
        this.setState("answered");
        $("stream-send").disabled = false;
        $("compare").disabled = false;
        s.ws.close();
        if (this.text() !== s.sent) { this.s = null; this.schedule(); }  // typed meanwhile
      } else if (msg.type === "error") {
        this.failed(s, msg);
      }
    },

    failed(s, msg) {
      const err = msg.error || {};
      if (err.code === "no_chat_template" && !this.plain) {
        this.plain = true;
        say("This model has no chat template: your text is streamed as a plain prompt " +
            "(the system prompt is not used).", "info");
      }
      const restart = (RESTART_CODES.has(err.code) || err.code === "no_chat_template") &&
        this.restarts < 2;
      this.drop(s);
      if (restart) {
        this.restarts += 1;
        say(`The session ended (${err.code}); a new one starts with your text.`, "info");
        if (s.closing) { this.submit(s.t0); return; }
        this.schedule();
      } else {
        say(describe(0, msg));
        this.setState("error");
        this.retryAt = performance.now() + RETRY_MS;
        $("stream-send").disabled = false;
      }
    },

    drop(s) {
      this.stopPolling(s);
      if (this.s === s) this.s = null;
      s.done = true;
      if (s.ws.readyState <= 1) s.ws.close();
    },

    stopPolling(s) {
      if (s.poll) clearInterval(s.poll);
      s.poll = null;
    },

    async pollInfo(s) {
      if (!s.sid || s.closing) return;
      try {
        const r = await fetch(`/v1/sessions/${encodeURIComponent(s.sid)}`, { headers: headers() });
        if (!r.ok || this.s !== s || s.closing) return;
        const info = await r.json();
        s.infoSeq = info.next_seq;
        this.show(info.tokens_received, info.tokens_computed);
        this.mark(s);
      } catch (e) { /* the WebSocket reports lost connections */ }
    },

    // data-synced="1" on #st-state: every edit is acknowledged and the numbers shown come
    // from a look at the session after the last of them (what tests and benchmarks wait on).
    mark(s) {
      const synced = this.s === s && s.ready && !s.closing && s.sent === this.text() &&
        s.acked === s.seq && s.infoSeq === s.seq;
      $("st-state").dataset.synced = synced ? "1" : "0";
    },

    show(received, computed) {
      $("st-received").textContent = received;
      $("st-computed").textContent = computed;
    },

    schedule() {
      if (this.timer) return;
      const now = performance.now();
      const wait = Math.max(0, this.lastSend + MIN_GAP_MS - now, this.retryAt - now);
      this.timer = setTimeout(() => { this.timer = null; this.sync(); }, wait);
    },

    // Bring the server's input up to the text box (one update).
    sync() {
      const s = this.s;
      const text = this.text();
      if (!s) { if (text) this.start(false); return; }
      if (!s.ready || s.closing || text === s.sent) return;
      this.update(s, text);
      this.lastSend = performance.now();
      if (this.text() !== s.sent) this.schedule();
    },

    update(s, text) {
      if (text.startsWith(s.sent)) {
        s.ws.send(JSON.stringify({ type: "append", text: text.slice(s.sent.length), seq: s.seq }));
      } else {
        s.ws.send(JSON.stringify({ type: "replace", text, seq: s.seq }));
      }
      s.seq += 1;
      s.sent = text;
      this.mark(s);
    },

    close(s) {
      s.closing = true;
      this.mark(s);
      this.stopPolling(s);
      $("st-at-enter").textContent = `${$("st-computed").textContent} of ${$("st-received").textContent}`;
      const text = this.text();
      const msg = { type: "close" };
      if (text !== s.sent && text.startsWith(s.sent)) {
        msg.text = text.slice(s.sent.length);  // the last chunk rides on the close
        msg.seq = s.seq;
      } else if (text !== s.sent) {
        this.update(s, text);
      }
      s.sent = text;
      s.ws.send(JSON.stringify(msg));
      this.setState("answering");
    },

    // Enter: close the input (t0: the key press, for the time to the first character).
    submit(t0) {
      const text = this.text();
      if (!text.trim()) { say("Type something first.", "info"); return; }
      if (this.s && this.s.closing && !this.s.done) return;  // answering already
      if (this.s && this.s.done) this.s = null;  // asked again: a new session
      clearTimeout(this.timer);
      this.timer = null;
      $("stream-answer").textContent = "";
      $("t-stream").textContent = "…";
      delete $("t-stream").dataset.ms;
      $("t-whole").textContent = "–";
      delete $("t-whole").dataset.ms;
      $("t-ratio").textContent = "";
      $("compare").disabled = true;
      $("compare-answer").textContent = "";
      $("stream-send").disabled = true;
      if (!this.s) this.start(true);
      const s = this.s;
      s.t0 = t0;
      if (s.ready) this.close(s); else s.closeNow = true;
    },

    reset() {
      if (this.s) this.drop(this.s);
      this.setState("none");
      this.show(0, 0);
      $("st-at-enter").textContent = "–";
      $("stream-send").disabled = false;
    },
  };

  $("stream-input").addEventListener("input", () => {
    if (stream.s && stream.s.done) stream.s = null;  // the last answer is over: a new session
    $("st-state").dataset.synced = "0";
    stream.schedule();
  });
  $("stream-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      const t0 = performance.now();
      ev.preventDefault();
      stream.submit(t0);
    }
  });
  $("stream-send").addEventListener("click", () => stream.submit(performance.now()));
  $("stream-reset").addEventListener("click", () => { stream.reset(); $("stream-input").focus(); });

  // The same question sent whole at the end, as one chat completion (its own cache salt,
  // so it computes the prompt from scratch, as it would had it not been streamed).
  $("compare").addEventListener("click", async () => {
    const btn = $("compare");
    btn.disabled = true;
    $("t-whole").textContent = "…";
    const messages = stream.plain ? { prompt: stream.text() }
      : [...systemMessages(), { role: "user", content: stream.text() }];
    const salt = "playground-compare-" + Date.now() + "-" + Math.random().toString(36).slice(2);
    const out = $("compare-answer");
    out.textContent = "";
    const t0 = performance.now();
    let first = false;
    try {
      await chatStream(messages, { cache_salt: salt }, undefined, {
        reasoning: () => {},
        content: (t) => {
          if (!first) {
            first = true;
            const ms = performance.now() - t0;
            $("t-whole").textContent = `${ms.toFixed(0)} ms`;
            $("t-whole").dataset.ms = ms.toFixed(1);
            const streamed = Number($("t-stream").dataset.ms);
            if (streamed > 0) $("t-ratio").textContent = `(${(ms / streamed).toFixed(1)}× the streamed time)`;
          }
          out.textContent += t;
        },
      });
      if (!first) $("t-whole").textContent = "no answer text";
    } catch (e) {
      $("t-whole").textContent = "failed";
      say(e.message || String(e));
    } finally {
      btn.disabled = false;
    }
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
  async function pollMetrics() {
    try {
      const r = await fetch("/metrics", { headers: headers() });
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
})();
