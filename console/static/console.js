// Progressive enhancement only: every form and page works without this file.
"use strict";

// Poll often while a delivery is pending (something is about to change), gently otherwise.
const LIVE_BUSY_MS = 2000;
const LIVE_IDLE_MS = 10000;
const pause = (region) =>
  region.querySelector('[data-status="pending"]') ? LIVE_BUSY_MS : LIVE_IDLE_MS;

// Fetch a live region's source and replace every part of the page it sends (elements with the
// same data-live-id), keeping open <details> open.
async function refresh(region) {
  const open = new Set(
    [...document.querySelectorAll("details[data-keep-open][open]")].map((d) => d.dataset.keepOpen),
  );
  const response = await fetch(region.dataset.liveSrc, {
    credentials: "same-origin",
    headers: { Accept: "text/html" },
    cache: "no-store",
    redirect: "manual",
  });
  if (!response.ok) {
    // Signed out, gone, or the server is away: stop quietly; a reload shows why.
    return false;
  }
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const details of fresh.querySelectorAll("details[data-keep-open]")) {
    details.open = open.has(details.dataset.keepOpen);
  }
  for (const part of fresh.querySelectorAll("[data-live-id]")) {
    const id = CSS.escape(part.dataset.liveId);
    const target = document.querySelector(`[data-live-id="${id}"]`);
    if (target) target.replaceChildren(...part.childNodes);
  }
  return true;
}

function keepLive(region) {
  let timer = null;
  const tick = async () => {
    timer = null;
    let again = true;
    if (!document.hidden) {
      try {
        again = await refresh(region);
      } catch {
        again = true; // a dropped connection: try again next time
      }
    }
    if (again) timer = setTimeout(tick, pause(region));
  };
  timer = setTimeout(tick, pause(region));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      timer = setTimeout(tick, 0);
    }
  });
}

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

  // Opening a confirmation puts the cursor where the confirmation goes.
  for (const details of document.querySelectorAll("details.danger-action")) {
    details.addEventListener("toggle", () => {
      if (details.open) details.querySelector("input:not([type=hidden])")?.focus();
    });
  }

  // Live regions (the delivery log) poll their fragment.
  for (const region of document.querySelectorAll("[data-live-src]")) keepLive(region);
});
