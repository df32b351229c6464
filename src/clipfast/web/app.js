"use strict";
// clipfast's web page: search an index by text, by image or "more like this"; without an index, zero-shot
// classification of an image against typed labels. Plain JavaScript, no build step, and no request leaves this
// server: thumbnails come from /thumbnail, ids that are URLs are shown as links and never loaded.
(function () {
  const $ = (id) => document.getElementById(id);
  const statusLine = $("status");
  const grid = $("results");
  let info = null;
  let classifyFile = null;

  function say(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const payload = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) {
      throw new Error(payload.error || "HTTP " + response.status);
    }
    return payload;
  }

  function readFile(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);  // a data:image/...;base64, URI, which the server takes
      reader.onerror = () => reject(new Error("Cannot read " + file.name));
      reader.readAsDataURL(file);
    });
  }

  const isUrl = (value) => typeof value === "string" && /^https?:\/\//i.test(value);

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;  // never innerHTML: ids and captions are data
    return node;
  }

  function thumb(record) {
    const box = element("div", "thumb");
    const source = record.url || record.path || record.id;
    if (info.index.kind === "text") {
      box.appendChild(element("p", "", String(record.id)));
    } else if (isUrl(source)) {
      const link = element("a", "", source);
      link.href = source;
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      box.appendChild(link);
    } else {
      const image = element("img");
      image.src = "/thumbnail?row=" + encodeURIComponent(record.row);
      image.alt = String(record.caption || record.id);
      image.loading = "lazy";
      image.onerror = () => box.replaceChildren(element("p", "", String(record.id)));
      box.appendChild(image);
    }
    return box;
  }

  function card(record) {
    const item = element("li", "card");
    item.appendChild(thumb(record));
    const meta = element("div", "meta");
    const caption = record.caption || record.text || record.title || String(record.id).split("/").pop();
    meta.appendChild(element("p", "caption", caption));
    const row = element("div", "row");
    row.appendChild(element("span", "score", Number(record.score).toFixed(3)));
    const more = element("button", "secondary", "More like this");
    more.type = "button";
    more.setAttribute("aria-label", "More like " + caption);
    more.addEventListener("click", () => runSearch({row: record.row}, true));
    row.appendChild(more);
    meta.appendChild(row);
    item.appendChild(meta);
    return item;
  }

  function describe(query) {
    if (query.text !== undefined) return "\u201c" + query.text + "\u201d";
    if (query.row !== undefined) return "more like row " + query.row;
    return "your image";
  }

  function count() {
    const k = parseInt($("k").value, 10);
    return Number.isFinite(k) && k >= 1 ? Math.min(k, 1000) : 24;
  }

  async function runSearch(query, push) {
    const k = count();
    say("Searching\u2026");
    try {
      const results = await post("/search", Object.assign({}, query, {k: k}));
      grid.replaceChildren(...results.map(card));
      say(results.length + " results for " + describe(query));
      if (push) keepInUrl(query, k);
    } catch (error) {
      say(error.message, true);
    }
  }

  // the query lives in the URL (?q=... or ?row=N, and k), so that a search can be shared or bookmarked
  function keepInUrl(query, k) {
    const params = new URLSearchParams();
    if (query.text !== undefined) params.set("q", query.text);
    else if (query.row !== undefined) params.set("row", String(query.row));
    else {
      history.pushState(null, "", location.pathname);  // an uploaded image does not fit in a URL
      return;
    }
    params.set("k", String(k));
    history.pushState(null, "", location.pathname + "?" + params.toString());
  }

  function searchFromUrl() {
    const params = new URLSearchParams(location.search);
    if (params.has("k")) $("k").value = params.get("k");
    const row = params.get("row");
    if (params.get("q")) {
      $("q").value = params.get("q");
      runSearch({text: params.get("q")}, false);
    } else if (row !== null && /^\d+$/.test(row)) {
      runSearch({row: Number(row)}, false);
    } else {
      grid.replaceChildren();
    }
  }

  function dropZone(zone, input, onFile) {
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) onFile(file);
    });
    input.addEventListener("change", () => {
      if (input.files[0]) onFile(input.files[0]);
    });
  }

  async function searchByImage(file) {
    try {
      await runSearch({image: await readFile(file)}, true);
    } catch (error) {
      say(error.message, true);
    }
  }

  async function classify() {
    const labels = $("labels").value.split(",").map((label) => label.trim()).filter(Boolean);
    if (!classifyFile) return say("Choose or drop an image first.", true);
    if (!labels.length) return say("Type at least one label.", true);
    say("Classifying\u2026");
    try {
      const image = await readFile(classifyFile);
      const preview = $("classify-preview");
      preview.src = image;
      preview.alt = classifyFile.name;
      preview.hidden = false;
      const answer = await post("/classify", {images: [image], labels: labels});
      $("classify-results").replaceChildren(...answer.results[0].map((entry) => {
        const item = element("li", "", entry.label + " \u2014 " + (100 * entry.score).toFixed(1) + "%");
        const bar = element("span", "bar");
        bar.style.width = Math.max(1, Math.round(100 * entry.score)) + "%";
        item.appendChild(bar);
        return item;
      }));
      say("Scores of " + classifyFile.name + " against " + labels.length + " labels");
    } catch (error) {
      say(error.message, true);
    }
  }

  async function start() {
    try {
      const response = await fetch("/info");
      info = await response.json();
    } catch (error) {
      return say("Cannot reach the server: " + error.message, true);
    }
    $("model").textContent = info.model +
      (info.index ? " \u00b7 " + info.index.rows + " indexed " + info.index.kind + "s" : "");
    if (info.index) {
      $("search-panel").hidden = false;
      $("search-form").addEventListener("submit", (event) => {
        event.preventDefault();
        const text = $("q").value.trim();
        if (text) runSearch({text: text}, true);
      });
      dropZone($("search-drop"), $("search-file"), searchByImage);
      window.addEventListener("popstate", searchFromUrl);
      searchFromUrl();
      $("q").focus();
    } else {
      $("classify-panel").hidden = false;
      dropZone($("classify-drop"), $("classify-file"), (file) => {
        classifyFile = file;
        classify();
      });
      $("classify-form").addEventListener("submit", (event) => {
        event.preventDefault();
        classify();
      });
    }
  }

  start();
})();
