// Live updates: the server re-renders the live part of the page and sends
// it over Server-Sent Events; this swaps it in. Without JavaScript the
// page is the same, only static.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  var connect = function () {
    var es = new EventSource(live.getAttribute("data-events"));
    es.addEventListener("update", function (e) {
      live.innerHTML = e.data;
      conn.textContent = "live";
      conn.setAttribute("data-state", "live");
    });
    es.onerror = function () {
      conn.textContent = "connection lost, retrying…";
      conn.setAttribute("data-state", "lost");
      // An answer other than a stream (503: too many open) closes it
      // for good: try again later.
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 30000);
    };
  };
  if (live && window.EventSource) connect();
  // Actions: POST with the bearer token typed into the page. No cookie is
  // ever set, so another site cannot make this browser act.
  var panel = document.getElementById("actions");
  if (!panel) return;
  var result = document.getElementById("action-result");
  panel.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var body = {};
      new FormData(form).forEach(function (v, k) { body[k] = v; });
      if (form.getAttribute("data-action") === "approve") {
        // The release shown on the page is the one approved.
        var waves = document.querySelector("table.waves");
        body.checksum = waves ? waves.getAttribute("data-rollout") : "";
      }
      var token = document.getElementById("token").value;
      var headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = "Bearer " + token;
      fetch(panel.getAttribute("data-api") + form.getAttribute("data-action"), {
        method: "POST", headers: headers, body: JSON.stringify(body), credentials: "omit"
      }).then(function (r) {
        return r.json().then(function (j) {
          result.textContent = r.ok ? form.getAttribute("data-action") + ": done" : "refused (" + r.status + "): " + j.error;
        });
      }).catch(function (err) { result.textContent = "failed: " + err; });
    });
  });
})();
