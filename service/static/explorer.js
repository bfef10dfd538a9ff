// The explorer page: sample a model through the HTTP API and draw the samples and the sampler's paths.
// Plain JavaScript and inline SVG, no library. Requests: /models, /models/{name}/density, /trajectory,
// /evaluate (and a link to /plot.png), all documented in /docs. The CSV downloads are made here.
"use strict";

const MAX_PATHS = 300; // as /plot.png (service/plotting.py MAX_PLOTTED_PATHS)
const DENSITY_POINTS = 400;
const SAMPLE_RANGE_P = [0.001, 0.999]; // as service/plotting.py view_range
const SAMPLE_RANGE_PAD = 0.1;
const PATHS_RANGE_PAD = 0.5;
const MAX_LEVEL_LINES = 40; // draw the schedule's noise levels as lines up to this many steps
const SAMPLER_TEXT = {
  onestep: "onestep (one jump)",
  multistep: "multistep (CTM jumps)",
  gamma: "gamma (jumps + γ-noise)",
  euler: "euler (PF-ODE)",
  heun: "heun (PF-ODE, 2nd order)",
};
const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 400;
const MARGIN = { left: 62, right: 18, top: 18, bottom: 48 };
const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
// Numbers as people read them, whatever the browser's language: 1,234.5.
const NUMBER_LOCALE = "en-US";
const W1_DIGITS = 3;
// Labels as service/reference.py: the reference of user data is the histogram of its stored training
// values (their KDE over-smooths multimodal data), and W1 names /evaluate's word for its reference.
const TRAINING_HISTOGRAM_LABEL = "training data (histogram)";
const MAX_TRAINING_VALUES = 2000; // service/reference.py MAX_KDE_POINTS
const W1_LABELS = {
  exact: "W1 to the task (reference: exact)",
  kde: "W1 to the training data (reference: kde)",
};
const W1_TITLES = {
  exact: "Wasserstein-1 distance from these samples to the task's exact distribution (/evaluate)",
  kde: "Two-sample Wasserstein-1 distance from these samples to the training values stored in the "
    + "checkpoint (/evaluate)",
};

const $ = (id) => document.getElementById(id);
const models = new Map(); // name → ModelInfo from /models
const densityCache = new Map(); // name@sha256 → default /density answer, or {missing: reason}
let latestRun = 0;
let shownRun = null; // {params, trajectory} of the run on display, for the CSV downloads

// --- HTTP ----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, params) {
  const url = params ? `${path}?${new URLSearchParams(params)}` : path;
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, describeError(response.status, body));
  return body;
}

function describeError(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${e.loc.filter((l) => l !== "query").join(".")}: ${e.msg}`).join("; ");
  }
  return `the server answered HTTP ${status}`;
}

// --- numbers for people --------------------------------------------------------------------------

function formatCount(value) {
  return Number(value).toLocaleString(NUMBER_LOCALE); // 12,000
}

function formatSignificant(value, digits, trim = false) {
  // `digits` significant digits: 0.0123, 1.23, 1,230; exponent form below 0.001 and from 10^6.
  // trim: without trailing zeros (80, not 80.0).
  if (!Number.isFinite(value)) return String(value);
  const rounded = Number(value.toPrecision(digits));
  const magnitude = Math.abs(rounded);
  if (rounded !== 0 && (magnitude < 1e-3 || magnitude >= 1e6)) {
    const text = rounded.toExponential(digits - 1);
    return trim ? text.replace(/\.?0+e/, "e") : text;
  }
  const decimals = rounded === 0 ? 0 : Math.max(0, digits - 1 - Math.floor(Math.log10(magnitude)));
  return rounded.toLocaleString(NUMBER_LOCALE, {
    minimumFractionDigits: trim ? 0 : decimals,
    maximumFractionDigits: decimals,
  });
}

function formatMilliseconds(ms) {
  const text = ms.toLocaleString(NUMBER_LOCALE, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  return `${text} ms`;
}

// --- controls ------------------------------------------------------------------------------------

function setState(state, message = "") {
  document.body.dataset.state = state;
  $("message").textContent = message;
}

function readControls() {
  const params = {
    model: $("model").value,
    sampler: $("sampler").value,
    steps: $("steps").value,
    n: $("n").value,
    noise: $("noise").value,
  };
  if (params.sampler === "gamma") params.gamma = $("gamma").value;
  // Seeds go out as typed and come back unread: JSON numbers above 2^53 lose digits in JavaScript.
  params.seed = $("seed").value !== "" ? $("seed").value : randomSeed();
  return params;
}

function randomSeed() {
  // A seed for a run left to chance, drawn here so that /evaluate can measure the same samples.
  const [high, low] = crypto.getRandomValues(new Uint32Array(2));
  return String((high & 0x1fffff) * 2 ** 32 + low); // below 2^53: exact in JavaScript
}

function applySamplerRules() {
  const sampler = $("sampler").value;
  $("steps").disabled = sampler === "onestep";
  if (sampler === "onestep") $("steps").value = "1";
  $("gamma").disabled = sampler !== "gamma";
}

function fillSamplers(info, wanted) {
  const select = $("sampler");
  const previous = wanted || select.value || "onestep";
  select.replaceChildren(
    ...info.samplers.map((name) => new Option(SAMPLER_TEXT[name] || name, name)),
  );
  select.value = info.samplers.includes(previous) ? previous : info.samplers[0];
}

function defaultSteps() {
  // The server's table (/models: default_steps), the steps a request without `steps` gets.
  const info = models.get($("model").value);
  return (info && info.default_steps[$("sampler").value]) || 1;
}

function showModel() {
  const info = models.get($("model").value);
  if (!info) return;
  const noise = info.noise;
  const parts = [
    info.description || info.name,
    `σ from ${formatSignificant(noise.sigma_max, 4, true)} down to ${formatSignificant(noise.sigma_min, 4, true)}`
      + ` (${noise.schedule} schedule)`,
  ];
  if (info.training.mode) parts.push(`trained: ${info.training.mode}`);
  $("model-description").textContent = parts.join(" · ");
  fillSamplers(info);
  applySamplerRules();
}

async function loadModels() {
  const wanted = new URLSearchParams(location.search);
  const listing = await api("/models");
  const list = listing.models;
  if (!list.length) throw new ApiError(503, "no model is loaded; see /readyz");
  for (const info of list) models.set(info.name, info);
  $("model").replaceChildren(...list.map((info) => new Option(info.name, info.name)));
  // The model asked for in the address, else the server's default model.
  const first = models.has(wanted.get("model")) ? wanted.get("model") : listing.default_model;
  if (models.has(first)) $("model").value = first;
  fillSamplers(models.get($("model").value), wanted.get("sampler"));
  $("steps").value = String(defaultSteps());
  for (const key of ["steps", "n", "gamma", "seed", "noise"]) {
    if (wanted.has(key)) $(key).value = wanted.get(key);
  }
  showModel();
}

// --- one run -------------------------------------------------------------------------------------

async function sample() {
  const run = ++latestRun;
  setState("loading", "sampling…");
  const params = readControls();
  try {
    const start = performance.now();
    const trajectory = await api("/trajectory", params);
    const latency = performance.now() - start;
    if (run !== latestRun) return;
    const samples = trajectory.samples.filter(Number.isFinite);
    const [view, evaluation] = await Promise.all([
      referenceFor(models.get(params.model), samples),
      api("/evaluate", params), // the same seed: the same samples, measured
    ]);
    if (run !== latestRun) return;
    drawDensity($("density"), samples, trajectory.n, view);
    drawPaths($("paths"), trajectory.sigmas, trajectory.paths, view.range);
    showStats(trajectory, evaluation, latency, params.seed);
    shownRun = { params, trajectory };
    $("download-samples").disabled = false;
    $("download-paths").disabled = false;
    $("png-link").href = `/plot.png?${new URLSearchParams(params)}`;
    // The address reproduces the view, except a seed left to chance stays left to chance.
    const address = new URLSearchParams(params);
    if ($("seed").value === "") address.delete("seed");
    history.replaceState(null, "", `?${address}`);
    document.body.dataset.runs = String(Number(document.body.dataset.runs) + 1);
    setState("ready", "");
  } catch (error) {
    if (run !== latestRun) return;
    setState("error", error.message);
    document.body.dataset.runs = String(Number(document.body.dataset.runs) + 1);
  }
}

async function referenceFor(info, samples) {
  const key = `${info.name}@${info.sha256}`;
  const url = `/models/${encodeURIComponent(info.name)}/density`;
  if (!densityCache.has(key)) {
    try {
      densityCache.set(key, await api(url, { points: DENSITY_POINTS }));
    } catch (error) {
      if (error.status !== 404) throw error;
      densityCache.set(key, { missing: error.message });
    }
  }
  const base = densityCache.get(key);
  if (base.missing) return { range: viewRange(samples, null), reference: null, missing: base.missing };
  const baseRange = [base.x[0], base.x[base.x.length - 1]];
  const range = viewRange(samples, baseRange);
  // User data: its stored training values, drawn as a histogram instead of the KDE curve.
  const training = base.source === "kde" ? trainingValues(info) : null;
  if (training || (range[0] >= baseRange[0] && range[1] <= baseRange[1])) {
    return { range, reference: base, training };
  }
  // The samples reach beyond the default grid: ask for the density over the whole view.
  const wide = await api(url, { lo: range[0], hi: range[1], points: DENSITY_POINTS });
  return { range, reference: wide, training: null };
}

function trainingValues(info) {
  // The training values a user-data checkpoint stores (/models: task.kde_points), at most
  // MAX_TRAINING_VALUES evenly in rank as the server keeps them; null if the listing has none.
  const raw = info.task && info.task.kde_points;
  if (!Array.isArray(raw)) return null;
  const values = Float64Array.from(raw.filter(Number.isFinite)).sort();
  return values.length >= 2 ? evenly(Array.from(values), MAX_TRAINING_VALUES) : null;
}

function showStats(trajectory, evaluation, latency, seed) {
  $("stat-nfe").textContent = formatCount(trajectory.nfe);
  // The words of /evaluate's `reference`, so that the page and the API say the same.
  $("stat-w1-key").textContent = W1_LABELS[evaluation.reference] || "W1 (no reference)";
  $("stat-w1-key").title = W1_TITLES[evaluation.reference] || "This model has no reference to measure against";
  $("stat-w1").textContent = evaluation.w1 === null ? "n/a" : formatSignificant(evaluation.w1, W1_DIGITS);
  $("stat-latency").textContent = formatMilliseconds(latency);
  $("stat-seed").textContent = seed; // an identifier, shown whole to be copied
}

// --- CSV downloads -------------------------------------------------------------------------------

function csvNumber(value) {
  // The shortest text that reads back as the same number; non-finite values (JSON null) as nan.
  return Number.isFinite(value) ? String(value) : "nan";
}

function samplesCsv(trajectory) {
  return `x\n${trajectory.samples.map(csvNumber).join("\n")}\n`;
}

function pathsCsv(trajectory) {
  // One row per sample, one column per noise level, from σ_max to σ_min as /trajectory gives them.
  const header = trajectory.sigmas.map((sigma) => `sigma=${sigma}`).join(",");
  const rows = trajectory.paths.map((path) => path.map(csvNumber).join(","));
  return `${header}\n${rows.join("\n")}\n`;
}

function download(what) {
  if (!shownRun) return;
  const { params, trajectory } = shownRun;
  const text = what === "paths" ? pathsCsv(trajectory) : samplesCsv(trajectory);
  const name = `${params.model}_${params.sampler}_${trajectory.steps}steps_n${trajectory.n}_seed${params.seed}`;
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${name}_${what}.csv`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // after the download has read it
}

// --- ranges and scales ---------------------------------------------------------------------------

function quantileSorted(sorted, p) {
  // numpy's default (linear) quantile.
  const position = p * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (position - below) * (sorted[above] - sorted[below]);
}

function viewRange(samples, referenceRange) {
  // The samples' central range joined with the reference's (service/plotting.py view_range).
  const bounds = [];
  if (samples.length) {
    const sorted = Float64Array.from(samples).sort();
    const lo = quantileSorted(sorted, SAMPLE_RANGE_P[0]);
    const hi = quantileSorted(sorted, SAMPLE_RANGE_P[1]);
    const pad = SAMPLE_RANGE_PAD * Math.max(hi - lo, 1e-3 * Math.max(1, Math.abs(lo), Math.abs(hi)));
    bounds.push(lo - pad, hi + pad);
  }
  if (referenceRange) bounds.push(...referenceRange);
  if (!bounds.length) return [-1, 1];
  return [Math.min(...bounds), Math.max(...bounds)];
}

function pathsRange([lo, hi]) {
  const pad = PATHS_RANGE_PAD * (hi - lo);
  return [lo - pad, hi + pad];
}

function linear(d0, d1, r0, r1) {
  return (v) => r0 + ((v - d0) * (r1 - r0)) / (d1 - d0);
}

function niceTicks(lo, hi, count = 6) {
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  // Decimals of the step: 0.5 → 1, 0.25 → 2, 2.5 → 1, 5 → 0.
  const quarter = Math.abs(step / magnitude - 2.5) < 1e-9 ? 1 : 0;
  const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9) + quarter);
  return ticks.map((t) => ({ value: t, text: t.toFixed(Math.min(decimals, 8)).replace(/^-(0\.?0*)$/, "$1") }));
}

function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.ceil(Math.log10(lo) - 1e-9); e <= Math.floor(Math.log10(hi) + 1e-9); e++) {
    ticks.push({ value: 10 ** e, text: e >= 0 ? String(10 ** e) : (10 ** e).toFixed(-e) });
  }
  return ticks;
}

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

function histogramBins(n) {
  return Math.min(120, Math.max(20, Math.round(1.5 * Math.sqrt(n)))); // as service/plotting.py
}

function histogramHeights(values, total, bins, lo, hi) {
  // Counts on `bins` equal bins of [lo, hi] over (total · width): values outside the view still
  // count in total, so the areas compare (service/reference.py histogram_density).
  const width = (hi - lo) / bins;
  const counts = new Float64Array(bins);
  for (const x of values) {
    const bin = Math.floor((x - lo) / width);
    if (bin >= 0 && bin < bins) counts[bin] += 1;
    else if (x === hi) counts[bins - 1] += 1;
  }
  return Array.from(counts, (c) => c / (total * width));
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

function drawDensity(svg, samples, n, view) {
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
  if (training) {
    svgEl("path", {
      class: "reference-density training-histogram",
      d: stepPath(training, lo, hi, xScale, yScale),
    }, layer);
    entries.push({
      label: TRAINING_HISTOGRAM_LABEL,
      draw: (g, x, y) => svgEl("path", { class: "reference-density swatch", d: `M${x},${y}h22` }, g),
    });
    $("reference-name").textContent = TRAINING_HISTOGRAM_LABEL;
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
    $("reference-name").textContent = reference.label;
  } else {
    svgText(svg, MARGIN.left + 10, MARGIN.top + 18, "no reference density for this model", { class: "note" });
    svgEl("title", {}, svg).textContent = view.missing || "";
    $("reference-name").textContent = "reference density (none for this model)";
  }
  legend(svg, entries);
}

function evenly(items, count) {
  // At most `count` items evenly spaced in index (with quantile noise, index order is latent order).
  if (items.length <= count) return items;
  return Array.from({ length: count }, (_, i) => items[Math.round((i * (items.length - 1)) / (count - 1))]);
}

function pathColor(position) {
  // viridis at 0.1 + 0.8·position, as service/plotting.py.
  const t = Math.min(1, Math.max(0, 0.1 + 0.8 * position)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(t), VIRIDIS.length - 2);
  const a = VIRIDIS[i].match(/\w\w/g).map((h) => parseInt(h, 16));
  const b = VIRIDIS[i + 1].match(/\w\w/g).map((h) => parseInt(h, 16));
  const mix = a.map((v, k) => Math.round(v + (t - i) * (b[k] - v)));
  return `rgb(${mix.join(",")})`;
}

function drawPaths(svg, sigmas, paths, dataRange) {
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

// --- start ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    sample();
  });
  $("model").addEventListener("change", showModel);
  $("download-samples").addEventListener("click", () => download("samples"));
  $("download-paths").addEventListener("click", () => download("paths"));
  $("sampler").addEventListener("change", () => {
    $("steps").value = String(defaultSteps());
    applySamplerRules();
  });
  try {
    await loadModels();
  } catch (error) {
    setState("error", `cannot list the models: ${error.message}`);
    return;
  }
  await sample();
});
