// Studies: a search form over QIDO-RS `GET /studies` (PS3.18 10.6), one page at a time. The form lives in the
// URL (#/studies?PatientName=DOE*&offset=25), so back, forward and bookmarks work.
import { qido } from "../api.js";
import { TAG, date, personName, value, values } from "../dicom.js";
import { h, notice, replace } from "../dom.js";

const FIELDS = ["PatientName", "PatientID", "AccessionNumber", "from", "to", "ModalitiesInStudy"];
const INCLUDE = [TAG.StudyDescription, TAG.ModalitiesInStudy, TAG.NumberOfStudyRelatedSeries,
  TAG.NumberOfStudyRelatedInstances];
// [key, label, cell, the orderby keys that sort it (QIDO-RS `orderby`, an extension of this archive), the
// direction of a first click]. The server sorts the whole list, so a page shows the first rows of all matches;
// modalities have no order both stores share, so that column does not sort.
const COLUMNS = [
  ["PatientName", "Patient", (row) => personName(row, TAG.PatientName), ["PatientName"], "asc"],
  ["PatientID", "Patient ID", (row) => value(row, TAG.PatientID), ["PatientID"], "asc"],
  ["StudyDate", "Date", (row) => date(value(row, TAG.StudyDate)), ["StudyDate", "StudyTime"], "desc"],
  ["StudyDescription", "Description", (row) => value(row, TAG.StudyDescription), ["StudyDescription"], "asc"],
  ["AccessionNumber", "Accession", (row) => value(row, TAG.AccessionNumber), ["AccessionNumber"], "asc"],
  ["ModalitiesInStudy", "Modalities", (row) => values(row, TAG.ModalitiesInStudy).join(", "), null, null],
  ["series", "Series", (row) => value(row, TAG.NumberOfStudyRelatedSeries), ["NumberOfStudyRelatedSeries"], "desc"],
  ["instances", "Instances", (row) => value(row, TAG.NumberOfStudyRelatedInstances),
    ["NumberOfStudyRelatedInstances"], "desc"],
];
const SIZES = [25, 50, 100];

// A name typed without wildcards is a prefix: DOE finds DOE^JOHN (PS3.4 C.2.2.2.4 wildcard matching).
function nameQuery(text) {
  const trimmed = text.trim();
  return !trimmed || /[*?]/.test(trimmed) ? trimmed : `${trimmed}*`;
}

// from/to (yyyy-mm-dd) -> a StudyDate range (PS3.4 C.2.2.2.5): a-b, a-, -b.
function dateRange(from, to) {
  const compact = (text) => (text || "").replaceAll("-", "");
  return from || to ? `${compact(from)}-${compact(to)}` : "";
}

function go(params) {
  window.location.hash = `#/studies?${params}`;
}

export async function render(main, { params }) {
  const limit = SIZES.includes(Number(params.get("limit"))) ? Number(params.get("limit")) : SIZES[0];
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const sort = params.get("sort") || "";
  const inputs = {
    PatientName: h("input", { name: "PatientName", placeholder: "DOE* (wildcards * ?)", value: params.get("PatientName") || "" }),
    PatientID: h("input", { name: "PatientID", value: params.get("PatientID") || "" }),
    AccessionNumber: h("input", { name: "AccessionNumber", value: params.get("AccessionNumber") || "" }),
    from: h("input", { name: "from", type: "date", value: params.get("from") || "" }),
    to: h("input", { name: "to", type: "date", value: params.get("to") || "" }),
    ModalitiesInStudy: h("input", { name: "ModalitiesInStudy", placeholder: "CT", size: 6, value: params.get("ModalitiesInStudy") || "" }),
  };
  const form = h("form", {
    class: "search",
    id: "study-search",
    onsubmit: (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const name of FIELDS) if (inputs[name].value.trim()) next.set(name, inputs[name].value.trim());
      next.set("limit", String(limit));
      if (sort) next.set("sort", sort);
      go(next);
    },
  },
  h("label", {}, "Patient name", inputs.PatientName),
  h("label", {}, "Patient ID", inputs.PatientID),
  h("label", {}, "Accession", inputs.AccessionNumber),
  h("label", {}, "Study date from", inputs.from),
  h("label", {}, "to", inputs.to),
  h("label", {}, "Modality", inputs.ModalitiesInStudy),
  h("button", { type: "submit" }, "Search"),
  h("button", { type: "button", class: "secondary", onclick: () => go(new URLSearchParams()) }, "Clear"));

  const [sortKey, direction] = sort.split(":");
  const column = COLUMNS.find(([key, , , keys]) => key === sortKey && keys);
  const query = {
    PatientName: nameQuery(params.get("PatientName") || ""),
    PatientID: params.get("PatientID") || "",
    AccessionNumber: params.get("AccessionNumber") || "",
    StudyDate: dateRange(params.get("from"), params.get("to")),
    ModalitiesInStudy: (params.get("ModalitiesInStudy") || "").toUpperCase(),
    includefield: INCLUDE,
    orderby: column ? column[3].map((key) => (direction === "desc" ? `-${key}` : key)).join(",") : "",
    limit,
    offset,
  };
  const { rows, more } = await qido("/studies", query);
  const total = offset + rows.length + more;

  const link = (changes) => {
    const next = new URLSearchParams(params);
    for (const [name, val] of Object.entries(changes)) next.set(name, String(val));
    return `#/studies?${next}`;
  };
  const header = h("tr", {}, COLUMNS.map(([key, label, , keys, first]) => {
    if (!keys) return h("th", {}, label);
    const current = column && key === sortKey ? (direction === "desc" ? " ▼" : " ▲") : "";
    const next = !current ? first : direction === "desc" ? "asc" : "desc";
    return h("th", {}, h("a", { href: link({ sort: `${key}:${next}`, offset: 0 }), title: "sort all matches" },
      label + current));
  }));
  const body = rows.map((row) => {
    const uid = value(row, TAG.StudyInstanceUID);
    return h("tr", { class: "study-row", dataset: { uid } },
      COLUMNS.map(([key, , cell], index) => h("td", {}, index === 0
        ? h("a", { href: `#/study/${encodeURIComponent(uid)}` }, cell(row) || "(no name)")
        : cell(row))));
  });
  const pager = h("nav", { class: "pager" },
    h("span", { id: "study-count" }, rows.length
      ? `${offset + 1}–${offset + rows.length} of ${total} studies`
      : "No study matches"),
    offset > 0 ? h("a", { href: link({ offset: Math.max(0, offset - limit) }), id: "previous-page" }, "← Previous") : null,
    more > 0 ? h("a", { href: link({ offset: offset + limit }), id: "next-page" }, "Next →") : null,
    h("label", {}, "per page ", h("select", {
      onchange: (event) => { window.location.hash = link({ limit: event.target.value, offset: 0 }); },
    }, SIZES.map((size) => h("option", { value: size, selected: size === limit }, size)))));

  const deleted = params.get("deleted");
  replace(main,
    h("h1", {}, "Studies"),
    deleted !== null ? notice("ok", `Study deleted (${deleted} instances removed).`) : null,
    form,
    pager,
    h("table", { class: "grid", id: "studies" }, h("thead", {}, header), h("tbody", {}, body)));
}
