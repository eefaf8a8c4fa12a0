// Workflow: the Modality Worklist (GET /worklist), UPS workitems with their states (UPS-RS Search, PS3.18
// 11.9: GET /workitems) and the performed procedure steps modalities reported (GET /mpps), read-only.
import { qido } from "../api.js";
import { date, dateTime, personName, time, value } from "../dicom.js";
import { h, notice, replace } from "../dom.js";

const LIMIT = 50;
const STATES = ["", "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"];
const SPS = "00400100"; // Scheduled Procedure Step Sequence

function first(dataset, sequence) {
  return dataset?.[sequence]?.Value?.[0] || {};
}

function table(id, headings, rows, empty) {
  return h("table", { class: "grid compact", id },
    h("thead", {}, h("tr", {}, headings.map((label) => h("th", {}, label)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headings.length, class: "muted" }, empty))));
}

async function section(load, build) {
  try {
    return build(await load());
  } catch (error) {
    return notice("error", error.message);
  }
}

export async function render(main, { params }) {
  const state = STATES.includes(params.get("state")) ? params.get("state") : "";
  const chooser = h("select", {
    id: "ups-state",
    onchange: (event) => { window.location.hash = `#/workflow?state=${encodeURIComponent(event.target.value)}`; },
  }, STATES.map((name) => h("option", { value: name, selected: name === state }, name || "any state")));
  const [worklist, workitems, steps] = await Promise.all([
    section(() => qido("/worklist", { limit: LIMIT }), ({ rows }) => table("worklist",
      ["Patient", "Patient ID", "Start", "Modality", "Station AE", "Step"],
      rows.map((row) => {
        const sps = first(row, SPS);
        return h("tr", {}, h("td", {}, personName(row, "00100010")), h("td", {}, value(row, "00100020")),
          h("td", {}, `${date(value(sps, "00400002"))} ${time(value(sps, "00400003"))}`), h("td", {}, value(sps, "00080060")),
          h("td", {}, value(sps, "00400001")), h("td", {}, value(sps, "00400007") || value(sps, "00400009")));
      }), "No scheduled step is on the worklist.")),
    section(() => qido("/workitems", { ProcedureStepState: state, limit: LIMIT }), ({ rows }) => table("workitems",
      ["Label", "State", "Priority", "Scheduled start", "Patient", "Workitem UID"],
      rows.map((row) => h("tr", { dataset: { state: value(row, "00741000") } },
        h("td", {}, value(row, "00741204")), h("td", {}, h("span", { class: "state" }, value(row, "00741000"))),
        h("td", {}, value(row, "00741200")), h("td", {}, dateTime(value(row, "00404005"))),
        h("td", {}, personName(row, "00100010")), h("td", { class: "uid" }, value(row, "00080018")))),
      "No workitem matches.")),
    section(() => qido("/mpps", { limit: LIMIT }), ({ rows }) => table("mpps",
      ["Status", "Started", "Modality", "Patient", "Description", "Step UID"],
      rows.map((row) => h("tr", {},
        h("td", {}, h("span", { class: "state" }, value(row, "00400252"))),
        h("td", {}, `${date(value(row, "00400244"))} ${time(value(row, "00400245"))}`), h("td", {}, value(row, "00080060")),
        h("td", {}, personName(row, "00100010")), h("td", {}, value(row, "00400254")),
        h("td", { class: "uid" }, value(row, "00080018")))),
      "No performed procedure step was reported.")),
  ]);
  replace(main,
    h("h1", {}, "Workflow"),
    h("h2", {}, "Modality Worklist"), worklist,
    h("h2", {}, "UPS workitems ", chooser), workitems,
    h("h2", {}, "Performed procedure steps (MPPS)"), steps);
}
