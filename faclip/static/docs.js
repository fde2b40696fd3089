// The /docs page: Swagger UI (served by this server, see faclip/serve.py) over /openapi.json.
// A file, not an inline script, so the page keeps the CSP without 'unsafe-inline'.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
