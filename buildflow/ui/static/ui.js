// The buildflow UI page: uploads, the live gallery, metrics charts and dead letters.
// Data arrives as server-sent events from /api/events; every text from the server is put
// into the page with textContent (object names and error reasons are user-controlled).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    // The server has set an HttpOnly cookie with the token: keep it out of the address bar.
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
  }
  let config = null;
  let processor = params.get("processor");
  let events = null;
  const cards = new Map(); // key -> element
  let rateChart = null;
  let latencyChart = null;

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const q = (extra) => {
    const p = new URLSearchParams(extra || {});
    if (processor) p.set("processor", processor);
    const s = p.toString();
    return s ? "?" + s : "";
  };
  const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const fmtMs = (n) => (n === null || n === undefined ? "–" : n >= 10000 ? (n / 1000).toFixed(1) + " s" : Math.round(n) + " ms");
  const fmtBytes = (n) => (n >= 1048576 ? (n / 1048576).toFixed(0) + " MiB" : Math.round(n / 1024) + " KiB");
  const thumbUrl = (name) => "api/thumbnails/" + name.split("/").map(encodeURIComponent).join("/") + q();

  function setStatus(state, text) {
    const s = $("run-status");
    s.dataset.state = state;
    s.textContent = text;
  }

  // -- uploads ---------------------------------------------------------------
  function logUpload(text, cls) {
    const li = el("li", cls, text);
    $("upload-log").prepend(li);
    return li;
  }

  async function uploadOne(file) {
    const li = logUpload(file.name + ": uploading…", "pending");
    if (config && file.size > config.max_upload_bytes) {
      li.className = "refused";
      li.textContent = `${file.name}: refused, larger than ${fmtBytes(config.max_upload_bytes)}`;
      return;
    }
    const form = new FormData();
    form.append("files", file, file.name);
    try {
      const r = await fetch("api/uploads" + q(), { method: "POST", body: form, credentials: "same-origin" });
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        const u = body.uploaded[0];
        li.className = "ok";
        li.textContent = u.name === file.name ? `${file.name} uploaded` : `${file.name} uploaded as ${u.name}`;
      } else {
        li.className = "refused";
        const reason = body.refused && body.refused.length ? body.refused[0].reason : body.detail || r.statusText;
        li.textContent = `${file.name}: refused (${r.status}): ${reason}`;
      }
    } catch (e) {
      li.className = "refused";
      li.textContent = `${file.name}: upload failed: ${e}`;
    }
  }

  async function uploadAll(files) {
    const list = Array.from(files);
    const workers = Array.from({ length: Math.min(4, list.length) }, async () => {
      while (list.length) await uploadOne(list.shift());
    });
    await Promise.all(workers);
  }

  function wireUploads() {
    const zone = $("drop-zone");
    const input = $("file-input");
    input.addEventListener("change", () => {
      uploadAll(input.files).then(() => { input.value = ""; });
    });
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => {
      e.preventDefault();
      zone.classList.remove("over");
    }));
    zone.addEventListener("drop", (e) => uploadAll(e.dataTransfer.files));
  }

  // -- registered data sets (buildflow.datasets) ------------------------------------
  function wireTestSet(p) {
    const form = $("test-set");
    const sets = (config && config.datasets) || [];
    form.hidden = !p || sets.length === 0;
    if (form.hidden) return;
    const choice = $("test-set-name");
    choice.replaceChildren();
    for (const d of sets) {
      for (const [split, size] of Object.entries(d.splits)) {
        const o = new Option(`${d.title}: ${split} (${size.toLocaleString()})`, `${d.name}:${split}`);
        o.dataset.size = String(size);
        choice.append(o);
      }
    }
    const preferred = sets.find((d) => d.name === p.dataset) || sets[0];
    choice.value = `${preferred.name}:${Object.keys(preferred.splits)[0]}`;
    const limits = () => {
      const size = Number(choice.selectedOptions[0].dataset.size);
      $("test-set-end").max = size;
      $("test-set-start").max = size - 1;
    };
    choice.onchange = limits;
    limits();
    form.onsubmit = async (e) => {
      e.preventDefault();
      const [name, split] = choice.value.split(":");
      const start = Number($("test-set-start").value);
      const end = Number($("test-set-end").value);
      const out = $("test-set-result");
      out.textContent = "publishing…";
      const r = await fetch("api/datasets/" + encodeURIComponent(name), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ processor: p.name, split, start, end }),
        credentials: "same-origin",
      });
      const body = await r.json().catch(() => ({}));
      out.textContent = r.ok ? `sent ${body.sent} images (${start}..${end - 1})` : `refused (${r.status}): ${body.detail}`;
    };
  }

  // -- metrics ---------------------------------------------------------------
  function makeChart(canvas, datasets) {
    return new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        normalized: true,
        elements: { point: { radius: 0 }, line: { borderWidth: 2, tension: 0.25 } },
        scales: {
          x: { ticks: { maxTicksLimit: 6, callback(v) { return this.getLabelForValue(v) + " s"; } }, grid: { display: false } },
          y: { beginAtZero: true, ticks: { maxTicksLimit: 5 } },
        },
        plugins: { legend: { display: datasets.length > 1, labels: { boxWidth: 10 } } },
      },
    });
  }

  function initCharts() {
    rateChart = makeChart($("chart-rate"), [
      { label: "images/s", data: [], borderColor: "#2f6fde", backgroundColor: "rgba(47,111,222,.12)", fill: true },
    ]);
    latencyChart = makeChart($("chart-latency"), [
      { label: "p50", data: [], borderColor: "#1f9d55" },
      { label: "p95", data: [], borderColor: "#d1453b" },
    ]);
  }

  function showMetrics(m) {
    const p = m.processors.find((x) => x.name === processor) || m.processors[0];
    const t = m.totals;
    $("m-events").textContent = fmtInt(t.events);
    $("m-rows").textContent = fmtInt(t.rows);
    $("m-dead").textContent = fmtInt(t.dead_letters);
    $("m-dead").classList.toggle("nonzero", t.dead_letters > 0);
    $("m-loads").textContent = fmtInt(t.model_loads);
    $("m-replicas").textContent = fmtInt(t.replicas);
    $("m-backlog").textContent = fmtInt(t.backlog);
    const rate = m.history.length ? m.history[m.history.length - 1].events_per_s : null;
    $("m-rate").textContent = rate === null ? "–" : rate.toFixed(1);
    $("m-p50").textContent = fmtMs(p ? p.latency_ms.p50 : null);
    $("m-p95").textContent = fmtMs(p ? p.latency_ms.p95 : null);
    if (m.running) {
      setStatus("running", "running");
      $("elapsed").textContent = m.elapsed_s !== null ? `${Math.round(m.elapsed_s)} s` : "";
    } else {
      setStatus("starting", "starting: loading the model…");
    }
    if (rateChart) {
      const labels = m.history.map((h) => h.t.toFixed(0));
      rateChart.data.labels = labels;
      rateChart.data.datasets[0].data = m.history.map((h) => h.events_per_s);
      rateChart.update("none");
      latencyChart.data.labels = labels;
      latencyChart.data.datasets[0].data = m.history.map((h) => h.p50_ms);
      latencyChart.data.datasets[1].data = m.history.map((h) => h.p95_ms);
      latencyChart.update("none");
    }
  }

  // -- gallery ---------------------------------------------------------------
  function makeCard(c) {
    const card = el("article", "card new");
    card.dataset.key = c.key;
    if (c.name) card.dataset.name = c.name;
    if (c.event_id) card.dataset.eventId = c.event_id;
    if (c.name) {
      const img = el("img", "thumb");
      img.alt = "";
      img.loading = "lazy";
      img.src = thumbUrl(c.name);
      img.onload = () => { if (img.naturalWidth < 64) img.classList.add("small-source"); };
      img.onerror = () => img.replaceWith(el("div", "thumb thumb-missing", "no preview"));
      card.append(img);
    } else {
      card.append(el("div", "thumb thumb-missing", "no preview"));
    }
    const body = el("div", "card-body");
    body.append(el("div", "card-title", c.name || c.event_id));
    const ol = el("ol", "labels");
    for (const l of c.labels.slice(0, 5)) {
      const li = el("li", "label-row");
      const name = el("span", "label", l.label);
      name.title = l.label;
      li.append(name);
      const bar = el("span", "bar");
      const fill = el("span");
      const pct = typeof l.confidence === "number" ? Math.max(0, Math.min(1, l.confidence)) * 100 : 0;
      fill.style.width = pct.toFixed(1) + "%";
      bar.append(fill);
      li.append(bar, el("span", "conf", typeof l.confidence === "number" ? pct.toFixed(0) + "%" : ""));
      ol.append(li);
    }
    body.append(ol);
    const meta = el("div", "meta");
    const f = c.fields || {};
    if (f.true_label !== undefined && f.true_label !== null) {
      meta.append(el("span", f.correct ? "truth right" : "truth wrong", `true label: ${f.true_label} ${f.correct ? "✓" : "✗"}`));
    }
    if (c.latency_ms !== null && c.latency_ms !== undefined) meta.append(el("span", "latency", "upload → row " + fmtMs(c.latency_ms)));
    const eid = el("code", "event-id", c.event_id);
    eid.title = c.event_id || "";
    meta.append(eid);
    body.append(meta);
    card.append(body);
    card.addEventListener("animationend", () => card.classList.remove("new"));
    return card;
  }

  function showRows(rows) {
    const gallery = $("gallery");
    const keep = new Set();
    const ordered = rows.map((c) => {
      keep.add(c.key);
      return cards.get(c.key) || makeCard(c);
    });
    for (const [key, card] of cards) if (!keep.has(key)) { card.remove(); cards.delete(key); }
    rows.forEach((c, i) => cards.set(c.key, ordered[i]));
    gallery.replaceChildren(...ordered);
    $("gallery-note").hidden = rows.length > 0;
  }

  // -- dead letters ----------------------------------------------------------
  function showDeadLetters(list) {
    const tbody = $("dead-letters").querySelector("tbody");
    tbody.replaceChildren(...list.map((d) => {
      const tr = el("tr");
      tr.dataset.name = d.object_name || "";
      tr.dataset.eventId = d.event_id;
      const when = d.failed_at ? new Date(d.failed_at).toLocaleTimeString() : "";
      tr.append(el("td", "", when), el("td", "object", d.object_name || d.event_id), el("td", "error", d.error_type));
      const reason = el("td", "reason", d.reason);
      reason.title = (d.errors || []).join("\n");
      tr.append(reason, el("td", "", d.stage), el("td", "", d.attempts));
      return tr;
    }));
    $("dead-letters").hidden = list.length === 0;
    $("dead-note").hidden = list.length > 0;
  }

  // -- live stream -----------------------------------------------------------
  function connect() {
    if (events) events.close();
    events = new EventSource("api/events" + q());
    events.addEventListener("metrics", (e) => showMetrics(JSON.parse(e.data)));
    events.addEventListener("rows", (e) => showRows(JSON.parse(e.data).rows));
    events.addEventListener("dead_letters", (e) => showDeadLetters(JSON.parse(e.data).dead_letters));
    events.addEventListener("sink_error", (e) => {
      const err = JSON.parse(e.data);
      const note = $(err.what === "rows" ? "gallery-note" : "dead-note");
      note.hidden = false;
      note.textContent = "Cannot read: " + err.detail;
    });
    events.onerror = () => setStatus("disconnected", "disconnected: retrying…");
  }

  function choose(name) {
    processor = name;
    const p = config.processors.find((x) => x.name === name) || config.processors[0];
    $("source-desc").textContent = `into ${p.source} → ${p.sink}`;
    cards.clear();
    $("gallery").replaceChildren();
    wireTestSet(p);
    connect();
  }

  async function start() {
    wireUploads();
    if (window.Chart) initCharts();
    const r = await fetch("api/config", { credentials: "same-origin" });
    if (!r.ok) {
      setStatus("disconnected", `error ${r.status}`);
      return;
    }
    config = await r.json();
    $("upload-limits").textContent = `JPEG, PNG, GIF, WebP, BMP, TIFF · up to ${fmtBytes(config.max_upload_bytes)} each`;
    $("file-input").accept = config.accept.join(",");
    const select = $("processor");
    for (const p of config.processors) select.append(new Option(p.name, p.name));
    $("processor-choice").hidden = config.processors.length < 2;
    $("app-title").textContent = config.processors.map((p) => p.name).join(", ");
    select.value = processor && config.processors.some((p) => p.name === processor) ? processor : config.processors[0].name;
    select.onchange = () => choose(select.value);
    choose(select.value);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
