// The docs site's one enhancement beyond the console's script (copy buttons, theme links):
// picking a key name applies at once. Everything works without it.
(() => {
  "use strict";
  document.addEventListener("change", (event) => {
    if (event.target.id === "key-pick") event.target.form.submit();
  });
})();
