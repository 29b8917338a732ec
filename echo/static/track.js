// The shipment tracking page: follow one shipment through the gateway's Tracking API and list the
// events the tracking backend pushes (examples/push/track.py). Plain DOM, no dependencies.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // The gateway's base URL: ?gateway=ws://host:port overrides the tutorial's port 8082.
  const gatewayBase = (params.get("gateway") || `ws://${location.hostname || "localhost"}:8082`).replace(/\/+$/, "");
  let socket = null;

  if (params.get("shipment")) $("shipment").value = params.get("shipment");
  $("follow").addEventListener("click", follow);
  $("stop").addEventListener("click", () => socket && socket.close(1000, "stopped from the page"));

  function state(text, open) {
    $("state").textContent = text;
    $("state").className = "state " + (open ? "open" : "closed");
    $("follow").disabled = open;
    $("stop").disabled = !open;
  }

  function add(text, kind) {
    const item = document.createElement("li");
    item.textContent = text;
    if (kind) item.className = kind;
    $("events").appendChild(item);
  }

  function follow() {
    const query = new URLSearchParams({ shipment: $("shipment").value.trim(), "x-Gateway-APIKey": $("key").value });
    socket = new WebSocket(`${gatewayBase}/websocket/Tracking/1.0?${query}`);
    socket.addEventListener("open", () => { state(`following ${$("shipment").value.trim()}`, true); });
    socket.addEventListener("message", (event) => {
      let text = String(event.data);
      try {
        const data = JSON.parse(text);
        if (data.status) text = `${data.at || ""} ${data.shipment}: ${data.status}`;
      } catch (_) { /* not JSON: show it as it came */ }
      add(text, "event");
    });
    socket.addEventListener("close", (event) => {
      state("disconnected", false);
      add(`closed ${event.code}${event.reason ? " " + event.reason : ""}`, "meta");
    });
  }
})();
