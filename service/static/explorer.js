// The explorer page: sample a model through the HTTP API and draw the samples and the sampler's paths.
// Plain JavaScript modules and inline SVG, no library. Requests: /models, /models/{name}/density,
// /trajectory, /evaluate (and a link to /plot.png), all documented in /docs. The CSV downloads are made
// in the page. This module runs a sample and starts the page; the others: api.js (HTTP), controls.js
// (the form), plots.js (the figures) over scales.js (their numbers), format.js, downloads.js.

import { api } from "./api.js";
import {
  $, applySamplerRules, defaultSteps, loadModels, models, readControls, setState, showModel,
} from "./controls.js";
import { download } from "./downloads.js";
import { formatCount, formatMilliseconds, formatSignificant } from "./format.js";
import { drawDensity, drawPaths } from "./plots.js";
import { evenly, viewRange } from "./scales.js";

const DENSITY_POINTS = 400;
const W1_DIGITS = 3;
// As service/reference.py: the reference of user data is its stored training values, and W1 names
// /evaluate's word for its reference.
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

const densityCache = new Map(); // name@sha256 → default /density answer, or {missing: reason}
let latestRun = 0;
let shownRun = null; // {params, trajectory} of the run on display, for the CSV downloads

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
    $("reference-name").textContent = drawDensity($("density"), samples, trajectory.n, view);
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

// --- start ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    sample();
  });
  $("model").addEventListener("change", showModel);
  $("download-samples").addEventListener("click", () => download(shownRun, "samples"));
  $("download-paths").addEventListener("click", () => download(shownRun, "paths"));
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
