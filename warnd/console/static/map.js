// A map of the villages drawn from the directory's coordinates: points on an SVG, no tiles, so
// it works on a LAN with no internet. Clicking a point selects or unselects the village.
const NS = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 320;
const PAD = 28;

function el(tag, attrs) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** An SVG of the villages; `selected` a Set of codes; `onToggle(code)` on click. */
export function villageMap(villages, selected, onToggle) {
  const svg = el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "map", role: "img", "data-testid": "village-map" });
  if (!villages.length) return svg;
  const lats = villages.map((v) => v.lat);
  const lons = villages.map((v) => v.lon);
  const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
  // Equirectangular, longitudes shrunk by cos(latitude): a township is small enough for that.
  const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * kx, 1e-6);
  const spanY = Math.max(maxLat - minLat, 1e-6);
  const scale = Math.min((WIDTH - 2 * PAD) / spanX, (HEIGHT - 2 * PAD) / spanY);
  const x = (v) => PAD + (v.lon - minLon) * kx * scale + ((WIDTH - 2 * PAD) - spanX * scale) / 2;
  const y = (v) => HEIGHT - PAD - (v.lat - minLat) * scale - ((HEIGHT - 2 * PAD) - spanY * scale) / 2;
  const chosen = villages.filter((v) => selected.has(v.code));
  if (chosen.length >= 3) {
    // The selected area's outline: the convex hull of its villages' points.
    const hull = convexHull(chosen.map((v) => [x(v), y(v)]));
    svg.append(el("polygon", { points: hull.map((p) => p.join(",")).join(" "), fill: "rgba(198,40,40,.12)", stroke: "#c62828", "stroke-dasharray": "4 3" }));
  }
  for (const v of villages) {
    const on = selected.has(v.code);
    const dot = el("circle", { cx: x(v), cy: y(v), r: on ? 9 : 7, fill: on ? "#c62828" : "#90a4ae", stroke: "#fff", "stroke-width": 2, "data-code": v.code });
    const title = el("title", {});
    title.textContent = v.name;
    dot.append(title);
    dot.addEventListener("click", () => onToggle(v.code));
    const label = el("text", { x: x(v) + 11, y: y(v) + 4 });
    label.textContent = v.name;
    svg.append(dot, label);
  }
  return svg;
}

function convexHull(points) {
  const pts = [...points].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [];
  for (const p of pts) { while (lower.length >= 2 && cross(lower.at(-2), lower.at(-1), p) <= 0) lower.pop(); lower.push(p); }
  const upper = [];
  for (const p of pts.reverse()) { while (upper.length >= 2 && cross(upper.at(-2), upper.at(-1), p) <= 0) upper.pop(); upper.push(p); }
  return lower.slice(0, -1).concat(upper.slice(0, -1));
}
