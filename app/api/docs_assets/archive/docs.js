// Start-up of /docs (Swagger UI) and /redoc (ReDoc), app/api/docs.py. The page holds no data: the API's
// description (/openapi.json) and Swagger UI's "Try it out" calls follow the API's authentication, so both are
// sent with the credential this tab signed in with at the console (its own auth module: sessionStorage, same
// origin). A tab without one is told where to sign in; nothing is shown that the token would guard.
const place = document.getElementById("docs");
const { viewer, openapi, console: consoleUrl } = place.dataset;
const { authHeaders } = await import(`${consoleUrl}static/js/auth.js`);

function explain(text) {
  const link = document.createElement("a");
  link.href = consoleUrl;
  link.textContent = "Sign in to the console";
  const line = document.createElement("p");
  line.id = "docs-sign-in";
  line.style.cssText = "font: 16px sans-serif; margin: 2em";
  line.append(`${text} `, link, ", then open this page again from its API link (or reload it in that tab).");
  place.replaceChildren(line);
}

const response = await fetch(openapi, { headers: authHeaders(), cache: "no-store" });
if (response.status === 401 || response.status === 403) {
  explain(`The API's description needs a credential with the read scope (the archive answered ${response.status}).`);
} else if (!response.ok) {
  explain(`The API's description could not be read (the archive answered ${response.status}).`);
} else if (viewer === "redoc") {
  window.Redoc.init(await response.json(), {}, place);
} else {
  const ui = window.SwaggerUIBundle;
  ui({
    spec: await response.json(),
    domNode: place,
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [ui.presets.apis, ui.SwaggerUIStandalonePreset],
    // "Try it out" with the console's credential, unless one was given through Swagger UI's own Authorize.
    requestInterceptor: (request) => {
      for (const [name, value] of Object.entries(authHeaders())) request.headers[name] ??= value;
      return request;
    },
  });
}
