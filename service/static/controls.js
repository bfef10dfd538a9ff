// The form: the models from /models, the sampler's rules on steps and γ, the page's state line, and
// the parameters of a run as the controls (or the page's address) set them.

import { api, ApiError } from "./api.js";
import { formatSignificant } from "./format.js";

const SAMPLER_TEXT = {
  onestep: "onestep (one jump)",
  multistep: "multistep (CTM jumps)",
  gamma: "gamma (jumps + γ-noise)",
  euler: "euler (PF-ODE)",
  heun: "heun (PF-ODE, 2nd order)",
};

export const $ = (id) => document.getElementById(id);
export const models = new Map(); // name → ModelInfo from /models

export function setState(state, message = "") {
  document.body.dataset.state = state;
  $("message").textContent = message;
}

export function readControls() {
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

export function applySamplerRules() {
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

export function defaultSteps() {
  // The server's table (/models: default_steps), the steps a request without `steps` gets.
  const info = models.get($("model").value);
  return (info && info.default_steps[$("sampler").value]) || 1;
}

export function showModel() {
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

export async function loadModels() {
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
