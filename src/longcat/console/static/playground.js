// The playground, streamed: POST /api/v1/playground answers SSE events (request, delta, done, error).
(() => {
  "use strict";
  const form = document.getElementById("pg-form");
  if (!form || !window.fetch || !window.TextDecoder) return;
  const chat = document.getElementById("pg-chat");
  const meta = document.getElementById("pg-meta");
  const send = document.getElementById("pg-send");
  const clear = document.getElementById("pg-clear");
  const input = document.getElementById("f-message");
  const csrf = document.body.dataset.csrf;
  let history = [];

  const bubble = (kind, who, text) => {
    const li = document.createElement("li");
    li.className = `msg ${kind}`;
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    const body = document.createElement("div");
    body.className = "bubble";
    body.textContent = text;
    li.append(label, body);
    chat.append(li);
    chat.scrollTop = chat.scrollHeight;
    return body;
  };
  const show = (id, value) => {
    const el = document.getElementById(id);
    if (el) el.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  };

  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  clear.addEventListener("click", () => { history = []; chat.replaceChildren(); clear.hidden = true; meta.textContent = ""; input.focus(); });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) { input.focus(); return; }
    const data = new FormData(form);
    history.push({ role: "user", content: text });
    bubble("user", chat.dataset.you, text);
    input.value = "";
    const out = bubble("assistant", chat.dataset.model, "");
    out.setAttribute("aria-busy", "true");
    send.disabled = true;
    clear.hidden = false;
    const payload = {
      format: data.get("format"), model: data.get("model"), system: data.get("system"), messages: history,
      temperature: data.get("temperature"), max_tokens: data.get("max_tokens"), stream: data.get("stream") === "on",
    };
    document.querySelectorAll("[data-chosen]").forEach((b) => { b.hidden = b.dataset.chosen !== payload.format; });
    try {
      const response = await fetch("/api/v1/playground", {
        method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(payload),
      });
      if (!response.ok || !response.body) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let finished = false;
      while (!finished) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const name = (frame.match(/^event: (.*)$/m) || [])[1];
          const raw = (frame.match(/^data: (.*)$/m) || [])[1];
          if (!name || raw === undefined) continue;
          const msg = JSON.parse(raw);
          if (name === "request") {
            show("req-openai", msg.openai); show("req-anthropic", msg.anthropic);
            show("res-openai", ""); show("res-anthropic", "");
            for (const [k, v] of Object.entries(msg.snippets || {})) show(`snip-${k}`, v);
          } else if (name === "delta") {
            if (!msg.thinking) out.textContent += msg.text;
          } else if (name === "done") {
            out.textContent = msg.text;
            history.push({ role: "assistant", content: msg.text || " " });
            show("res-openai", msg.openai); show("res-anthropic", msg.anthropic);
            meta.textContent = meta.dataset.template
              ? meta.dataset.template.replace("{id}", msg.request_id).replace("{i}", msg.usage.input_tokens).replace("{o}", msg.usage.output_tokens)
              : msg.request_id;
            finished = true;
          } else if (name === "error") {
            out.parentElement.className = "msg error";
            out.previousElementSibling.textContent = form.dataset.errorLabel;
            out.textContent = msg.text || msg.message;
            show("res-openai", msg.openai); show("res-anthropic", msg.anthropic);
            history.pop();
            finished = true;
          }
        }
      }
    } catch (err) {
      out.parentElement.className = "msg error";
      out.textContent = String(err.message || err);
      history.pop();
    } finally {
      out.removeAttribute("aria-busy");
      send.disabled = false;
      input.focus();
    }
  });
})();
