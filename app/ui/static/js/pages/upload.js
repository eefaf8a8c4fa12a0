// Upload: files or folders, dropped or picked, sent by STOW-RS (PS3.18 10.5) in batches. Each file's line shows
// its progress while its batch is on the wire, then its own result read from the STOW-RS answer: stored,
// replaced (a copy was held already: checked by QIDO-RS just before its batch) or failed with the reason
// (FailedSOPSequence's Failure Reason, and the server's words from its Warning header when it gives them).
import { authHeaders } from "../auth.js";
import { dicomweb, qido, warnings } from "../api.js";
import { config } from "../config.js";
import { FAILURE_REASONS, TAG, sopInstanceUidOf, value, values } from "../dicom.js";
import { formatBytes, h, notice, replace } from "../dom.js";

const BATCH_FILES = 25;
const BATCH_BYTES = 64 * 1024 * 1024;
const BOUNDARY = `console-${crypto.getRandomValues(new Uint32Array(2)).join("")}`;

// Every file under a dropped folder (webkitGetAsEntry: Chromium, Firefox and Safari all have it).
async function entryFiles(entry) {
  if (entry.isFile) return [await new Promise((resolve, reject) => entry.file(resolve, reject))];
  const reader = entry.createReader();
  const files = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) return files;
    for (const child of batch) files.push(...(await entryFiles(child)));
  }
}

async function droppedFiles(transfer) {
  const entries = [...transfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...transfer.files];
  return (await Promise.all(entries.map(entryFiles))).flat();
}

class Item {
  constructor(file) {
    this.file = file;
    this.uid = null;
    this.bar = h("progress", { max: 1, value: 0 });
    this.result = h("span", { class: "result" }, "waiting");
    this.row = h("tr", { class: "upload-item" },
      h("td", {}, file.webkitRelativePath || file.name), h("td", {}, formatBytes(file.size)),
      h("td", {}, this.bar), h("td", {}, this.result));
  }

  finish(kind, text) {
    this.kind = kind;
    this.bar.value = 1;
    this.row.dataset.result = kind;
    replace(this.result, h("span", { class: kind }, text));
  }
}

function body(items) {
  const parts = [];
  const ranges = [];
  let size = 0;
  for (const item of items) {
    const head = `--${BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n`;
    parts.push(head, item.file, "\r\n");
    size += head.length;
    ranges.push([item, size, size + item.file.size]);
    size += item.file.size + 2;
  }
  parts.push(`--${BOUNDARY}--\r\n`);
  return { blob: new Blob(parts), ranges };
}

// One STOW-RS request; XMLHttpRequest rather than fetch, for its upload progress events.
function post(blob, ranges) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", dicomweb("/studies"));
    for (const [name, val] of Object.entries(authHeaders())) xhr.setRequestHeader(name, val);
    xhr.setRequestHeader("Content-Type", `multipart/related; type="application/dicom"; boundary=${BOUNDARY}`);
    xhr.setRequestHeader("Accept", "application/dicom+json");
    xhr.upload.onprogress = (event) => {
      for (const [item, start, end] of ranges) {
        item.bar.value = Math.max(0, Math.min(1, (event.loaded - start) / Math.max(1, end - start)));
      }
    };
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => reject(new Error("the archive could not be reached"));
    xhr.send(blob);
  });
}

// The server's own words for a failed instance, when its Warning header names it ("<uid> 0xA900 reason").
function reasonFromWarnings(header, uid) {
  for (const text of warnings(header)) {
    for (const part of text.split("; ")) {
      const found = part.match(/(\S+) 0x[0-9A-F]{4} (.*)$/i);
      if (found && found[1] === uid) return found[2];
    }
  }
  return "";
}

async function sendBatch(items) {
  const known = items.filter((item) => item.uid);
  const held = new Set();
  if (known.length) {
    const { rows } = await qido("/instances", { SOPInstanceUID: known.map((item) => item.uid).join(","), limit: known.length });
    for (const row of rows) held.add(value(row, TAG.SOPInstanceUID));
  }
  const { blob, ranges } = body(items);
  const xhr = await post(blob, ranges);
  if (xhr.status === 401) window.dispatchEvent(new CustomEvent("signin-needed", { detail: "sign in to upload" }));
  let answer = {};
  try {
    answer = JSON.parse(xhr.responseText || "{}");
  } catch {
    answer = {};
  }
  const header = xhr.getResponseHeader("Warning") || "";
  const byUid = new Map(known.map((item) => [item.uid, item]));
  for (const ref of values(answer, TAG.ReferencedSOPSequence)) {
    const item = byUid.get(value(ref, TAG.ReferencedSOPInstanceUID));
    if (!item) continue;
    const warned = value(ref, TAG.WarningReason);
    const kept = config.duplicatePolicy === "keep" ? "already held: kept the first copy" : "replaced";
    item.finish(held.has(item.uid) ? "replaced" : "stored",
      (held.has(item.uid) ? kept : "stored") + (warned ? ` (warning 0x${Number(warned).toString(16).toUpperCase()})` : ""));
  }
  for (const failed of values(answer, TAG.FailedSOPSequence)) {
    const item = byUid.get(value(failed, TAG.ReferencedSOPInstanceUID));
    if (!item) continue;
    const code = Number(value(failed, TAG.FailureReason));
    const words = reasonFromWarnings(header, item.uid) || FAILURE_REASONS[code] || "failed";
    item.finish("failed", `failed: ${words} (0x${code.toString(16).toUpperCase().padStart(4, "0")})`);
  }
  const general = xhr.status >= 400 && !values(answer, TAG.FailedSOPSequence).length
    ? (answer?.["00000902"]?.Value?.[0] || warnings(header).join("; ") || `HTTP ${xhr.status}`)
    : "not stored: the archive could not read it as DICOM";
  for (const item of items) if (!item.kind) item.finish("failed", `failed: ${general}`);
}

function batches(items) {
  const groups = [[]];
  let bytes = 0;
  for (const item of items) {
    const last = groups[groups.length - 1];
    if (last.length && (last.length >= BATCH_FILES || bytes + item.file.size > BATCH_BYTES)) {
      groups.push([]);
      bytes = 0;
    }
    groups[groups.length - 1].push(item);
    bytes += item.file.size;
  }
  return groups.filter((group) => group.length);
}

async function upload(files, table, summary) {
  const items = files.map((file) => new Item(file));
  replace(table.tBodies[0], items.map((item) => item.row));
  for (const item of items) item.uid = await sopInstanceUidOf(item.file);
  replace(summary, notice("info", `Uploading ${items.length} files…`));
  for (const group of batches(items)) {
    try {
      await sendBatch(group);
    } catch (error) {
      for (const item of group) if (!item.kind) item.finish("failed", `failed: ${error.message}`);
    }
  }
  const count = (kind) => items.filter((item) => item.kind === kind).length;
  const failed = count("failed");
  replace(summary, notice(failed ? "error" : "ok",
    `Done: ${count("stored")} stored, ${count("replaced")} replaced, ${failed} failed.`));
}

export function render(main) {
  const table = h("table", { class: "grid compact", id: "upload-results" },
    h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", {}, "Size"), h("th", {}, "Progress"), h("th", {}, "Result"))),
    h("tbody"));
  const summary = h("div", { id: "upload-summary" });
  const start = (files) => upload(files, table, summary).catch((error) => replace(summary, notice("error", error.message)));
  const filesInput = h("input", { type: "file", multiple: true, id: "upload-files", onchange: (e) => start([...e.target.files]) });
  const folderInput = h("input", { type: "file", webkitdirectory: true, id: "upload-folder", onchange: (e) => start([...e.target.files]) });
  const zone = h("div", {
    class: "dropzone", id: "dropzone",
    ondragover: (event) => { event.preventDefault(); zone.classList.add("over"); },
    ondragleave: () => zone.classList.remove("over"),
    ondrop: async (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      start(await droppedFiles(event.dataTransfer));
    },
  },
  h("p", {}, "Drop DICOM files or folders here"),
  h("p", {}, h("label", { class: "button secondary" }, "Choose files", filesInput), " ",
    h("label", { class: "button secondary" }, "Choose a folder", folderInput)));
  replace(main, h("h1", {}, "Upload"),
    h("p", { class: "muted" }, `Sent by STOW-RS in batches of up to ${BATCH_FILES} files.`),
    zone, summary, table);
}
