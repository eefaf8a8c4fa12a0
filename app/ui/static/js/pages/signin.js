// Sign-in when authentication is on: an API key pasted once, or the configured OIDC provider.
import { beginOidc, useApiKey } from "../auth.js";
import { config } from "../config.js";
import { h, notice, replace } from "../dom.js";

export function render(main, message) {
  const key = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "API key", required: true });
  const error = h("div");
  const parts = [h("h1", {}, "Sign in"), message ? notice("error", message) : null, error];
  if (config.oidc) {
    parts.push(
      h("p", {}, h("button", {
        id: "sign-in-oidc",
        onclick: () => beginOidc().catch((e) => replace(error, notice("error", e.message))),
      }, "Sign in with your organisation")),
    );
  }
  if (config.apiKeys) {
    parts.push(
      h("form", {
        class: "inline",
        onsubmit: (event) => {
          event.preventDefault();
          useApiKey(key.value);
          window.dispatchEvent(new Event("signed-in"));
        },
      }, h("label", {}, "API key ", key), h("button", { type: "submit", id: "sign-in-key" }, "Use this key")),
      h("p", { class: "muted" }, "The key stays in this tab only (sessionStorage) and is sent as a bearer token."),
    );
  }
  replace(main, h("section", { class: "signin" }, parts));
}
