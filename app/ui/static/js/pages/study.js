// One study: its attributes, its series with thumbnails, its change history, and what can be done with it
// (view, download, send to a remote AE, delete), each shown only when the credential's scopes allow it.
import { ApiError, dicomweb, imageUrl, json, qido, request } from "../api.js";
import { credential } from "../auth.js";
import { config } from "../config.js";
import { TAG, date, personName, value, values } from "../dicom.js";
import { confirmAction, formatTime, h, notice, replace } from "../dom.js";

const SERIES_FIELDS = [TAG.SeriesDescription, TAG.BodyPartExamined, TAG.NumberOfSeriesRelatedInstances];
const THUMBNAIL = "viewport=128,128";
const HISTORY_LIMIT = 200;

function viewerUrl(uid) {
  const query = new URLSearchParams({ StudyInstanceUIDs: uid });
  // OHIF reads a bearer token from `token` once and drops it from the address (its URL auth); with
  // authentication on, this is how the viewer gets the console's credential.
  const held = credential();
  if (held) query.set("token", held.token);
  return `${config.viewer}/viewer?${query}`;
}

function attribute(label, text) {
  return [h("dt", {}, label), h("dd", {}, text || "—")];
}

async function download(uid, status) {
  const url = `${dicomweb(`/studies/${uid}`)}?accept=application/zip`;
  replace(status, notice("info", "Preparing the zip…"));
  const response = await request(url);
  const link = h("a", { href: URL.createObjectURL(await response.blob()), download: `${uid}.zip` });
  document.body.append(link);
  link.click();
  link.remove();
  replace(status, notice("ok", "Downloaded."));
}

// POST /api/aes/{aet}/store answered as NDJSON: one line per sub-operation, then the final counts.
async function send(uid, aet, status) {
  replace(status, notice("info", `Sending to ${aet}…`));
  const response = await request(`/api/aes/${encodeURIComponent(aet)}/store`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    accept: "application/x-ndjson",
    body: JSON.stringify({ StudyInstanceUID: uid }),
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { done, value: chunk } = await reader.read();
    if (done) break;
    buffer += chunk;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines.filter(Boolean)) {
      last = JSON.parse(line);
      if (last.error) {
        replace(status, notice("error", `Send to ${aet} failed: ${last.error}`));
        return;
      }
      const counts = `${last.completed} sent, ${last.warning} with warnings, ${last.failed} failed, ${last.remaining} to go`;
      replace(status, notice(last.done ? (last.failed ? "error" : "ok") : "info",
        last.done ? `Sent to ${aet}: ${counts.replace(/, 0 to go$/, "")}` : `Sending to ${aet}: ${counts}`));
    }
  }
}

function actions(uid, row, who, status, aes) {
  const can = (scope) => who.scopes.includes(scope);
  const items = [];
  if (config.viewer) {
    items.push(h("a", { class: "button", id: "open-viewer", href: viewerUrl(uid), target: "_blank", rel: "noopener" }, "Open in viewer"));
  }
  items.push(h("button", {
    id: "download", class: "secondary",
    onclick: () => download(uid, status).catch((e) => replace(status, notice("error", e.message))),
  }, "Download zip"));
  if (can("admin") && aes.length) {
    const choice = h("select", { id: "send-to" }, aes.map((ae) => h("option", { value: ae.aeTitle }, `${ae.aeTitle} (${ae.host}:${ae.port})`)));
    items.push(h("span", { class: "group" }, choice, h("button", {
      id: "send", class: "secondary",
      onclick: () => send(uid, choice.value, status).catch((e) => replace(status, notice("error", e.message))),
    }, "Send")));
  }
  if (can("delete")) {
    items.push(h("button", {
      id: "delete-study", class: "danger",
      onclick: async () => {
        const name = personName(row, TAG.PatientName) || "(no name)";
        const sure = await confirmAction("Delete this study?",
          `${name}, ${date(value(row, TAG.StudyDate))}: ${value(row, TAG.NumberOfStudyRelatedInstances)} instances will be removed from the archive for good.`,
          "Delete");
        if (!sure) return;
        try {
          const response = await request(dicomweb(`/studies/${uid}`), { method: "DELETE" });
          window.location.hash = `#/studies?deleted=${response.headers.get("X-Deleted-Instances") || ""}`;
        } catch (e) {
          replace(status, notice("error", e.message));
        }
      },
    }, "Delete"));
  }
  return h("div", { class: "actions" }, items);
}

function seriesCard(uid, series) {
  const seriesUid = value(series, TAG.SeriesInstanceUID);
  const image = h("img", { class: "thumbnail", alt: `series ${value(series, TAG.SeriesNumber)}`, width: 128, height: 128 });
  imageUrl(`${dicomweb(`/studies/${uid}/series/${seriesUid}/thumbnail`)}?${THUMBNAIL}`)
    .then((url) => { image.src = url; })
    .catch(() => { image.replaceWith(h("div", { class: "thumbnail none" }, "no image")); });
  return h("li", { class: "series", dataset: { uid: seriesUid } },
    image,
    h("div", {},
      h("strong", {}, `${value(series, TAG.Modality)} #${value(series, TAG.SeriesNumber)}`),
      h("div", {}, value(series, TAG.SeriesDescription) || h("span", { class: "muted" }, "no description")),
      h("div", { class: "muted" }, `${value(series, TAG.NumberOfSeriesRelatedInstances)} instances`,
        value(series, TAG.BodyPartExamined) ? ` · ${value(series, TAG.BodyPartExamined)}` : "")));
}

function history(changes) {
  if (!changes.length) return h("p", { class: "muted" }, "No change recorded.");
  return h("table", { class: "grid compact", id: "history" },
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "When"), h("th", {}, "What"), h("th", {}, "Instance"))),
    h("tbody", {}, changes.map((change) => h("tr", {},
      h("td", {}, change.seq), h("td", {}, formatTime(change.at)), h("td", {}, change.type),
      h("td", { class: "uid" }, change.SOPInstanceUID || "")))));
}

export async function render(main, { args, who }) {
  const uid = args[0];
  const { rows } = await qido("/studies", {
    StudyInstanceUID: uid,
    includefield: [TAG.StudyDescription, TAG.ModalitiesInStudy, TAG.NumberOfStudyRelatedSeries,
      TAG.NumberOfStudyRelatedInstances, TAG.ReferringPhysicianName, TAG.PatientBirthDate, TAG.PatientSex],
  });
  if (!rows.length) throw new ApiError(404, `No study ${uid} is held.`);
  const row = rows[0];
  const [series, changes, aes] = await Promise.all([
    qido(`/studies/${uid}/series`, { includefield: SERIES_FIELDS }).then((answer) => answer.rows),
    json(`/api/changes?study=${encodeURIComponent(uid)}&limit=${HISTORY_LIMIT}`).then((answer) => answer.changes),
    who.scopes.includes("admin") ? json("/api/aes") : Promise.resolve([]),
  ]);
  series.sort((a, b) => Number(value(a, TAG.SeriesNumber)) - Number(value(b, TAG.SeriesNumber)));
  const status = h("div", { id: "action-status" });
  replace(main,
    h("p", {}, h("a", { href: "#/studies" }, "← Studies")),
    h("h1", {}, personName(row, TAG.PatientName) || "(no name)", " ",
      h("small", {}, value(row, TAG.StudyDescription))),
    actions(uid, row, who, status, aes),
    status,
    h("dl", { class: "attributes" },
      attribute("Patient ID", value(row, TAG.PatientID)),
      attribute("Birth date", date(value(row, TAG.PatientBirthDate))),
      attribute("Sex", value(row, TAG.PatientSex)),
      attribute("Study date", date(value(row, TAG.StudyDate))),
      attribute("Accession", value(row, TAG.AccessionNumber)),
      attribute("Referring physician", personName(row, TAG.ReferringPhysicianName)),
      attribute("Modalities", values(row, TAG.ModalitiesInStudy).join(", ")),
      attribute("Series / instances", `${value(row, TAG.NumberOfStudyRelatedSeries)} / ${value(row, TAG.NumberOfStudyRelatedInstances)}`),
      attribute("Study Instance UID", uid)),
    h("h2", {}, "Series"),
    h("ul", { class: "series-list", id: "series" }, series.map((item) => seriesCard(uid, item))),
    h("h2", {}, "History"),
    history(changes));
}
