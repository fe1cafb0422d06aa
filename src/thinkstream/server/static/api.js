// thinkstream playground, shared parts: messages, the API key, settings, the server's
// state, and streamed (SSE) chat completions. Plain JavaScript modules, no dependencies.
export const $ = (id) => document.getElementById(id);
const KEY_STORE = "thinkstream.apiKey";

// ------------------------------------------------------------------ messages
export function say(text, kind = "error") {
  const box = $("messages");
  for (const old of [...box.children]) if (old.dataset.text === text) old.remove();  // once
  const p = document.createElement("p");
  p.dataset.text = text;
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

export function describe(status, body) {
  const err = body && body.error ? body.error : body;
  const msg = err && err.message ? err.message : (typeof body === "string" ? body : "");
  const code = err && err.code ? ` (${err.code})` : "";
  return status ? `HTTP ${status}: ${msg || "request failed"}${code}` : `${msg}${code}`;
}

// ------------------------------------------------------------------ API key
export const apiKey = () => localStorage.getItem(KEY_STORE) || "";
export function setApiKey(value) {  // kept in this browser's local storage ("" forgets it)
  $("messages").replaceChildren();  // what was said about the old key no longer holds
  if (value) localStorage.setItem(KEY_STORE, value); else localStorage.removeItem(KEY_STORE);
}
export function headers(json = false) {
  const h = {};
  if (apiKey()) h.Authorization = "Bearer " + apiKey();
  if (json) h["Content-Type"] = "application/json";
  return h;
}

// ------------------------------------------------------------------ settings
export function sampling() {
  const num = (id) => {
    const v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  };
  const stop = $("stop").value.split("\n").filter((s) => s.length > 0);
  const body = { temperature: num("temperature"), top_p: num("top-p"),
                 max_tokens: num("max-tokens"), seed: num("seed") };
  if (stop.length) body.stop = stop;
  if (server.model) body.model = server.model;
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return body;
}
export function systemMessages() {
  const s = $("system").value;
  return s.trim() ? [{ role: "system", content: s }] : [];
}

// ------------------------------------------------------------------ server state
export const server = { model: null };  // the served model's id, once known
export async function checkServer() {
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
    server.model = body.data && body.data.length ? body.data[0].id : null;
    pill.textContent = "ready · " + (server.model || "model");
    pill.className = "pill ok";
  } catch (e) {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
    say("Cannot reach the server: " + (e.message || e));
  }
}

// ------------------------------------------------------------------ SSE reading
// Reads an OpenAI-style event stream; calls onChunk(obj) per data event.
export async function readSSE(response, onChunk) {
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
export async function chatStream(messages, extra, signal, on) {
  const input = Array.isArray(messages) ? { messages } : { prompt: messages.prompt };
  const path = input.messages ? "/v1/chat/completions" : "/v1/completions";
  const body = { ...sampling(), ...extra, ...input, stream: true };
  try {
    const r = await fetch(path, {
      method: "POST", headers: headers(true), body: JSON.stringify(body), signal });
    if (!r.ok) {
      const err = await r.json().catch(() => r.statusText);  // a proxy's HTML: its status
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
  } catch (e) {  // fetch's TypeError ("network error", "Failed to fetch"): say what it means
    if (e.name !== "TypeError") throw e;
    throw new Error(`The connection to the server was lost (${e.message}).`);
  }
}
