// The console: a hash router over small pages, each a module with `render(main, context)`.
import { json } from "./api.js";
import { completeOidc, signOut, signedIn } from "./auth.js";
import { config } from "./config.js";
import { h, notice, replace } from "./dom.js";
import * as aes from "./pages/aes.js";
import * as signin from "./pages/signin.js";
import * as studies from "./pages/studies.js";
import * as study from "./pages/study.js";
import * as system from "./pages/system.js";
import * as upload from "./pages/upload.js";
import * as workflow from "./pages/workflow.js";

const PAGES = { studies, study, upload, aes, system, workflow };
const main = document.getElementById("main");
let who = null;

// "#/study/1.2.3?x=1" -> {name: "study", args: ["1.2.3"], params: URLSearchParams}
function route() {
  const [path, query = ""] = window.location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...args] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: PAGES[name] ? name : "studies", args, params: new URLSearchParams(query) };
}

function showWho() {
  const nav = document.getElementById("nav");
  for (const link of nav.querySelectorAll("[data-scope]")) {
    link.hidden = !(who && who.scopes.includes(link.dataset.scope));
  }
  const place = document.getElementById("who");
  if (!config.authentication) {
    replace(place, h("span", { class: "muted" }, "authentication off"));
  } else if (who) {
    replace(place,
      h("span", { title: `scopes: ${who.scopes.join(", ")}` }, who.name),
      h("button", { class: "link", id: "sign-out", onclick: () => { signOut(); who = null; render(); } }, "Sign out"));
  } else {
    replace(place);
  }
}

// Each render draws into its own element and shows it only if no later render began meanwhile: a slow answer
// for a page the user has already left never covers the page they are on.
let generation = 0;

async function render() {
  const mine = ++generation;
  const current = route();
  for (const link of document.querySelectorAll("#nav a[data-page]")) {
    link.classList.toggle("current", link.dataset.page === current.name);
  }
  if (!signedIn()) {
    who = null;
    showWho();
    return signin.render(main);
  }
  if (!who) {
    try {
      who = await json("/ui/whoami");
    } catch (error) {
      showWho();
      if (error.status === 401) return signin.render(main, error.message);
      return replace(main, notice("error", `Cannot reach the archive: ${error.message}`));
    }
  }
  showWho();
  replace(main, h("p", { class: "muted" }, "Loading…"));
  const view = h("div", { class: "view" });
  try {
    await PAGES[current.name].render(view, { args: current.args, params: current.params, who });
  } catch (error) {
    replace(view, notice("error", error.message));
  }
  if (mine === generation) replace(main, view);
}

window.addEventListener("hashchange", render);
window.addEventListener("signin-needed", (event) => {
  generation += 1;
  signOut();
  who = null;
  signin.render(main, event.detail);
  showWho();
});
window.addEventListener("signed-in", () => {
  who = null;
  render();
});

completeOidc()
  .catch((error) => {
    replace(main, notice("error", error.message));
  })
  .finally(render);
