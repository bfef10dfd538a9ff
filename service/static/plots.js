// The two figures, drawn as inline SVG: the samples' histogram over the reference density, and
// the sampler's paths x(σ) from σ_max (top) down to the data.

import { formatCount, formatSignificant } from "./format.js";
import { evenly, histogramBins, histogramHeights, linear, logTicks, niceTicks, pathsRange } from "./scales.js";

const MAX_PATHS = 300; // as /plot.png (service/plotting.py MAX_PLOTTED_PATHS)
const MAX_LEVEL_LINES = 40; // draw the schedule's noise levels as lines up to this many steps
const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 400;
const MARGIN = { left: 62, right: 18, top: 18, bottom: 48 };
const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
// As service/reference.py: the reference of user data is the histogram of its stored training
// values (their KDE over-smooths multimodal data).
const TRAINING_HISTOGRAM_LABEL = "training data (histogram)";

// --- SVG -----------------------------------------------------------------------------------------

function svgEl(tag, attributes, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (parent) parent.appendChild(node);
  return node;
}

function svgText(parent, x, y, text, attributes = {}) {
  const node = svgEl("text", { x, y, ...attributes }, parent);
  node.textContent = text;
  return node;
}

function frame(svg, xTicks, yTicks, xScale, yScale, xLabel, yLabel) {
  // Clear the plot, draw grid lines, axes, tick labels and axis labels; return the clipped layer.
  svg.replaceChildren();
  const left = MARGIN.left;
  const right = WIDTH - MARGIN.right;
  const top = MARGIN.top;
  const bottom = HEIGHT - MARGIN.bottom;
  const id = `${svg.id}-clip`;
  const clip = svgEl("clipPath", { id }, svgEl("defs", {}, svg));
  svgEl("rect", { x: left, y: top, width: right - left, height: bottom - top }, clip);
  const grid = svgEl("g", { class: "grid" }, svg);
  const axis = svgEl("g", { class: "axis" }, svg);
  for (const tick of xTicks) {
    const x = xScale(tick.value);
    svgEl("line", { x1: x, x2: x, y1: top, y2: bottom }, grid);
    svgEl("line", { x1: x, x2: x, y1: bottom, y2: bottom + 5 }, axis);
    svgText(svg, x, bottom + 19, tick.text, { "text-anchor": "middle" });
  }
  for (const tick of yTicks) {
    const y = yScale(tick.value);
    svgEl("line", { x1: left, x2: right, y1: y, y2: y }, grid);
    svgEl("line", { x1: left - 5, x2: left, y1: y, y2: y }, axis);
    svgText(svg, left - 8, y + 4, tick.text, { "text-anchor": "end" });
  }
  svgEl("path", { d: `M${left},${top}V${bottom}H${right}` }, axis);
  svgText(svg, (left + right) / 2, HEIGHT - 8, xLabel, { class: "axis-label", "text-anchor": "middle" });
  const yMid = (top + bottom) / 2;
  svgText(svg, 16, yMid, yLabel, {
    class: "axis-label",
    "text-anchor": "middle",
    transform: `rotate(-90 16 ${yMid})`,
  });
  return svgEl("g", { "clip-path": `url(#${id})` }, svg);
}

function legend(svg, entries) {
  // entries: [{label, draw(group, x, y)}], stacked in a box at the top right.
  const width = 12 + 26 + 7.2 * Math.max(...entries.map((e) => e.label.length));
  const x0 = WIDTH - MARGIN.right - width - 8;
  const y0 = MARGIN.top + 8;
  const group = svgEl("g", { class: "legend" }, svg);
  svgEl("rect", { class: "legend-box", x: x0, y: y0, width, height: 8 + 20 * entries.length, rx: 4 }, group);
  entries.forEach((entry, i) => {
    const y = y0 + 16 + 20 * i;
    entry.draw(group, x0 + 8, y);
    svgText(group, x0 + 38, y + 4, entry.label);
  });
}

function linePath(xs, ys) {
  // "M x y L …", starting a new segment after any point that is not finite.
  let d = "";
  let pen = "M";
  for (let i = 0; i < xs.length; i++) {
    if (!Number.isFinite(xs[i]) || !Number.isFinite(ys[i])) {
      pen = "M";
      continue;
    }
    d += `${pen}${xs[i].toFixed(2)},${ys[i].toFixed(2)}`;
    pen = "L";
  }
  return d;
}

function stepPath(heights, lo, hi, xScale, yScale) {
  // The outline of a histogram, from the baseline at lo to the baseline at hi.
  const width = (hi - lo) / heights.length;
  let d = `M${xScale(lo)},${yScale(0)}`;
  heights.forEach((h, i) => {
    d += `V${yScale(h).toFixed(2)}H${xScale(lo + (i + 1) * width).toFixed(2)}`;
  });
  return `${d}V${yScale(0)}`;
}

// --- the density view ----------------------------------------------------------------------------

export function drawDensity(svg, samples, n, view) {
  // Returns the name of the reference drawn, for the figure's caption.
  const [lo, hi] = view.range;
  // One set of bins for the samples and the training values, so that bars compare bin by bin.
  const bins = histogramBins(samples.length);
  const heights = histogramHeights(samples, n, bins, lo, hi);
  const reference = view.reference;
  const training = view.training ? histogramHeights(view.training, view.training.length, bins, lo, hi) : null;
  const curve = reference && !training ? reference.density : [0];
  const top = Math.max(...heights, ...(training || [0]), ...curve, 1e-12) * 1.1;
  const xScale = linear(lo, hi, MARGIN.left, WIDTH - MARGIN.right);
  const yScale = linear(0, top, HEIGHT - MARGIN.bottom, MARGIN.top);
  const layer = frame(svg, niceTicks(lo, hi), niceTicks(0, top, 5), xScale, yScale, "x", "density");

  svgEl("path", { class: "hist", d: `${stepPath(heights, lo, hi, xScale, yScale)}Z` }, layer);

  const entries = [
    {
      label: `samples (n = ${formatCount(n)})`,
      draw: (g, x, y) => svgEl("rect", { class: "hist", x, y: y - 6, width: 22, height: 12 }, g),
    },
  ];
  let caption;
  if (training) {
    svgEl("path", {
      class: "reference-density training-histogram",
      d: stepPath(training, lo, hi, xScale, yScale),
    }, layer);
    entries.push({
      label: TRAINING_HISTOGRAM_LABEL,
      draw: (g, x, y) => svgEl("path", { class: "reference-density swatch", d: `M${x},${y}h22` }, g),
    });
    caption = TRAINING_HISTOGRAM_LABEL;
  } else if (reference) {
    const kind = reference.source === "kde" ? "kde-density" : "true-density";
    const dashed = reference.source === "kde" ? "dashed" : "";
    svgEl("path", {
      class: `reference-density ${kind}`,
      d: linePath(reference.x.map(xScale), reference.density.map(yScale)),
    }, layer);
    entries.push({
      label: reference.label,
      draw: (g, x, y) => svgEl("path", { class: `reference-density swatch ${dashed}`, d: `M${x},${y}h22` }, g),
    });
    caption = reference.label;
  } else {
    svgText(svg, MARGIN.left + 10, MARGIN.top + 18, "no reference density for this model", { class: "note" });
    svgEl("title", {}, svg).textContent = view.missing || "";
    caption = "reference density (none for this model)";
  }
  legend(svg, entries);
  return caption;
}

// --- the paths view ------------------------------------------------------------------------------

function pathColor(position) {
  // viridis at 0.1 + 0.8·position, as service/plotting.py.
  const t = Math.min(1, Math.max(0, 0.1 + 0.8 * position)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(t), VIRIDIS.length - 2);
  const a = VIRIDIS[i].match(/\w\w/g).map((h) => parseInt(h, 16));
  const b = VIRIDIS[i + 1].match(/\w\w/g).map((h) => parseInt(h, 16));
  const mix = a.map((v, k) => Math.round(v + (t - i) * (b[k] - v)));
  return `rgb(${mix.join(",")})`;
}

export function drawPaths(svg, sigmas, paths, dataRange) {
  // The density view's range, widened so that more of each path's start at σ_max shows.
  const [lo, hi] = pathsRange(dataRange);
  const sigmaMax = Math.max(...sigmas);
  const sigmaMin = Math.min(...sigmas);
  const yLo = Math.log10(sigmaMin / 1.5);
  const yHi = Math.log10(sigmaMax * 1.5);
  const xScale = linear(lo, hi, MARGIN.left, WIDTH - MARGIN.right);
  const logScale = linear(yLo, yHi, HEIGHT - MARGIN.bottom, MARGIN.top); // σ_max at the top
  const yScale = (sigma) => logScale(Math.log10(sigma));
  const layer = frame(
    svg, niceTicks(lo, hi), logTicks(10 ** yLo, 10 ** yHi), xScale, yScale, "x", "noise level σ (log scale)",
  );
  if (sigmas.length - 1 <= MAX_LEVEL_LINES) {
    for (const sigma of sigmas) {
      const y = yScale(sigma);
      svgEl("line", { class: "level", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y }, layer);
    }
  }
  const ys = sigmas.map(yScale);
  const shown = evenly(paths, MAX_PATHS);
  for (const path of shown) {
    const end = path[path.length - 1];
    // Coloured by where the path ends in the data's range: which noise goes to which mode.
    const position = Number.isFinite(end) ? (end - dataRange[0]) / (dataRange[1] - dataRange[0]) : 0.5;
    svgEl("path", {
      class: "traj",
      d: linePath(path.map((x) => (x === null ? NaN : xScale(x))), ys),
      stroke: pathColor(position),
    }, layer);
  }
  const right = WIDTH - MARGIN.right - 6;
  const note = { class: "note", "text-anchor": "end" };
  svgText(svg, right, yScale(sigmaMax) - 5, `σ_max = ${formatSignificant(sigmaMax, 4, true)}`, note);
  svgText(svg, right, yScale(sigmaMin) + 14, `σ_min = ${formatSignificant(sigmaMin, 4, true)}`, note);
  const count = `${formatCount(shown.length)} of ${formatCount(paths.length)} paths`;
  svgText(svg, MARGIN.left + 8, MARGIN.top + 14, count, { class: "note" });
}
