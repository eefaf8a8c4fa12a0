// Building the page: one small helper instead of a framework.

// h("a", {href: "#/x", class: "btn"}, "text", child) -> an element. Attributes starting with "on" are listeners;
// `false`, null and undefined attributes and children are left out. Text is always set as text, never as HTML.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

// A message line under a page's heading: kind is "error", "ok" or "info".
export function notice(kind, text) {
  return h("p", { class: `notice-line ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// Ask before something that cannot be undone; resolves true when confirmed.
export function confirmAction(title, text, action) {
  const dialog = document.getElementById("confirm");
  replace(
    dialog,
    h("form", { method: "dialog" },
      h("h2", {}, title),
      h("p", {}, text),
      h("menu", {},
        h("button", { value: "cancel", class: "secondary" }, "Cancel"),
        h("button", { value: "confirm", class: "danger", id: "confirm-action" }, action))),
  );
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    dialog.showModal();
  });
}

export function formatBytes(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export function formatTime(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}
