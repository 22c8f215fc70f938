// weightport console: copy buttons, confirmations and live archive-build progress.
// Every page works without this script; it only adds conveniences.
(() => {
  "use strict";

  const announce = (text) => {
    const region = document.getElementById("announce");
    if (!region) return;
    region.textContent = "";
    setTimeout(() => { region.textContent = text; }, 50);
  };

  const copyText = async (text) => {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    // Plain-http pages on another host are not a secure context: fall back to a selection.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (!copied) throw new Error("copy refused");
  };

  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    const label = button.textContent;
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await copyText(source.textContent);
        button.textContent = "Copied";
        announce("Copied to the clipboard");
      } catch {
        button.textContent = "Select and copy";
        announce("Could not copy automatically; select the text instead");
      }
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  }

  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.form.addEventListener("submit", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }

  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  const humanSize = (size) => {
    let value = size;
    for (const unit of units) {
      if (value < 1000 || unit === units[units.length - 1]) {
        return unit === "B" ? `${value} B` : `${Number(value.toPrecision(3))} ${unit}`;
      }
      value /= 1000;
    }
    return `${size} B`;
  };

  const setText = (box, selector, text) => {
    const element = box.querySelector(selector);
    if (element) element.textContent = text;
  };

  const showBuild = (box, build) => {
    const error = build.state === "failed" && build.error ? ` (${build.error})` : "";
    setText(box, "[data-build-state]", `Compressed build: ${build.state}${error}`);
    const progress = box.querySelector("[data-build-progress]");
    if (progress && (build.state === "pending" || build.state === "building")) {
      progress.max = build.total_bytes || 1;
      progress.value = build.done_bytes;
      progress.textContent = `${build.done_bytes} of ${build.total_bytes} bytes`;
    } else if (progress) {
      progress.remove();
    }
    if (build.state === "ready" && build.size !== null) {
      setText(box, "[data-size]", humanSize(build.size));
      setText(box, "[data-encoding]", "zstd-compressed");
    }
  };

  const done = new Set();
  const poll = async (url) => {
    let data;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.includes("json")) return;  // signed out, or gone
      data = await response.json();
    } catch {
      return;
    }
    for (const build of data.archives) {
      const boxes = document.querySelectorAll(`[data-digest="${build.plan_digest}"]`);
      for (const box of boxes) showBuild(box, build);
      if (boxes.length && build.state === "ready" && !done.has(build.plan_digest)) {
        done.add(build.plan_digest);
        announce(`Compressed archive ready: ${humanSize(build.size)}`);
      }
    }
    if (data.active) setTimeout(() => poll(url), 1000);
  };

  const live = document.querySelector("[data-progress-url]");
  if (live) setTimeout(() => poll(live.dataset.progressUrl), 1000);
})();
