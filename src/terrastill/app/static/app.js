// terrastill web map: see the imagery, draw boxes, pick a model and a date, run a job, view it.
// Plain JS on MapLibre GL JS (copied from npm into vendor/ by `npm run --prefix web build`).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "terrastill-token";
  const DATE_KEY = "terrastill-date"; // a date the user picked wins over "latest imagery"
  const POLL_MS = 800;
  // A map position given in the URL (#zoom/lat/lon) wins over "open where the data is".
  const HASH_GIVEN = location.hash.length > 1;

  if (typeof maplibregl === "undefined") {
    $("no-maplibre").hidden = false;
    return;
  }

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    models: [],
    boxes: [], // [minx, miny, maxx, maxy] in lon/lat
    drawMode: false,
    drag: null, // {kind: "draw"|"resize", index, anchor: [lon, lat]}
    jobs: [],
    selected: null, // job id shown in the job panel
    shownLayers: null, // job id whose tiles are on the map
    pollTimer: null,
    home: null, // lon/lat extent of the catalogue's imagery, when the server knows it
    catalog: null, // GET /api/catalog, or null (older server, or not readable)
    dateTouched: false,
    imagerySeq: 0, // the latest imagery request; older answers are dropped
    imagery: null, // {date, minzoom} of the imagery layer on the map
    imageryProblem: "", // why there is no imagery layer, or why some of it fails to load
    basemapFailed: false,
  };

  // ---------------------------------------------------------------- API helpers
  function authHeaders() {
    return state.token ? { Authorization: `Bearer ${state.token}` } : {};
  }

  function messageOf(body, status) {
    if (!body) return `HTTP ${status}`;
    const d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("\n");
    }
    return JSON.stringify(body);
  }

  async function api(path, options = {}) {
    const opts = { ...options, headers: { ...(options.headers || {}), ...authHeaders() } };
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const res = await fetch(path, opts);
    let body = null;
    const type = res.headers.get("content-type") || "";
    if (type.includes("json")) body = await res.json();
    if (res.status === 401) {
      $("token-box").hidden = false;
      throw new Error(state.token ? "The token was refused: enter the right one." : "This server needs a token: enter it above.");
    }
    if (!res.ok) throw new Error(messageOf(body, res.status));
    return body;
  }

  function showError(err) {
    $("banner-text").textContent = err instanceof Error ? err.message : String(err);
    $("banner").hidden = false;
  }
  function clearError() {
    $("banner").hidden = true;
  }
  $("banner-close").addEventListener("click", clearError);

  // ---------------------------------------------------------------- the map
  const map = new maplibregl.Map({
    container: "map",
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#1b2530" } }],
    },
    center: [0, 20],
    zoom: 1.5,
    hash: true,
    boxZoom: false,
    attributionControl: { compact: true },
    transformRequest: (url) => {
      if (state.token && url.startsWith(`${location.origin}/api/`)) {
        return { url, headers: authHeaders() };
      }
      return { url };
    },
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-left");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  // the API paths this server offers (search and change routes exist only when configured):
  // optional panels ask here instead of probing a route and logging a 404
  const routes = fetch("openapi.json").then((r) => r.json())
    .then((spec) => new Set(Object.keys(spec.paths || {}))).catch(() => new Set());
  window.terrastill = { map, state, routes };

  const emptyFC = () => ({ type: "FeatureCollection", features: [] });

  function boxPolygon(b) {
    const [x0, y0, x1, y1] = b;
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]];
  }

  function graticule() {
    const b = map.getBounds();
    const span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
    const steps = [30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];
    const step = steps.find((s) => span / s >= 4) || steps[steps.length - 1];
    const features = [];
    const x0 = Math.max(-180, Math.floor(b.getWest() / step) * step);
    const x1 = Math.min(180, b.getEast());
    const y0 = Math.max(-85, Math.floor(b.getSouth() / step) * step);
    const y1 = Math.min(85, b.getNorth());
    for (let x = x0; x <= x1 && features.length < 400; x += step) {
      features.push({ type: "Feature", properties: {}, geometry: { type: "LineString", coordinates: [[x, -85], [x, 85]] } });
    }
    for (let y = y0; y <= y1 && features.length < 800; y += step) {
      features.push({ type: "Feature", properties: {}, geometry: { type: "LineString", coordinates: [[-180, y], [180, y]] } });
    }
    return { type: "FeatureCollection", features };
  }

  map.on("load", () => {
    map.addSource("graticule", { type: "geojson", data: graticule() });
    map.addLayer({ id: "graticule", type: "line", source: "graticule",
      paint: { "line-color": "#2f3d4b", "line-width": 1 } });
    // the basemap and the imagery go in here, between the graticule and the outlines
    map.addSource("home", { type: "geojson", data: emptyFC() });
    map.addLayer({ id: "home", type: "line", source: "home",
      paint: { "line-color": "#8a99a8", "line-width": 1.5, "line-dasharray": [4, 3] } });
    map.addSource("job-aoi", { type: "geojson", data: emptyFC() });
    map.addLayer({ id: "job-aoi", type: "line", source: "job-aoi",
      paint: { "line-color": "#ffd166", "line-width": 1.5, "line-dasharray": [2, 2] } });
    map.addSource("boxes", { type: "geojson", data: emptyFC() });
    map.addLayer({ id: "boxes-fill", type: "fill", source: "boxes",
      paint: { "fill-color": "#3fa7ff", "fill-opacity": 0.12 } });
    map.addLayer({ id: "boxes-line", type: "line", source: "boxes",
      paint: { "line-color": "#3fa7ff", "line-width": 2 } });
    map.addSource("handles", { type: "geojson", data: emptyFC() });
    map.addLayer({ id: "handles", type: "circle", source: "handles",
      paint: { "circle-radius": 5, "circle-color": "#ffffff", "circle-stroke-color": "#3fa7ff", "circle-stroke-width": 2 } });
    renderBoxes();
  });
  const mapLoaded = new Promise((resolve) => map.once("load", resolve));
  map.on("moveend", () => {
    const src = map.getSource("graticule");
    if (src) src.setData(graticule());
    renderImageryNote();
  });
  // Tiles of the context layers (basemap, imagery) that fail are told in the panel, not thrown.
  map.on("error", (e) => {
    if (e.sourceId === "basemap") {
      state.basemapFailed = true;
      renderImageryNote();
    } else if (e.sourceId === "imagery") {
      state.imageryProblem = `Some imagery tiles failed: ${e.error && e.error.message}`;
      renderImageryNote();
    } else {
      console.error(e.error || e);
    }
  });
  map.on("mousemove", (e) => {
    $("cursor-pos").textContent = `lon ${e.lngLat.lng.toFixed(5)}  lat ${e.lngLat.lat.toFixed(5)}  z ${map.getZoom().toFixed(1)}`;
  });

  // ---------------------------------------------------------------- boxes: draw and edit
  function normBox(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }

  function renderBoxes(preview) {
    const all = preview ? [...state.boxes, preview] : state.boxes;
    const boxes = { type: "FeatureCollection", features: all.map((b, i) => ({
      type: "Feature", properties: { index: i }, geometry: { type: "Polygon", coordinates: boxPolygon(b) } })) };
    const handles = { type: "FeatureCollection", features: [] };
    state.boxes.forEach((b, i) => {
      [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]].forEach((c, k) => {
        handles.features.push({ type: "Feature", properties: { index: i, corner: k }, geometry: { type: "Point", coordinates: c } });
      });
    });
    if (map.getSource("boxes")) {
      map.getSource("boxes").setData(boxes);
      map.getSource("handles").setData(handles);
    }
    if (!preview) renderBoxList();
  }

  // The catalogue's coverage: a box that misses it entirely is refused before any job.
  function coverageText() {
    const [x0, y0, x1, y1] = state.home;
    return `lon ${x0.toFixed(4)} to ${x1.toFixed(4)}, lat ${y0.toFixed(4)} to ${y1.toFixed(4)}`;
  }
  function outsideCoverage(b) {
    const e = state.home;
    return Boolean(e) && (b[2] < e[0] || b[0] > e[2] || b[3] < e[1] || b[1] > e[3]);
  }
  function partlyOutside(b) {
    const e = state.home;
    return Boolean(e) && (b[0] < e[0] || b[1] < e[1] || b[2] > e[2] || b[3] > e[3]);
  }
  function refuseBox() {
    showError(`That box is outside the catalogue's coverage (its imagery spans ${coverageText()}): `
      + "draw it over the dashed outline.");
  }

  function renderBoxList() {
    const ul = $("box-list");
    ul.replaceChildren();
    state.boxes.forEach((b, i) => {
      const li = document.createElement("li");
      const span = document.createElement("span");
      span.textContent = `${i + 1}: ${b.map((v) => v.toFixed(4)).join(", ")}`;
      if (partlyOutside(b)) {
        li.classList.add("partial");
        li.title = "Part of this box lies outside the imagery's coverage: it will be no data.";
        span.textContent += " (partly outside the coverage)";
      }
      const del = document.createElement("button");
      del.className = "link";
      del.title = "Remove this box";
      del.textContent = "×";
      del.addEventListener("click", () => { state.boxes.splice(i, 1); renderBoxes(); });
      li.append(span, del);
      ul.append(li);
    });
    $("submit-btn").disabled = state.boxes.length === 0;
  }

  function setDrawMode(on) {
    state.drawMode = on;
    $("draw-btn").setAttribute("aria-pressed", String(on));
    map.getCanvas().style.cursor = on ? "crosshair" : "";
  }
  $("draw-btn").addEventListener("click", () => setDrawMode(!state.drawMode));
  $("clear-btn").addEventListener("click", () => { state.boxes = []; renderBoxes(); });

  // The corner under the pointer, found from the boxes themselves (not from rendered
  // features, which lag a frame behind a new box and would let the press pan the map).
  function handleAt(point) {
    const pad = 8;
    let best = null;
    state.boxes.forEach((b, i) => {
      [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]].forEach((c, k) => {
        const p = map.project(c);
        const d = Math.max(Math.abs(p.x - point.x), Math.abs(p.y - point.y));
        if (d <= pad && (!best || d < best.d)) best = { index: i, corner: k, d };
      });
    });
    return best;
  }

  map.on("mousedown", (e) => {
    const h = handleAt(e.point);
    if (h) {
      const b = state.boxes[h.index];
      const corners = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]];
      state.drag = { kind: "resize", index: h.index, anchor: corners[(h.corner + 2) % 4], before: b };
    } else if (state.drawMode || e.originalEvent.shiftKey) {
      state.drag = { kind: "draw", anchor: [e.lngLat.lng, e.lngLat.lat], start: e.point };
    } else {
      return;
    }
    e.preventDefault();
    map.dragPan.disable();
  });

  map.on("mousemove", (e) => {
    if (!state.drag) {
      if (!state.drawMode) map.getCanvas().style.cursor = handleAt(e.point) ? "nwse-resize" : "";
      return;
    }
    const b = normBox(state.drag.anchor, [e.lngLat.lng, e.lngLat.lat]);
    if (state.drag.kind === "resize") {
      state.boxes[state.drag.index] = b;
      renderBoxes(null);
    } else {
      renderBoxes(b);
    }
  });

  function endDrag(e) {
    if (!state.drag) return;
    const drag = state.drag;
    state.drag = null;
    map.dragPan.enable();
    if (drag.kind === "draw" && e && e.lngLat) {
      const moved = Math.hypot(e.point.x - drag.start.x, e.point.y - drag.start.y);
      const b = normBox(drag.anchor, [e.lngLat.lng, e.lngLat.lat]);
      if (moved > 4 && outsideCoverage(b)) {
        refuseBox();
      } else if (moved > 4) {
        state.boxes.push(b);
        setDrawMode(false);
        clearError();
      }
    } else if (drag.kind === "resize" && outsideCoverage(state.boxes[drag.index])) {
      state.boxes[drag.index] = drag.before;
      refuseBox();
    }
    renderBoxes();
  }
  map.on("mouseup", endDrag);
  map.getCanvasContainer().addEventListener("mouseleave", () => endDrag(null));

  $("bbox-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const parts = $("bbox-input").value.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (parts.length !== 4 || parts.some((v) => !Number.isFinite(v))) {
      showError("Type four numbers: minlon, minlat, maxlon, maxlat");
      return;
    }
    const b = normBox([parts[0], parts[1]], [parts[2], parts[3]]);
    if (outsideCoverage(b)) { refuseBox(); return; }
    state.boxes.push(b);
    renderBoxes();
    map.fitBounds([[b[0], b[1]], [b[2], b[3]]], { padding: 60, duration: 0 });
    $("bbox-input").value = "";
    clearError();
  });

  // ---------------------------------------------------------------- models, date, submit
  function fmtCount(n) {
    if (n === null || n === undefined) return "?";
    if (n >= 1e9) return `${(n / 1e9).toFixed(1)} G`;
    if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
    if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
    return String(n);
  }

  const METRIC_ORDER = ["miou", "accuracy", "macro_f1", "f1", "rmse", "mae", "r2"];

  function fmtMetrics(m) {
    // Cards nest metrics per split ({val: {miou: ...}, test: {...}}) or keep them flat.
    const pick = (obj, prefix) => Object.entries(obj || {})
      .filter(([k, v]) => typeof v === "number" && METRIC_ORDER.includes(k))
      .sort(([a], [b]) => METRIC_ORDER.indexOf(a) - METRIC_ORDER.indexOf(b))
      .map(([k, v]) => `${prefix}${k} ${Math.abs(v) <= 1 ? v.toFixed(3) : v.toFixed(2)}`);
    let items = [];
    for (const split of ["val", "test"]) {
      if (m && m[split] && typeof m[split] === "object") items = items.concat(pick(m[split], `${split} `).slice(0, 2));
    }
    if (!items.length) items = pick(m, "");
    const truth = m && m.test_truth;  // scored against a dense reference, with a 95 % interval
    if (truth && typeof truth.miou === "number") {
      const ci = truth.intervals && truth.intervals.miou;
      items.unshift(`truth mIoU ${truth.miou.toFixed(3)}${ci ? ` (95 % ${ci[0].toFixed(3)}–${ci[1].toFixed(3)})` : ""} over ${fmtCount(truth.n_pixels)} px`);
    }
    return items.join(" · ") || "none recorded";
  }

  function showModelInfo() {
    const m = state.models.find((x) => x.name === $("model-select").value);
    const box = $("model-info");
    box.replaceChildren();
    if (!m) { box.textContent = "No model selected."; return; }
    const lines = [
      ["task", `${m.task} (${m.role}${m.teacher && m.teacher.name ? ` of ${m.teacher.name}` : ""})`],
      ["size", `${fmtCount(m.params)} parameters · ${m.size_mb} MB${m.depth ? ` · depth ${m.depth}` : ""}${m.macs ? ` · ${fmtCount(m.macs)} MACs/chip` : ""}`],
      ["input", [m.input_spec.source, (m.input_spec.bands || []).join("/"), m.input_spec.num_steps ? `T=${m.input_spec.num_steps}` : ""].filter(Boolean).join(" · ")],
      ["metrics", fmtMetrics(m.metrics)],
      ["classes", m.classes.map((c) => c.name).join(", ")],
    ];
    for (const [k, v] of lines) {
      const div = document.createElement("div");
      const b = document.createElement("b");
      b.textContent = `${k}: `;
      div.append(b, document.createTextNode(v));
      box.append(div);
    }
  }

  async function loadModels() {
    state.models = await api("api/models");
    const sel = $("model-select");
    sel.replaceChildren();
    for (const m of state.models) {
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = `${m.name} — ${m.task}, ${fmtCount(m.params)} params`;
      sel.append(opt);
    }
    if (!state.models.length) {
      const opt = document.createElement("option");
      opt.textContent = "no models on this server";
      opt.value = "";
      sel.append(opt);
    }
    showModelInfo();
  }
  $("model-select").addEventListener("change", showModelInfo);

  $("submit-btn").addEventListener("click", async () => {
    clearError();
    const body = {
      aois: state.boxes.map((b) => b.map((v) => Number(v.toFixed(6)))),
      date: $("date-input").value,
      model: $("model-select").value,
    };
    if (!body.date) { showError("Pick a date."); return; }
    const outside = state.boxes.findIndex(outsideCoverage);
    if (outside >= 0) {
      showError(`Box ${outside + 1} is outside the catalogue's coverage (its imagery spans `
        + `${coverageText()}): remove it or draw it over the dashed outline.`);
      return;
    }
    if ($("cloud-input").value !== "") body.max_cloud = Number($("cloud-input").value);
    if ($("tol-input").value !== "") body.tolerance = Number($("tol-input").value);
    $("submit-btn").disabled = true;
    try {
      const created = await api("api/jobs", { method: "POST", json: body });
      state.selected = created.id;
      state.boxes = []; // submitted: the job's AOI outline takes over
      renderBoxes();
      await refreshJobs();
      pollSelected();
    } catch (err) {
      showError(err);
    } finally {
      $("submit-btn").disabled = state.boxes.length === 0;
    }
  });

  // ---------------------------------------------------------------- jobs
  const short = (id) => id.slice(0, 8);

  function renderJobList() {
    const ul = $("job-list");
    ul.replaceChildren();
    if (!state.jobs.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "No jobs yet.";
      ul.append(li);
    }
    for (const job of state.jobs) {
      const li = document.createElement("li");
      li.dataset.id = job.id;
      if (job.id === state.selected) li.classList.add("selected");
      const label = document.createElement("span");
      label.textContent = `${short(job.id)} · ${job.model} · ${job.date}`;
      const st = document.createElement("span");
      st.className = `status ${job.status}`;
      st.textContent = job.status === "running" ? `${Math.round(job.progress)}%` : job.status;
      const del = document.createElement("button");
      del.className = "link";
      del.title = job.status === "queued" || job.status === "running" ? "Cancel" : "Delete";
      del.textContent = "×";
      del.addEventListener("click", (ev) => { ev.stopPropagation(); deleteJob(job.id); });
      li.append(label, st, del);
      li.addEventListener("click", () => { state.selected = job.id; renderJobList(); pollSelected(); });
      ul.append(li);
    }
  }

  async function refreshJobs(first) {
    state.jobs = await api("api/jobs?limit=50");
    if (first && !state.selected && state.jobs.length) {
      state.selected = state.jobs[0].id;
      pollSelected(!HASH_GIVEN);
      return;
    }
    if (first) goHome();
    renderJobList();
  }

  async function deleteJob(id) {
    clearError();
    try {
      await api(`api/jobs/${id}`, { method: "DELETE" });
      if (state.shownLayers === id) removeJobLayers();
      await refreshJobs();
      if (state.selected === id) {
        const j = state.jobs.find((x) => x.id === id);
        if (j) renderJob(j); else { state.selected = null; $("job-panel").hidden = true; }
      }
    } catch (err) {
      showError(err);
    }
  }
  $("cancel-btn").addEventListener("click", () => state.selected && deleteJob(state.selected));

  function renderJob(job) {
    $("job-panel").hidden = false;
    $("job-id").textContent = short(job.id);
    $("job-summary").replaceChildren();
    const st = document.createElement("span");
    st.className = `status ${job.status}`;
    st.textContent = job.status;
    $("job-summary").append(st, document.createTextNode(` · ${job.model} · ${job.date} · ${Math.round(job.progress)}%`));
    const stages = $("job-stages");
    stages.replaceChildren();
    for (const s of job.stages) {
      const div = document.createElement("div");
      div.className = `stage ${s.state}`;
      const name = document.createElement("div");
      name.className = "name";
      const a = document.createElement("span");
      a.textContent = s.name;
      const b = document.createElement("span");
      b.textContent = `${Math.round(s.progress)}%`;
      name.append(a, b);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.style.width = `${s.progress}%`;
      bar.append(fill);
      div.append(name, bar);
      stages.append(div);
    }
    $("job-error").hidden = !job.error || job.status === "cancelled";
    $("job-error").textContent = job.error || "";
    $("job-note").hidden = !job.note;
    $("job-note").textContent = job.note || "";
    const t = Object.entries(job.timings || {}).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(" · ");
    $("job-timings").textContent = t ? `timings: ${t}` : "";
    $("cancel-btn").hidden = !(job.status === "queued" || job.status === "running");
    $("job-result").hidden = job.status !== "done";
    renderValidShare(job);
    renderLegend(job);
    renderDownloads(job);
  }

  // How much of the AOI got a prediction; the rest is no data (cloud, or no scene there).
  function renderValidShare(job) {
    const box = $("job-valid");
    const share = job.valid_share;
    box.hidden = job.status !== "done" || typeof share !== "number";
    if (box.hidden) return;
    // never round a partial result up to "100 %" or down to "0 %"
    const pct = share >= 1 ? 100 : share <= 0 ? 0
      : Math.min(99, Math.max(1, Math.round(share * 100)));
    box.classList.toggle("warn", share < 0.5);
    if (pct === 100) {
      box.textContent = "100 % of the area predicted.";
    } else if (pct === 0) {
      box.textContent = "Nothing of the area could be predicted: it had no usable imagery "
        + "(cloud or missing) near this date. Try a date with imagery.";
    } else {
      box.textContent = `${pct} % of the area predicted; the rest had no usable imagery `
        + "(cloud or missing) and is left as no data.";
    }
  }

  const LAYER_LABELS = { classes: "classes", truecolor: "true colour", probabilities: "probabilities" };

  // One link per product part (a job across UTM zones has one COG per zone).
  function renderDownloads(job) {
    const ul = $("download-list");
    ul.replaceChildren();
    const download = (job.links && job.links.download) || {};
    for (const [layer, urls] of Object.entries(download)) {
      (Array.isArray(urls) ? urls : [urls]).forEach((url, i, all) => {
        const li = document.createElement("li");
        const a = document.createElement("a");
        const part = all.length > 1 ? ` · part ${i + 1} of ${all.length}` : "";
        a.href = url;
        a.textContent = `${LAYER_LABELS[layer] || layer}${part}`;
        a.download = `terrastill-${job.id}-${layer}${all.length > 1 ? `-${i}` : ""}.tif`;
        a.addEventListener("click", (ev) => {
          if (!state.token) return; // a plain link: the browser downloads it
          ev.preventDefault(); // the token goes in a header, which a link cannot send
          downloadWithToken(url, a.download);
        });
        li.append(a);
        ul.append(li);
      });
    }
    $("downloads").hidden = !ul.children.length;
  }

  async function downloadWithToken(url, name) {
    clearError();
    try {
      const res = await fetch(url, { headers: authHeaders() });
      if (!res.ok) throw new Error(messageOf(await res.json().catch(() => null), res.status));
      const blob = await res.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = name;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) {
      showError(err);
    }
  }

  function renderLegend(job) {
    const lg = $("legend");
    lg.replaceChildren();
    const entry = (name, color) => {
      const item = document.createElement("div");
      item.className = "item";
      const sw = document.createElement("span");
      sw.className = "swatch";
      if (color) sw.style.background = color; else sw.classList.add("nodata");
      const label = document.createElement("span");
      label.textContent = name;
      item.append(sw, label);
      lg.append(item);
      return item;
    };
    for (const c of job.classes || []) entry(c.name, c.color);
    // no-data pixels are transparent in the tiles: say what an empty spot in the AOI means
    entry("no data: cloud/missing", null).title =
      "Inside the area but without a prediction: no usable imagery there (cloud, cloud "
      + "shadow or no scene) near the job's date.";
  }

  function removeJobLayers() {
    for (const id of ["job-classes", "job-truecolor"]) {
      if (map.getLayer(id)) map.removeLayer(id);
      if (map.getSource(id)) map.removeSource(id);
    }
    state.shownLayers = null;
  }

  function showJobLayers(job, zoom) {
    const aoi = { type: "FeatureCollection", features: job.aois.map((g) => ({ type: "Feature", properties: {}, geometry: g })) };
    if (map.getSource("job-aoi")) map.getSource("job-aoi").setData(aoi);
    if (job.status !== "done") {
      if (state.shownLayers && state.shownLayers !== job.id) removeJobLayers();
      return;
    }
    if (state.shownLayers !== job.id) {
      removeJobLayers();
      const abs = (u) => new URL(u, location.href).href;
      const before = map.getLayer("job-aoi") ? "job-aoi" : undefined;
      if (job.links.tilejson.truecolor) {
        map.addSource("job-truecolor", { type: "raster", url: abs(job.links.tilejson.truecolor), tileSize: 256 });
        map.addLayer({ id: "job-truecolor", type: "raster", source: "job-truecolor",
          layout: { visibility: $("show-truecolor").checked ? "visible" : "none" } }, before);
      }
      map.addSource("job-classes", { type: "raster", url: abs(job.links.tilejson.classes), tileSize: 256 });
      map.addLayer({ id: "job-classes", type: "raster", source: "job-classes",
        layout: { visibility: $("show-classes").checked ? "visible" : "none" },
        paint: { "raster-opacity": Number($("opacity").value) / 100, "raster-resampling": "nearest" } }, before);
      state.shownLayers = job.id;
    }
    if (zoom) zoomTo(job);
  }

  function zoomTo(job) {
    const [x0, y0, x1, y1] = job.bounds;
    map.fitBounds([[x0, y0], [x1, y1]], { padding: 40, duration: 0 });
  }

  $("opacity").addEventListener("input", () => {
    const v = Number($("opacity").value);
    $("opacity-value").textContent = `${v}%`;
    if (map.getLayer("job-classes")) map.setPaintProperty("job-classes", "raster-opacity", v / 100);
  });
  $("show-classes").addEventListener("change", () => {
    if (map.getLayer("job-classes")) map.setLayoutProperty("job-classes", "visibility", $("show-classes").checked ? "visible" : "none");
  });
  $("show-truecolor").addEventListener("change", () => {
    if (map.getLayer("job-truecolor")) map.setLayoutProperty("job-truecolor", "visibility", $("show-truecolor").checked ? "visible" : "none");
  });
  $("zoom-btn").addEventListener("click", () => {
    const job = state.jobs.find((j) => j.id === state.selected);
    if (job) zoomTo(job);
  });

  async function pollSelected(zoomWhenDone = true) {
    clearTimeout(state.pollTimer);
    const id = state.selected;
    if (!id) return;
    let job;
    try {
      job = await api(`api/jobs/${id}`);
    } catch (err) {
      showError(err);
      return;
    }
    if (state.selected !== id) return;
    const i = state.jobs.findIndex((j) => j.id === id);
    const wasActive = i < 0 || state.jobs[i].status === "queued" || state.jobs[i].status === "running";
    if (i >= 0) state.jobs[i] = job; else state.jobs.unshift(job);
    renderJob(job);
    renderJobList();
    const active = job.status === "queued" || job.status === "running";
    showJobLayers(job, !active && (zoomWhenDone || wasActive) && state.shownLayers !== job.id);
    if (active) state.pollTimer = setTimeout(() => pollSelected(zoomWhenDone), POLL_MS);
  }

  // ---------------------------------------------------------------- start
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    clearError();
    try {
      await start();
      $("token-box").hidden = true;
    } catch (err) {
      showError(err);
    }
  });

  async function start() {
    const health = await api("api/health");
    $("health").textContent = `v${health.version} · ${health.runner}`;
    state.home = health.home;
    await loadModels();
    await loadCatalog();
    await mapLoaded;
    showHome();
    showBasemap();
    loadImagery(); // in the background: the job list need not wait for it
    await refreshJobs(true);
  }

  function showHome() {
    if (!state.home || !map.getSource("home")) return;
    map.getSource("home").setData({ type: "Feature", properties: {},
      geometry: { type: "Polygon", coordinates: boxPolygon(state.home) } });
    $("home-hint").hidden = false;
    $("extent-toggle").hidden = false;
  }

  // ---------------------------------------------------------------- the catalogue's imagery
  const imageryDates = () => (state.catalog && state.catalog.dates) || [];

  function setNote(id, text) {
    $(id).textContent = text || "";
    $(id).hidden = !text;
  }

  async function loadCatalog() {
    try {
      state.catalog = await api("api/catalog");
    } catch (err) {
      // an older server has no /api/catalog: the map works as before, just without context
      console.info(`no catalogue description (${err.message})`);
      state.catalog = null;
    }
    const cat = state.catalog;
    if (cat && cat.extent) state.home = cat.extent;
    const dates = imageryDates();
    $("imagery-toggle").hidden = !dates.length;
    const list = $("imagery-dates");
    list.replaceChildren(...dates.map((d) => Object.assign(document.createElement("option"), { value: d })));
    if (!cat) {
      setNote("catalog-info", "This server does not describe its imagery: pick any date.");
    } else if (!dates.length) {
      setNote("catalog-info", "No imagery to preview: this server's catalogue is remote or "
        + "not set. Jobs still search it for the date you pick.");
    } else {
      const span = cat.start === cat.end ? `on ${cat.start}` : `from ${cat.start} to ${cat.end}`;
      setNote("catalog-info", `Scenes ${span}, on ${dates.length} date${dates.length > 1 ? "s" : ""}.`);
    }
    // the server suggests a recent, mostly clear date (the latest may be cloudy)
    if (!state.dateTouched && dates.length) {
      $("date-input").value = state.catalog.suggested || dates[dates.length - 1];
    }
    renderDateHint();
  }

  function showBasemap() {
    const url = state.catalog && state.catalog.basemap;
    if (!url || map.getSource("basemap")) return;
    let host = url;
    try { host = new URL(url).host; } catch (err) { /* keep the template as its own name */ }
    map.addSource("basemap", { type: "raster", tiles: [url], tileSize: 256, maxzoom: 19,
      attribution: `basemap: ${host}` });
    map.addLayer({ id: "basemap", type: "raster", source: "basemap",
      layout: { visibility: $("show-basemap").checked ? "visible" : "none" } },
    map.getLayer("imagery") ? "imagery" : "home");
    $("basemap-toggle").hidden = false;
  }

  function removeImagery() {
    if (map.getLayer("imagery")) map.removeLayer("imagery");
    if (map.getSource("imagery")) map.removeSource("imagery");
    state.imagery = null;
    $("imagery-date").textContent = "";
  }

  // The true-colour mosaic of the catalogue's scenes on the date nearest the chosen one.
  async function loadImagery() {
    const seq = ++state.imagerySeq;
    const day = $("date-input").value;
    state.imageryProblem = "";
    if (!imageryDates().length || !day) {
      removeImagery();
      renderImageryNote();
      return;
    }
    let tj;
    try {
      tj = await api(`api/imagery/tilejson.json?date=${encodeURIComponent(day)}`);
      await mapLoaded;
    } catch (err) {
      if (seq !== state.imagerySeq) return;
      removeImagery();
      state.imageryProblem = `No imagery to show for ${day}: ${err.message}`;
      renderImageryNote();
      return;
    }
    if (seq !== state.imagerySeq) return;
    removeImagery();
    map.addSource("imagery", { type: "raster", tiles: tj.tiles, bounds: tj.bounds,
      minzoom: tj.minzoom, maxzoom: tj.maxzoom, tileSize: 256, attribution: tj.attribution });
    map.addLayer({ id: "imagery", type: "raster", source: "imagery",
      layout: { visibility: $("show-imagery").checked ? "visible" : "none" } }, "home");
    const named = /\d{4}-\d{2}-\d{2}/.exec(tj.name || "");
    state.imagery = { date: named ? named[0] : day, minzoom: tj.minzoom || 0 };
    $("imagery-date").textContent = `of ${state.imagery.date}`;
    renderImageryNote();
  }

  function renderImageryNote() {
    const im = state.imagery;
    const chosen = $("date-input").value;
    const notes = [];
    if (state.imageryProblem) notes.push(state.imageryProblem);
    if (im && chosen && im.date !== chosen) notes.push(`Showing ${im.date}, the imagery nearest ${chosen}.`);
    if (im && $("show-imagery").checked && map.getZoom() < im.minzoom - 0.5) {
      notes.push(`Zoom in to see it (from zoom ${im.minzoom}).`);
    }
    if (state.basemapFailed && $("show-basemap").checked) {
      notes.push("The basemap's tiles do not load (is this browser offline?).");
    }
    setNote("imagery-note", notes.join(" "));
  }

  // Below the date: whether the chosen date has imagery, and the nearest one when not.
  function renderDateHint() {
    const dates = imageryDates();
    const day = $("date-input").value;
    const before = dates.filter((d) => d < day);
    const after = dates.filter((d) => d > day);
    $("date-prev").disabled = !before.length;
    $("date-next").disabled = !after.length;
    if (!dates.length || !day) { setNote("date-hint", ""); return; }
    if (dates.includes(day)) {
      setNote("date-hint", `Imagery on ${day}. ‹ › step through the ${dates.length} dates with imagery.`);
      return;
    }
    const gap = (d) => Math.abs(Date.parse(d) - Date.parse(day)) / 86400000;
    const nearest = [...before.slice(-1), ...after.slice(0, 1)].sort((a, b) => gap(a) - gap(b))[0];
    const n = Math.round(gap(nearest));
    setNote("date-hint", `No scene on ${day}; the nearest imagery is ${nearest} `
      + `(${n} day${n === 1 ? "" : "s"} ${nearest < day ? "earlier" : "later"}).`);
  }

  let dateTimer = null;
  function dateChanged(byUser) {
    if (byUser) {
      state.dateTouched = true;
      sessionStorage.setItem(DATE_KEY, $("date-input").value);
    }
    renderDateHint();
    clearTimeout(dateTimer);
    dateTimer = setTimeout(loadImagery, 250); // typing a date changes it once per keystroke
  }
  $("date-input").addEventListener("change", () => dateChanged(true));
  const stepDate = (dir) => {
    const day = $("date-input").value;
    const dates = imageryDates();
    const next = dir < 0 ? dates.filter((d) => d < day).pop() : dates.find((d) => d > day);
    if (!next) return;
    $("date-input").value = next;
    dateChanged(true);
  };
  $("date-prev").addEventListener("click", () => stepDate(-1));
  $("date-next").addEventListener("click", () => stepDate(1));

  const toggle = (box, layer) => $(box).addEventListener("change", () => {
    if (map.getLayer(layer)) map.setLayoutProperty(layer, "visibility", $(box).checked ? "visible" : "none");
    renderImageryNote();
  });
  toggle("show-imagery", "imagery");
  toggle("show-basemap", "basemap");
  toggle("show-extent", "home");

  function goHome() {
    // No position in the URL and no job to show: open over the imagery the server knows.
    if (state.homeDone || !state.home || HASH_GIVEN) return;
    state.homeDone = true;
    const [x0, y0, x1, y1] = state.home;
    map.fitBounds([[x0, y0], [x1, y1]], { padding: 40, duration: 0 });
  }

  // Keep the job list fresh while any job is queued or running (the selected one polls faster).
  setInterval(() => {
    if (state.jobs.some((j) => j.status === "queued" || j.status === "running")) {
      refreshJobs(false).catch(() => {});
    }
  }, 5000);

  const remembered = sessionStorage.getItem(DATE_KEY);
  state.dateTouched = Boolean(remembered);
  $("date-input").value = remembered || new Date().toISOString().slice(0, 10);
  renderBoxList();
  start().catch(showError);
})();
