// The CSV downloads of the run on display, made in the page: its samples, and its paths.

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

export function download(shownRun, what) {
  // shownRun: {params, trajectory} of the run on display (null before the first); what: samples or paths.
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
