// System: the archive's counts (/api/admin/statistics), probes (/health, /ready), version, and the tail of
// the change feed (/api/changes?tail=N).
import { ApiError, json, request } from "../api.js";
import { formatBytes, formatTime, h, replace } from "../dom.js";

const TAIL = 50;

async function probe(path) {
  try {
    await request(path);
    return h("span", { class: "ok" }, "OK");
  } catch (error) {
    return h("span", { class: "failed" }, error instanceof ApiError ? `${error.status}: ${error.message}` : error.message);
  }
}

export async function render(main, { who }) {
  const statistics = who.scopes.includes("admin") ? json("/api/admin/statistics") : Promise.resolve(null);
  const [stats, health, ready, feed] = await Promise.all([
    statistics, probe("/health"), probe("/ready"), json(`/api/changes?tail=${TAIL}`),
  ]);
  const counts = stats
    ? h("dl", { class: "attributes", id: "statistics" },
      Object.entries(stats).map(([name, count]) => [
        h("dt", {}, name.replaceAll("_", " ")),
        h("dd", {}, name.includes("bytes") ? formatBytes(count) : count.toLocaleString()),
      ]))
    : h("p", { class: "muted" }, "Statistics need the admin scope.");
  replace(main,
    h("h1", {}, "System"),
    h("dl", { class: "attributes", id: "probes" },
      h("dt", {}, "Version"), h("dd", {}, who.version),
      h("dt", {}, "Health (/health)"), h("dd", {}, health),
      h("dt", {}, "Readiness (/ready)"), h("dd", {}, ready),
      h("dt", {}, "Signed in as"), h("dd", {}, who.name || "anonymous (authentication off)"),
      h("dt", {}, "Scopes"), h("dd", {}, who.scopes.join(", "))),
    h("h2", {}, "Storage"),
    counts,
    h("h2", {}, `Latest changes`),
    h("table", { class: "grid compact", id: "changes" },
      h("thead", {}, h("tr", {}, ["#", "When", "What", "Study", "Instance"].map((label) => h("th", {}, label)))),
      h("tbody", {}, feed.changes.slice().reverse().map((change) => h("tr", {},
        h("td", {}, change.seq), h("td", {}, formatTime(change.at)), h("td", {}, change.type),
        h("td", { class: "uid" }, h("a", { href: `#/study/${encodeURIComponent(change.StudyInstanceUID)}` }, change.StudyInstanceUID)),
        h("td", { class: "uid" }, change.SOPInstanceUID || ""))))));
}
