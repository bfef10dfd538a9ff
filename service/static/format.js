// Numbers for people, whatever the browser's language: 1,234.5.

const NUMBER_LOCALE = "en-US";

export function formatCount(value) {
  return Number(value).toLocaleString(NUMBER_LOCALE); // 12,000
}

export function formatSignificant(value, digits, trim = false) {
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

export function formatMilliseconds(ms) {
  const text = ms.toLocaleString(NUMBER_LOCALE, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  return `${text} ms`;
}
