// Every call the console makes goes through here: same origin, the credential in a header, errors as text.
import { authHeaders } from "./auth.js";
import { config } from "./config.js";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The reason a refusal gives: DICOM JSON Error Comment (0000,0902), FastAPI's detail, or the Warning header.
async function reason(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    const comment = body?.["00000902"]?.Value?.[0];
    if (comment) return comment;
    if (typeof body?.detail === "string") return body.detail;
  } catch {
    // not JSON
  }
  const warning = response.headers.get("Warning");
  if (warning) return warningText(warning);
  return text.slice(0, 300) || response.statusText;
}

// `299 agent: "text", 299 agent: "more"` -> ["text", "more"] (RFC 7234 5.5).
export function warnings(header) {
  return [...(header || "").matchAll(/\d{3} \S+ "((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]);
}

function warningText(header) {
  return warnings(header).join("; ") || header;
}

export async function request(path, { method = "GET", headers = {}, body, accept } = {}) {
  const all = { ...authHeaders(), ...headers };
  if (accept) all.Accept = accept;
  const response = await fetch(path, { method, headers: all, body, credentials: "omit" });
  if (!response.ok) {
    const error = new ApiError(response.status, await reason(response));
    if (response.status === 401) window.dispatchEvent(new CustomEvent("signin-needed", { detail: error.message }));
    throw error;
  }
  return response;
}

export async function json(path, options = {}) {
  const response = await request(path, { accept: "application/json", ...options });
  return response.status === 204 ? null : response.json();
}

export function dicomweb(path) {
  return `${config.dicomweb}${path}`;
}

// QIDO-RS (PS3.18 10.6): the page of rows and how many more the server holds beyond it (its Warning header
// "There are N additional results that can be requested", 8.3.4.4).
export async function qido(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const item of [].concat(value)) if (item !== "" && item !== null && item !== undefined) query.append(name, item);
  }
  const response = await request(`${dicomweb(path)}?${query}`, { accept: "application/dicom+json" });
  const rows = response.status === 204 ? [] : await response.json();
  let more = 0;
  for (const text of warnings(response.headers.get("Warning"))) {
    const found = text.match(/There are (\d+) additional results/);
    if (found) more = Number(found[1]);
  }
  return { rows, more };
}

// A rendered image fetched with the credential, as an object URL an <img> can show.
export async function imageUrl(path) {
  const response = await request(path, { accept: "image/jpeg" });
  return URL.createObjectURL(await response.blob());
}
