// The console's few enhancements; every page works without them.
(() => {
  "use strict";

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    const text = source.textContent.trim();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
    }
    const label = button.textContent;
    button.textContent = button.dataset.copied || "✓";
    setTimeout(() => { button.textContent = label; }, 1500);
  });

  // Theme links switch at once, without a reload; the cookie keeps the choice.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("[data-theme-set]");
    if (!link) return;
    event.preventDefault();
    const mode = link.dataset.themeSet;
    document.cookie = `lc_theme=${mode}; path=/; max-age=31536000; samesite=lax${location.protocol === "https:" ? "; secure" : ""}`;
    document.documentElement.dataset.theme = mode;
    document.querySelectorAll("[data-theme-set]").forEach((a) => {
      if (a.dataset.themeSet === mode) a.setAttribute("aria-current", "true"); else a.removeAttribute("aria-current");
    });
  });

  // Times marked data-local also show the viewer's own clock.
  const localTimes = (root) => {
    root.querySelectorAll("time[data-local]:not([data-done])").forEach((el) => {
      const when = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(when.getTime())) return;
      const text = when.toLocaleString(document.documentElement.lang, { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
      el.textContent += ` · ${el.dataset.local} ${text}`;
      el.dataset.done = "1";
    });
  };

  // Tabs: arrow keys move between tabs, as the ARIA pattern expects.
  const tabs = (root) => {
    root.querySelectorAll("[data-tabs]:not([data-ready])").forEach((box) => {
      box.dataset.ready = "1";
      const list = [...box.querySelectorAll("[role=tab]")];
      const select = (tab) => {
        list.forEach((t) => {
          const on = t === tab;
          t.setAttribute("aria-selected", on ? "true" : "false");
          t.tabIndex = on ? 0 : -1;
          document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
        });
        tab.focus();
      };
      list.forEach((tab, i) => {
        tab.addEventListener("click", () => select(tab));
        tab.addEventListener("keydown", (e) => {
          if (e.key === "ArrowRight") select(list[(i + 1) % list.length]);
          if (e.key === "ArrowLeft") select(list[(i - 1 + list.length) % list.length]);
        });
      });
    });
  };

  const ready = (root) => { localTimes(root); tabs(root); };
  document.addEventListener("DOMContentLoaded", () => ready(document));
  document.addEventListener("htmx:afterSwap", (event) => {
    ready(document);
    const focus = document.querySelector("[data-autofocus]");
    if (focus && event.detail.target.id === "keys-main") focus.focus();
  });
  // A failed htmx form (4xx with a page fragment) still shows its message.
  document.addEventListener("htmx:beforeSwap", (event) => {
    if (event.detail.xhr.status >= 400 && event.detail.xhr.status < 500 && event.detail.xhr.responseText.includes('id="keys-main"')) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
