// The numbers behind the figures: view ranges, scales, ticks, histogram bins, thinning. No DOM.

const SAMPLE_RANGE_P = [0.001, 0.999]; // as service/plotting.py view_range
const SAMPLE_RANGE_PAD = 0.1;
const PATHS_RANGE_PAD = 0.5;

function quantileSorted(sorted, p) {
  // numpy's default (linear) quantile.
  const position = p * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (position - below) * (sorted[above] - sorted[below]);
}

export function viewRange(samples, referenceRange) {
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

export function pathsRange([lo, hi]) {
  const pad = PATHS_RANGE_PAD * (hi - lo);
  return [lo - pad, hi + pad];
}

export function linear(d0, d1, r0, r1) {
  return (v) => r0 + ((v - d0) * (r1 - r0)) / (d1 - d0);
}

export function niceTicks(lo, hi, count = 6) {
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

export function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.ceil(Math.log10(lo) - 1e-9); e <= Math.floor(Math.log10(hi) + 1e-9); e++) {
    ticks.push({ value: 10 ** e, text: e >= 0 ? String(10 ** e) : (10 ** e).toFixed(-e) });
  }
  return ticks;
}

export function histogramBins(n) {
  return Math.min(120, Math.max(20, Math.round(1.5 * Math.sqrt(n)))); // as service/plotting.py
}

export function histogramHeights(values, total, bins, lo, hi) {
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

export function evenly(items, count) {
  // At most `count` items evenly spaced in index (with quantile noise, index order is latent order).
  if (items.length <= count) return items;
  return Array.from({ length: count }, (_, i) => items[Math.round((i * (items.length - 1)) / (count - 1))]);
}
