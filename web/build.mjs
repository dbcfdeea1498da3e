// Copies the MapLibre GL JS distribution files from node_modules into the Python package's
// static/vendor folder (gitignored), so the web map works offline and loads nothing from a CDN.
import { copyFileSync, mkdirSync, readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "node_modules", "maplibre-gl", "dist");
const dest = join(here, "..", "src", "terrastill", "app", "static", "vendor");
if (!existsSync(src)) {
  console.error(`missing ${src}: run 'npm ci --prefix web' first`);
  process.exit(1);
}
mkdirSync(dest, { recursive: true });
for (const file of ["maplibre-gl.js", "maplibre-gl.css"]) {
  copyFileSync(join(src, file), join(dest, file));
}
const version = JSON.parse(readFileSync(join(here, "node_modules", "maplibre-gl", "package.json"))).version;
copyFileSync(join(here, "node_modules", "maplibre-gl", "LICENSE.txt"), join(dest, "maplibre-gl.LICENSE.txt"));
console.log(`copied maplibre-gl ${version} into ${dest}`);
