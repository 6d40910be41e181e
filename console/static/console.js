// Progressive enhancement only: every form works without this file.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // The create form renders every environment's help text; show the selected one.
  for (const select of document.querySelectorAll("select[data-help-target]")) {
    const help = document.getElementById(select.dataset.helpTarget);
    const show = () => {
      for (const item of help.querySelectorAll("[data-environment]")) {
        item.hidden = item.dataset.environment !== select.value;
      }
    };
    select.addEventListener("change", show);
    show();
  }

  // Copy buttons next to secrets shown once.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy";
      }
    });
  }
});
