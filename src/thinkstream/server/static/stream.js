// thinkstream playground, streaming input: the text box streamed into a session over
// /v1/sessions/ws as it is typed, Enter closes it; the "sent whole" comparison.
import { $, apiKey, chatStream, describe, headers, sampling, say, systemMessages } from "./api.js";

const MIN_GAP_MS = 30;        // at most ~33 updates a second (the server allows 50)
const POLL_MS = 250;          // session progress while typing
const RETRY_MS = 1000;        // after a refused session open
const MAX_CHUNK = 8192;       // characters per opening prompt, append or close text (the
                              // server refuses more than 16384: a large paste goes in pieces)
const RESTART_CODES = new Set(["session_closed", "session_not_found", "no_session",
                               "sequence_gap", "chunk_rate_exceeded"]);

// One WebSocket per session. `sent` is the text the server holds; every edit that
// extends it is an append, anything else (an edit or deletion earlier on) a replace of
// the whole input. Each update carries the next sequence number. A session that ends
// under the page (idle timeout, lost connection, a refused update) is dropped, and the
// next edit or Enter opens a new one holding the whole text.
// At most `n` UTF-16 units of `text`, never half a surrogate pair.
function head(text, n = MAX_CHUNK) {
  if (text.length <= n) return text;
  const c = text.charCodeAt(n - 1);
  return text.slice(0, c >= 0xd800 && c <= 0xdbff ? n - 1 : n);
}

export const stream = {
  // The session: ws, sid, seq (next number), sent, acked (acks so far), infoSeq (next_seq
  // of the last look at it), ready / closing / done, t0 (Enter's time), first (an answer
  // character came), poll (timer), closeNow (Enter came before the open finished).
  s: null,
  timer: null,
  lastSend: 0,
  retryAt: 0,
  restarts: 0,        // sessions restarted in a row (reset by an open that succeeds)
  plain: false,       // the model has no chat template: stream a plain prompt
  asked: "",          // the text at the last Enter
  text: () => $("stream-input").value,

  setState(text) { $("st-state").textContent = text; },

  start(closeNow) {
    const text = head(this.text());  // the rest follows as appends
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
        this.noAnswer();
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
      this.noAnswer();
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

  // The answer asked for will not come: the time shown stops waiting.
  noAnswer() {
    if ($("t-stream").textContent === "…") $("t-stream").textContent = "failed";
  },

  stopPolling(s) {
    if (s.poll) clearInterval(s.poll);
    s.poll = null;
  },

  async pollInfo(s) {
    if (!s.sid || s.closing) return;
    try {
      const r = await fetch(`/v1/sessions/${encodeURIComponent(s.sid)}`, { headers: headers() });
      if (this.s !== s || s.closing) return;
      const info = r.ok ? await r.json() : r.status === 404 ? { state: "gone" } : null;
      if (!info || this.s !== s || s.closing) return;
      if (info.state !== "open") {  // ended under the page (idle timeout): not shown as open
        this.drop(s);
        this.setState("ended");
        say(`The session ended (${info.reason || info.state}); a new one starts with your ` +
            "text.", "info");
        return;
      }
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

  // One update towards `text`: a replace of the whole, or an append of at most MAX_CHUNK
  // characters (sync() schedules the next piece).
  update(s, text) {
    if (text.startsWith(s.sent)) {
      const piece = head(text.slice(s.sent.length));
      s.ws.send(JSON.stringify({ type: "append", text: piece, seq: s.seq }));
      s.sent += piece;
    } else {
      s.ws.send(JSON.stringify({ type: "replace", text, seq: s.seq }));
      s.sent = text;
    }
    s.seq += 1;
    this.mark(s);
  },

  close(s) {
    s.closing = true;
    this.mark(s);
    this.stopPolling(s);
    $("st-at-enter").textContent = `${$("st-computed").textContent} of ${$("st-received").textContent}`;
    const text = this.text();
    const msg = { type: "close" };
    if (!text.startsWith(s.sent)) this.update(s, text);  // a replace
    while (text.length - s.sent.length > MAX_CHUNK) this.update(s, text);  // appends
    if (text !== s.sent) {
      msg.text = text.slice(s.sent.length);  // the last piece rides on the close
      msg.seq = s.seq;
    }
    s.sent = text;
    s.ws.send(JSON.stringify(msg));
    this.setState("answering");
  },

  // Enter: close the input (t0: the key press, for the time to the first character).
  submit(t0) {
    const text = this.text();
    this.asked = text;  // what the comparison sends, whatever is typed afterwards
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
    if ($("t-stream").textContent === "…") $("t-stream").textContent = "stopped";
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
  const messages = stream.plain ? { prompt: stream.asked }
    : [...systemMessages(), { role: "user", content: stream.asked }];
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
