// The explorer's HTTP: GET requests to the documented API, and its errors as one readable line.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(path, params) {
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
