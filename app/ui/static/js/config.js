// What the archive wrote into the page (app/ui/console.py): authentication, OIDC client, roots.
const element = document.getElementById("console-config");
export const config = Object.freeze(JSON.parse(element ? element.textContent : "{}"));
