// terrastill web map, Change mode (DeltaBit): load a change product's int8 PCA tiles, click
// change / no-change pixels, Train a logistic regression in the browser on the clicked
// pixels' tile values (read with geotiff.js) and score every visible tile client-side as a
// heatmap; no server round trip. "Save model" stores it through the API for change-map.
// Uses window.terrastill.{map, state} from app.js; talks to /api/changes.
"use strict";

(function () {
  const ts = window.terrastill;
  if (!ts || !ts.map || !window.GeoTIFF) return;
  const map = ts.map;
  const $ = (id) => document.getElementById(id);
  const TILE = 256;

  const change = {
    products: [],
    product: null, // the chosen product's info (GET /api/changes)
    picking: null, // null, 1 (change) or 0 (no change)
    clicks: [], // {lon, lat, change, codes: [..]}
    model: null, // {code_weights, code_intercept, train_accuracy, ms}
    version: 0, // bumped on each Train: new heat tile URLs
    rendered: 0, // heat tiles scored
    saved: null,
  };
  ts.change = change; // for tests and the console

  function headers() {
    return ts.state.token ? { Authorization: `Bearer ${ts.state.token}` } : {};
  }

  // ---------------------------------------------------------------- tiles (cached per key)
  const cache = new Map(); // "id/z/x/y" → Promise<{bands, width, height} | null>
  const CACHE_MAX = 512;
  function tile(id, z, x, y) {
    const key = `${id}/${z}/${x}/${y}`;
    if (cache.has(key)) return cache.get(key);
    const p = (async () => {
      const res = await fetch(`api/changes/${id}/tiles/${z}/${x}/${y}.tif`, { headers: headers() });
      if (res.status === 204) return null; // no data there
      if (!res.ok) throw new Error(`tile ${z}/${x}/${y}: HTTP ${res.status}`);
      const tiff = await window.GeoTIFF.fromArrayBuffer(await res.arrayBuffer());
      const image = await tiff.getImage();
      const bands = await image.readRasters();
      return { bands: Array.from(bands), width: image.getWidth(), height: image.getHeight() };
    })();
    cache.set(key, p);
    if (cache.size > CACHE_MAX) cache.delete(cache.keys().next().value);
    p.catch(() => cache.delete(key));
    return p;
  }

  function tileOf(lon, lat, z) {
    const n = 2 ** z;
    const xt = ((lon + 180) / 360) * n;
    const r = (lat * Math.PI) / 180;
    const yt = ((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n;
    const x = Math.floor(xt), y = Math.floor(yt);
    return { x, y, px: Math.floor((xt - x) * TILE), py: Math.floor((yt - y) * TILE) };
  }

  // int8 codes of every band at a lon/lat (top zoom), or null where there is no data
  async function codesAt(lon, lat) {
    const p = change.product;
    const t = tileOf(lon, lat, p.max_zoom);
    const data = await tile(p.id, p.max_zoom, t.x, t.y);
    if (!data) return null;
    const i = t.py * data.width + t.px;
    const codes = data.bands.map((b) => b[i]);
    return codes.some((c) => c === p.nodata) ? null : codes;
  }

  // ---------------------------------------------------------------- rendering
  let emptyPng = null;
  async function pngOf(canvas) {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    return blob.arrayBuffer();
  }
  async function empty() {
    if (!emptyPng) {
      const c = document.createElement("canvas");
      c.width = c.height = 1;
      emptyPng = await pngOf(c);
    }
    return emptyPng;
  }

  function paint(data, colour) {
    const c = document.createElement("canvas");
    c.width = data.width;
    c.height = data.height;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(data.width, data.height);
    const nb = data.bands.length, nodata = change.product.nodata;
    const px = new Array(nb);
    for (let i = 0; i < data.width * data.height; i++) {
      let missing = false;
      for (let b = 0; b < nb; b++) {
        px[b] = data.bands[b][i];
        if (px[b] === nodata) missing = true;
      }
      if (!missing) colour(px, img.data, i * 4);
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  function pcaColour(px, out, o) {
    const p = change.product;
    for (let b = 0; b < 3; b++) {
      const real = px[b] * p.scale[b] + p.offset[b];
      const v = (real - p.preview.lo[b]) / ((p.preview.hi[b] - p.preview.lo[b]) || 1);
      out[o + b] = Math.max(0, Math.min(255, Math.round(v * 255)));
    }
    out[o + 3] = 255;
  }

  function heatColour(px, out, o) {
    const m = change.model;
    let logit = m.code_intercept;
    for (let b = 0; b < px.length; b++) logit += m.code_weights[b] * px[b];
    const prob = 1 / (1 + Math.exp(-logit));
    out[o] = 255;
    out[o + 1] = Math.round(60 * (1 - prob));
    out[o + 2] = Math.round(40 * (1 - prob));
    out[o + 3] = Math.round(230 * prob * prob);
  }

  // MapLibre custom protocols: change-pca://id/z/x/y and change-heat://id/version/z/x/y
  window.maplibregl.addProtocol("change-pca", async (params) => {
    const [id, z, x, y] = params.url.split("://")[1].split("/");
    const data = await tile(id, +z, +x, +y);
    return { data: data ? await pngOf(paint(data, pcaColour)) : await empty() };
  });
  window.maplibregl.addProtocol("change-heat", async (params) => {
    const [id, _version, z, x, y] = params.url.split("://")[1].split("/");
    const data = change.model ? await tile(id, +z, +x, +y) : null;
    if (!data) return { data: await empty() };
    const png = await pngOf(paint(data, heatColour));
    change.rendered += 1;
    return { data: png };
  });

  // ---------------------------------------------------------------- logistic regression
  // Standardised features, L2 penalty (C = 1, as scikit-learn's default), Newton steps.
  function fitLogistic(X, y, C = 1.0) {
    const n = X.length, d = X[0].length;
    const mu = new Array(d).fill(0), sd = new Array(d).fill(0);
    for (const r of X) r.forEach((v, j) => { mu[j] += v / n; });
    for (const r of X) r.forEach((v, j) => { sd[j] += (v - mu[j]) ** 2 / n; });
    for (let j = 0; j < d; j++) sd[j] = Math.sqrt(sd[j]) || 1;
    const Z = X.map((r) => [1, ...r.map((v, j) => (v - mu[j]) / sd[j])]);
    const w = new Array(d + 1).fill(0);
    for (let it = 0; it < 50; it++) {
      const g = new Array(d + 1).fill(0);
      const H = Array.from({ length: d + 1 }, () => new Array(d + 1).fill(0));
      for (let i = 0; i < n; i++) {
        const z = Z[i].reduce((s, v, j) => s + v * w[j], 0);
        const p = 1 / (1 + Math.exp(-z));
        const s = p * (1 - p);
        for (let j = 0; j <= d; j++) {
          g[j] += (p - y[i]) * Z[i][j];
          for (let k = 0; k <= d; k++) H[j][k] += s * Z[i][j] * Z[i][k];
        }
      }
      for (let j = 1; j <= d; j++) { g[j] += w[j] / C; H[j][j] += 1 / C; }
      H[0][0] += 1e-9;
      const step = solve(H, g);
      let moved = 0;
      for (let j = 0; j <= d; j++) { w[j] -= step[j]; moved = Math.max(moved, Math.abs(step[j])); }
      if (moved < 1e-8) break;
    }
    // back to the raw codes: logit = Σ cw·q + cb
    const cw = w.slice(1).map((v, j) => v / sd[j]);
    const cb = w[0] - cw.reduce((s, v, j) => s + v * mu[j], 0);
    const correct = X.filter((r, i) => (r.reduce((s, v, j) => s + v * cw[j], cb) > 0) === (y[i] === 1)).length;
    return { code_weights: cw, code_intercept: cb, train_accuracy: correct / n };
  }

  function solve(A, b) { // Gaussian elimination with partial pivoting
    const n = b.length;
    const M = A.map((r, i) => [...r, b[i]]);
    for (let c = 0; c < n; c++) {
      let p = c;
      for (let r = c + 1; r < n; r++) if (Math.abs(M[r][c]) > Math.abs(M[p][c])) p = r;
      [M[c], M[p]] = [M[p], M[c]];
      const piv = M[c][c] || 1e-12;
      for (let r = 0; r < n; r++) {
        if (r === c) continue;
        const f = M[r][c] / piv;
        for (let k = c; k <= n; k++) M[r][k] -= f * M[c][k];
      }
    }
    return M.map((r, i) => r[n] / (r[i] || 1e-12));
  }
  change.fitLogistic = fitLogistic;

  // ---------------------------------------------------------------- the panel
  const panel = document.createElement("section");
  panel.id = "change-panel";
  panel.hidden = true;
  panel.innerHTML = `
    <h2>Change</h2>
    <label for="change-product">Change product</label>
    <select id="change-product"></select>
    <div id="change-info" class="card muted"></div>
    <label class="check"><input id="change-pca" type="checkbox" checked> PCA-3 preview</label>
    <div class="row">
      <button id="change-pick-1" type="button" aria-pressed="false">Click change</button>
      <button id="change-pick-0" type="button" aria-pressed="false">Click no change</button>
    </div>
    <p id="change-counts" class="hint muted">No clicks yet.</p>
    <div class="row">
      <button id="change-train" type="button" class="primary" disabled>Train</button>
      <button id="change-clear" type="button" class="secondary">Clear</button>
      <button id="change-save" type="button" class="secondary" disabled>Save model</button>
    </div>
    <label class="check"><input id="change-heat" type="checkbox" checked> heatmap</label>
    <div id="change-error" class="error" hidden></div>
    <div id="change-summary" class="muted small"></div>`;
  const jobsHeading = [...document.querySelectorAll("#panel section h2")].find((h) => h.textContent === "Jobs");
  $("panel").insertBefore(panel, jobsHeading ? jobsHeading.parentElement : $("panel").querySelector("footer"));

  function setError(msg) {
    $("change-error").textContent = msg || "";
    $("change-error").hidden = !msg;
  }

  function counts() {
    const n1 = change.clicks.filter((c) => c.change === 1).length;
    const n0 = change.clicks.length - n1;
    $("change-counts").textContent = change.clicks.length
      ? `${n1} change, ${n0} no-change click(s).` : "No clicks yet.";
    $("change-train").disabled = !(n1 && n0);
    map.getSource("change-clicks")?.setData({ type: "FeatureCollection", features: change.clicks.map((c) => ({
      type: "Feature", properties: { change: c.change }, geometry: { type: "Point", coordinates: [c.lon, c.lat] } })) });
  }

  function setPicking(v) {
    change.picking = change.picking === v ? null : v;
    $("change-pick-1").setAttribute("aria-pressed", String(change.picking === 1));
    $("change-pick-0").setAttribute("aria-pressed", String(change.picking === 0));
    map.getCanvas().style.cursor = change.picking === null ? "" : "crosshair";
  }

  function removeLayers() {
    for (const id of ["change-clicks", "change-heat", "change-pca"]) {
      if (map.getLayer(id)) map.removeLayer(id);
      if (map.getSource(id)) map.removeSource(id);
    }
  }

  function heatSource() {
    const p = change.product;
    if (map.getLayer("change-heat")) map.removeLayer("change-heat");
    if (map.getSource("change-heat")) map.removeSource("change-heat");
    if (!change.model || !$("change-heat").checked) return;
    map.addSource("change-heat", { type: "raster", tileSize: TILE, bounds: p.bounds,
      minzoom: p.min_zoom, maxzoom: p.max_zoom,
      tiles: [`change-heat://${p.id}/${change.version}/{z}/{x}/{y}`] });
    map.addLayer({ id: "change-heat", type: "raster", source: "change-heat",
      paint: { "raster-resampling": "nearest", "raster-fade-duration": 0 } }, "change-clicks");
  }

  function choose(id) {
    const p = change.products.find((q) => q.id === id);
    removeLayers();
    change.product = p;
    change.clicks = [];
    change.model = null;
    change.saved = null;
    $("change-save").disabled = true;
    $("change-summary").textContent = "";
    if (!p) return;
    const dates = p.dates ? `${p.dates.before || "?"} → ${p.dates.after || "?"}` : "";
    $("change-info").textContent = `${dates}; PCA-${p.bands} int8 (${(100 * p.explained_variance).toFixed(1)} % of the variance), zoom ${p.min_zoom}–${p.max_zoom}`;
    map.addSource("change-pca", { type: "raster", tileSize: TILE, bounds: p.bounds,
      minzoom: p.min_zoom, maxzoom: p.max_zoom, tiles: [`change-pca://${p.id}/{z}/{x}/{y}`] });
    map.addLayer({ id: "change-pca", type: "raster", source: "change-pca",
      layout: { visibility: $("change-pca").checked ? "visible" : "none" },
      paint: { "raster-resampling": "nearest", "raster-fade-duration": 0 } });
    map.addSource("change-clicks", { type: "geojson", data: { type: "FeatureCollection", features: [] } });
    map.addLayer({ id: "change-clicks", type: "circle", source: "change-clicks",
      paint: { "circle-radius": 6, "circle-stroke-width": 2, "circle-stroke-color": "#0b1117",
        "circle-color": ["case", ["==", ["get", "change"], 1], "#ff4d4d", "#4d9dff"] } });
    counts();
    map.fitBounds([[p.bounds[0], p.bounds[1]], [p.bounds[2], p.bounds[3]]], { padding: 30, duration: 0 });
  }

  async function load() {
    // only a server started with --changes has the routes (its schema says so: no 404 asked)
    if (!(await ts.routes).has("/api/changes")) return;
    const res = await fetch("api/changes", { headers: headers() });
    if (res.status === 401) { setTimeout(load, 2000); return; } // wait for the token
    if (!res.ok) return;
    change.products = await res.json();
    if (!change.products.length) return;
    const sel = $("change-product");
    sel.replaceChildren(...change.products.map((p) => {
      const o = document.createElement("option");
      o.value = p.id;
      o.textContent = `${p.name} (${p.id.slice(0, 6)})`;
      return o;
    }));
    panel.hidden = false;
    choose(sel.value);
  }

  map.on("click", async (e) => {
    if (change.picking === null || !change.product) return;
    const { lng, lat } = e.lngLat;
    const label = change.picking;
    try {
      const codes = await codesAt(lng, lat);
      if (!codes) { setError("No data at that pixel: click inside the product."); return; }
      setError("");
      change.clicks.push({ lon: lng, lat, change: label, codes });
      counts();
    } catch (err) {
      setError(String(err.message || err));
    }
  });

  $("change-product").addEventListener("change", (e) => choose(e.target.value));
  $("change-pick-1").addEventListener("click", () => setPicking(1));
  $("change-pick-0").addEventListener("click", () => setPicking(0));
  $("change-clear").addEventListener("click", () => choose(change.product && change.product.id));
  $("change-pca").addEventListener("change", (e) => {
    if (map.getLayer("change-pca")) map.setLayoutProperty("change-pca", "visibility", e.target.checked ? "visible" : "none");
  });
  $("change-heat").addEventListener("change", heatSource);
  $("change-train").addEventListener("click", () => {
    const t0 = performance.now();
    const m = fitLogistic(change.clicks.map((c) => c.codes), change.clicks.map((c) => c.change));
    m.ms = performance.now() - t0;
    change.model = m;
    change.version += 1;
    heatSource();
    $("change-save").disabled = false;
    $("change-summary").textContent = `Trained on ${change.clicks.length} clicks in ${m.ms.toFixed(1)} ms; training accuracy ${(100 * m.train_accuracy).toFixed(0)} %.`;
  });
  $("change-save").addEventListener("click", async () => {
    const p = change.product, m = change.model;
    const res = await fetch(`api/changes/${p.id}/models`, {
      method: "POST", headers: { ...headers(), "Content-Type": "application/json" },
      body: JSON.stringify({ code_weights: m.code_weights, code_intercept: m.code_intercept,
        clicks: change.clicks.map((c) => ({ lon: c.lon, lat: c.lat, change: c.change })) }) });
    const body = await res.json();
    if (!res.ok) { setError(typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`); return; }
    change.saved = body;
    $("change-summary").textContent += ` Saved as model ${body.id}.`;
  });

  // this script may run after the map's "load" event (scripts run in order, events between
  // them) while tiles still load (loaded() false): "idle" comes once the map has settled
  let started = false;
  const start = () => { if (!started) { started = true; load(); } };
  if (map.loaded()) start(); else { map.once("load", start); map.once("idle", start); }
})();
