// terrastill web map, Search panel: search an index by example (click exemplars, shift-click
// negatives), see the top-k outlines and a distance heatmap, adjust k, export the results.
// Uses window.terrastill.{map, state} from app.js; talks to /api/indexes and /api/search.
"use strict";

(function () {
  const ts = window.terrastill;
  if (!ts || !ts.map) return; // no map library: app.js has said so
  const map = ts.map;
  const $ = (id) => document.getElementById(id);

  const search = {
    indexes: [],
    index: null, // the chosen index's info
    picking: false,
    positives: [], // [lon, lat]
    negatives: [],
    result: null, // the last POST /api/search answer
    seq: 0, // the newest request; older answers are dropped
  };
  ts.search = search; // for tests and the console

  function headers() {
    return ts.state.token ? { Authorization: `Bearer ${ts.state.token}` } : {};
  }

  async function call(path, body) {
    const opts = { headers: headers() };
    if (body !== undefined) {
      opts.method = "POST";
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
    const res = await fetch(path, opts);
    const data = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
    if (!res.ok) {
      const d = data && data.detail;
      const msg = typeof d === "string" ? d
        : Array.isArray(d) ? d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("\n")
          : `HTTP ${res.status}`;
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // ---------------------------------------------------------------- the panel
  const panel = document.createElement("section");
  panel.id = "search-panel";
  panel.hidden = true;
  panel.innerHTML = `
    <h2>Search by example</h2>
    <label for="search-index">Index</label>
    <select id="search-index"></select>
    <div id="search-index-info" class="card muted"></div>
    <div class="row">
      <button id="search-pick" type="button" aria-pressed="false">Pick exemplars</button>
      <button id="search-clear" type="button" class="secondary">Clear</button>
    </div>
    <p class="hint muted">Click a patch to look for places like it; shift-click one that is
      <em>not</em> wanted. The search covers the map view (within the index).</p>
    <ul id="search-exemplars" class="plain small"></ul>
    <form id="search-text-form" class="row" hidden>
      <input id="search-text" type="search" maxlength="200" placeholder="or describe it: a river crossing farmland">
      <button id="search-text-go" type="submit">Search text</button>
    </form>
    <div class="grid3">
      <div><label for="search-k">k</label>
        <input id="search-k" type="number" min="1" max="1000" step="1" value="50"></div>
      <div><label for="search-combine">Combine</label>
        <select id="search-combine"><option>mean</option><option>and</option><option>or</option></select></div>
      <div><label>&nbsp;</label>
        <label class="check"><input id="search-rerank" type="checkbox"> re-rank</label></div>
    </div>
    <label class="check"><input id="search-invert" type="checkbox"> invert (opposite)</label>
    <label class="check"><input id="search-heat" type="checkbox" checked> heatmap</label>
    <div id="search-error" class="error" hidden></div>
    <div id="search-summary" class="muted small"></div>
    <ol id="search-results" class="small"></ol>
    <div id="search-exports" class="row" hidden>
      <button id="search-geoparquet" type="button" class="secondary">⤓ GeoParquet</button>
      <button id="search-geojson" type="button" class="secondary">⤓ GeoJSON</button>
    </div>`;
  const jobsHeading = [...document.querySelectorAll("#panel section h2")].find((h) => h.textContent === "Jobs");
  $("panel").insertBefore(panel, jobsHeading ? jobsHeading.parentElement : $("panel").querySelector("footer"));

  function setError(msg) {
    $("search-error").textContent = msg || "";
    $("search-error").hidden = !msg;
  }

  // ---------------------------------------------------------------- map layers
  const emptyFC = () => ({ type: "FeatureCollection", features: [] });
  function ensureLayers() {
    if (map.getSource("search-results")) return;
    map.addSource("search-results", { type: "geojson", data: emptyFC() });
    map.addLayer({ id: "search-results-fill", type: "fill", source: "search-results",
      paint: { "fill-color": "#ffe14d", "fill-opacity": 0.15 } });
    map.addLayer({ id: "search-results-line", type: "line", source: "search-results",
      paint: { "line-color": "#ffe14d", "line-width": 2 } });
    map.addSource("search-exemplars", { type: "geojson", data: emptyFC() });
    map.addLayer({ id: "search-exemplars", type: "circle", source: "search-exemplars",
      paint: { "circle-radius": 6, "circle-stroke-width": 2, "circle-stroke-color": "#0b1117",
        "circle-color": ["case", ["get", "negative"], "#ff6b6b", "#4cc38a"] } });
  }

  function setHeat(result) {
    if (map.getLayer("search-heat")) map.removeLayer("search-heat");
    if (map.getSource("search-heat")) map.removeSource("search-heat");
    if (!result || !$("search-heat").checked) return;
    map.addSource("search-heat", { type: "raster", tiles: result.heatmap.tiles, tileSize: 256,
      bounds: search.index && search.index.bbox ? search.index.bbox : undefined });
    map.addLayer({ id: "search-heat", type: "raster", source: "search-heat",
      paint: { "raster-opacity": 0.75 } }, "search-results-fill");
  }

  function renderExemplars() {
    ensureLayers();
    const feats = [
      ...search.positives.map((p) => ({ type: "Feature", properties: { negative: false }, geometry: { type: "Point", coordinates: p } })),
      ...search.negatives.map((p) => ({ type: "Feature", properties: { negative: true }, geometry: { type: "Point", coordinates: p } })),
    ];
    map.getSource("search-exemplars").setData({ type: "FeatureCollection", features: feats });
    const ul = $("search-exemplars");
    ul.replaceChildren();
    const add = (p, neg, i) => {
      const li = document.createElement("li");
      li.textContent = `${neg ? "−" : "+"} ${p[0].toFixed(5)}, ${p[1].toFixed(5)} `;
      const del = document.createElement("button");
      del.className = "link";
      del.textContent = "×";
      del.title = "Remove";
      del.addEventListener("click", () => {
        (neg ? search.negatives : search.positives).splice(i, 1);
        renderExemplars();
        run();
      });
      li.append(del);
      ul.append(li);
    };
    search.positives.forEach((p, i) => add(p, false, i));
    search.negatives.forEach((p, i) => add(p, true, i));
  }

  function renderResult() {
    ensureLayers();
    const r = search.result;
    map.getSource("search-results").setData(r ? r.results : emptyFC());
    setHeat(r);
    const ol = $("search-results");
    ol.replaceChildren();
    $("search-exports").hidden = !r;
    if (!r) {
      $("search-summary").textContent = "";
      return;
    }
    const feats = r.results.features;
    $("search-summary").textContent = `${feats.length} results of ${r.candidates} patches `
      + `(${r.shards_searched} shard${r.shards_searched === 1 ? "" : "s"}); ${r.distance}`;
    feats.slice(0, 10).forEach((f) => {
      const li = document.createElement("li");
      const p = f.properties;
      li.textContent = `${p.id}${p.label ? ` · ${p.label}` : ""} · ${Number(p.distance).toPrecision(3)}`;
      li.title = "Zoom to this patch";
      li.addEventListener("click", () => map.flyTo({ center: [p.lon, p.lat], zoom: Math.max(map.getZoom(), 14) }));
      ol.append(li);
    });
  }

  // ---------------------------------------------------------------- searching
  function area() {
    const b = map.getBounds();
    let box = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
    const ib = search.index && search.index.bbox;
    if (ib) box = [Math.max(box[0], ib[0]), Math.max(box[1], ib[1]), Math.min(box[2], ib[2]), Math.min(box[3], ib[3])];
    return box[0] < box[2] && box[1] < box[3] ? box : null;
  }

  async function run() {
    const seq = ++search.seq;
    const text = search.index && search.index.text ? $("search-text").value.trim() : "";
    if (!search.index || (!search.positives.length && !text)) {
      search.result = null;
      renderResult();
      return;
    }
    const box = area();
    if (!box) {
      setError("The map view does not overlap the index: pan to it (its outline is the index bbox).");
      return;
    }
    // exemplars win over text; a text query ranks by the aligned model (no combine/invert)
    const body = search.positives.length ? {
      index: search.index.name, near: search.positives, negatives: search.negatives,
      aois: [box], k: Number($("search-k").value) || 50, combine: $("search-combine").value,
      invert: $("search-invert").checked, rerank: $("search-rerank").checked,
    } : { index: search.index.name, text, aois: [box], k: Number($("search-k").value) || 50 };
    $("search-summary").textContent = "Searching…";
    try {
      const r = await call("api/search", body);
      if (seq !== search.seq) return;
      search.result = r;
      setError("");
      renderResult();
    } catch (err) {
      if (seq !== search.seq) return;
      search.result = null;
      renderResult();
      setError(err.message);
    }
  }

  async function download(fmt) {
    if (!search.result) return;
    const url = search.result.exports[fmt];
    try {
      const res = await fetch(url, { headers: headers() });
      if (!res.ok) throw new Error(`export failed: HTTP ${res.status}`);
      const blob = await res.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `terrastill-search-${search.result.id}.${fmt === "geojson" ? "geojson" : "parquet"}`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) {
      setError(err.message);
    }
  }

  function setPicking(on) {
    search.picking = on;
    $("search-pick").setAttribute("aria-pressed", String(on));
    map.getCanvas().style.cursor = on ? "crosshair" : "";
  }

  // DOM mousedown/mouseup, not MapLibre's click: the box tool takes shift-mousedown (no
  // click follows it), while a shift-click without a drag is a negative exemplar here
  const container = map.getCanvasContainer();
  let downAt = null;
  container.addEventListener("mousedown", (ev) => { downAt = [ev.clientX, ev.clientY]; });
  container.addEventListener("mouseup", (ev) => {
    const at = downAt;
    downAt = null;
    if (ev.button !== 0 || !search.picking || !search.index || !at) return;
    if (Math.hypot(ev.clientX - at[0], ev.clientY - at[1]) > 4) return; // a drag
    const rect = map.getCanvas().getBoundingClientRect();
    const ll = map.unproject([ev.clientX - rect.left, ev.clientY - rect.top]);
    (ev.shiftKey ? search.negatives : search.positives).push([ll.lng, ll.lat]);
    renderExemplars();
    run();
  });
  $("search-pick").addEventListener("click", () => setPicking(!search.picking));
  $("search-clear").addEventListener("click", () => {
    search.positives = [];
    search.negatives = [];
    renderExemplars();
    run();
  });
  ["search-k", "search-combine", "search-rerank", "search-invert"].forEach((id) => $(id).addEventListener("change", run));
  $("search-heat").addEventListener("change", () => setHeat(search.result));
  $("search-geoparquet").addEventListener("click", () => download("parquet"));
  $("search-geojson").addEventListener("click", () => download("geojson"));
  $("search-index").addEventListener("change", () => {
    search.index = search.indexes.find((i) => i.name === $("search-index").value) || null;
    describeIndex();
    run();
  });
  $("search-text-form").addEventListener("submit", (ev) => { ev.preventDefault(); run(); });

  function describeIndex() {
    const i = search.index;
    $("search-index-info").textContent = i
      ? `${i.rows.toLocaleString()} patches in ${i.shards} shards · ${i.method} codes of ${i.dim} dims`
        + `${i.rerank ? " + int8 re-rank" : ""} · model ${i.model || "?"}`
      : "No index.";
    // the text box only where a served text-aligned model made the index's embeddings
    $("search-text-form").hidden = !(i && i.text);
  }

  async function loadIndexes() {
    if (!(await ts.routes).has("/api/indexes")) return; // no --indexes: no search panel
    try {
      search.indexes = await call("api/indexes");
    } catch (err) {
      if (err.status === 404) return; // this server offers no search (no --indexes)
      if (err.status === 401) { // wait for the token, then try again
        setTimeout(loadIndexes, 2000);
        return;
      }
      setError(err.message);
    }
    panel.hidden = false;
    const sel = $("search-index");
    sel.replaceChildren(...search.indexes.map((i) => new Option(i.name, i.name)));
    search.index = search.indexes[0] || null;
    describeIndex();
  }

  if (map.loaded()) ensureLayers(); else map.once("load", ensureLayers);
  loadIndexes();
})();
