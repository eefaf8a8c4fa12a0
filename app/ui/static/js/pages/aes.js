// Remote AEs: the AE registry (GET/PUT/DELETE /api/aes) and a C-ECHO per entry (POST /api/aes/{aet}/echo).
import { json } from "../api.js";
import { confirmAction, h, notice, replace } from "../dom.js";

function form(ae, status, done) {
  const title = h("input", { name: "aeTitle", required: true, maxlength: 16, value: ae?.aeTitle || "", readonly: Boolean(ae) });
  const host = h("input", { name: "host", required: true, value: ae?.host || "" });
  const port = h("input", { name: "port", type: "number", min: 1, max: 65535, required: true, value: ae?.port || 104 });
  const tls = h("input", { name: "tls", type: "checkbox", checked: Boolean(ae?.tls) });
  return h("form", {
    class: "inline", id: ae ? `edit-${ae.aeTitle}` : "add-ae",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await json(`/api/aes/${encodeURIComponent(title.value.trim())}`, {
          method: "PUT",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ host: host.value.trim(), port: Number(port.value), tls: tls.checked }),
        });
        done(`${title.value.trim()} saved.`);
      } catch (error) {
        replace(status, notice("error", error.message));
      }
    },
  },
  h("label", {}, "AE title", title), h("label", {}, "Host", host), h("label", {}, "Port", port),
  h("label", { class: "check" }, tls, "TLS"),
  h("button", { type: "submit" }, ae ? "Save" : "Add"));
}

export async function render(main, context, message = "") {
  const aes = await json("/api/aes");
  const status = h("div", { id: "ae-status" }, message ? notice("ok", message) : null);
  const again = (text) => render(main, context, text);
  const rows = aes.map((ae) => {
    const result = h("td", { class: "echo-result" });
    const row = h("tr", { dataset: { aet: ae.aeTitle } },
      h("td", {}, ae.aeTitle), h("td", {}, ae.host), h("td", {}, ae.port), h("td", {}, ae.tls ? "yes" : "no"),
      h("td", { class: "row-actions" },
        h("button", {
          class: "secondary echo",
          onclick: async () => {
            replace(result, "…");
            try {
              const answer = await json(`/api/aes/${encodeURIComponent(ae.aeTitle)}/echo`, { method: "POST" });
              replace(result, h("span", { class: "ok" }, `echo OK (${(answer.seconds * 1000).toFixed(0)} ms)`));
            } catch (error) {
              replace(result, h("span", { class: "failed" }, error.message));
            }
          },
        }, "Echo"),
        h("button", { class: "secondary", onclick: () => row.after(h("tr", {}, h("td", { colspan: 6 }, form(ae, status, again)))) }, "Edit"),
        h("button", {
          class: "danger",
          onclick: async () => {
            if (!(await confirmAction(`Remove ${ae.aeTitle}?`, "The archive will no longer send to it, nor accept it as a C-MOVE destination.", "Remove"))) return;
            try {
              await json(`/api/aes/${encodeURIComponent(ae.aeTitle)}`, { method: "DELETE" });
              again(`${ae.aeTitle} removed.`);
            } catch (error) {
              replace(status, notice("error", error.message));
            }
          },
        }, "Remove")),
      result);
    return row;
  });
  replace(main,
    h("h1", {}, "Remote AEs"),
    status,
    h("table", { class: "grid", id: "aes" },
      h("thead", {}, h("tr", {}, ["AE title", "Host", "Port", "TLS", "", "Echo"].map((label) => h("th", {}, label)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No remote AE is registered.")))),
    h("h2", {}, "Add a remote AE"),
    form(null, status, again));
}
