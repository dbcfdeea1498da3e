// Copies the web map's browser libraries from node_modules into the Python package's
// static/vendor folder (gitignored), so the web map works offline and loads nothing from a CDN:
// MapLibre GL JS (the map) and geotiff.js (reads the change products' GeoTIFF tiles).
import { copyFileSync, mkdirSync, readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const dest = join(here, "..", "src", "terrastill", "app", "static", "vendor");
// package → [files to copy from its folder, licence file]
const vendored = {
  "maplibre-gl": [["dist/maplibre-gl.js", "dist/maplibre-gl.css"], "LICENSE.txt"],
  "geotiff": [["dist-browser/geotiff.js"], "LICENSE"],
};
mkdirSync(dest, { recursive: true });
for (const [pkg, [files, licence]] of Object.entries(vendored)) {
  const root = join(modules, pkg);
  if (!existsSync(root)) {
    console.error(`missing ${root}: run 'npm ci --prefix web' first`);
    process.exit(1);
  }
  for (const file of files) {
    copyFileSync(join(root, file), join(dest, file.split("/").pop()));
  }
  copyFileSync(join(root, licence), join(dest, `${pkg}.LICENSE.txt`));
  const version = JSON.parse(readFileSync(join(root, "package.json"))).version;
  console.log(`copied ${pkg} ${version} into ${dest}`);
}
