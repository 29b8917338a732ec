// The wsgate echo demo page: connect to the echo backend or through the gateway,
// send messages and watch what comes back. Plain DOM, no dependencies.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const config = readConfig();

  // The gateway route from the config the echo server was started with (echo/link.py); ?gateway=ws://host:port
  // overrides its address. Without either, the tutorial's 8082.
  const link = config.gateway || { scheme: "ws", port: 8082, path: "/websocket/EchoWS/1.0", api: "EchoWS" };
  const gatewayBase = (params.get("gateway") ||
    `${link.scheme}://${location.hostname || "localhost"}:${link.port}`).replace(/\/+$/, "");
  const gatewayEchoWS = `${gatewayBase}${link.path}`;
  $("use-gateway").textContent = `Use gateway ${link.api}`;
  const rooms = config.contexts.filter((c) => c.mode === "room" && c.published);
  const echoPath = (rooms[0] || config.contexts[0] || { path: "/api/demo/" }).path;
  const echoURI = `ws://${location.host || "localhost:8765"}${echoPath}`;

  let socket = null;
  let opened = false;

  $("uri").value = params.get("uri") || echoURI;
  $("use-echo").addEventListener("click", () => { $("uri").value = echoURI; });
  $("use-gateway").addEventListener("click", () => { $("uri").value = gatewayEchoWS; });
  $("use-gateway").title = gatewayEchoWS;
  for (const context of config.contexts) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = context.path + (context.published ? "" : " (unpublished)");
    button.title = `${context.mode} context on this echo server`;
    button.addEventListener("click", () => { $("uri").value = `ws://${location.host}${context.path}`; });
    $("contexts").appendChild(button);
  }

  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", () => socket && socket.close(1000, "closed from the demo page"));
  $("send").addEventListener("click", send);
  $("message").addEventListener("keydown", (e) => { if (e.key === "Enter") send(); });
  $("clear").addEventListener("click", () => { $("log").textContent = ""; });

  function readConfig() {
    try {
      const parsed = JSON.parse($("echo-config").textContent);
      const gateway = parsed.gateway && typeof parsed.gateway === "object" ? parsed.gateway : null;
      return { contexts: Array.isArray(parsed.contexts) ? parsed.contexts : [], gateway };
    } catch (e) {
      return { contexts: [], gateway: null };
    }
  }

  function targetURL() {
    const url = new URL($("uri").value.trim());
    const user = $("user").value.trim();
    const key = $("apikey").value;
    if (user) url.searchParams.set("user", user);
    if (key) url.searchParams.set("x-Gateway-APIKey", key);
    return url;
  }

  // What the log shows of a URL: never the API key itself.
  function shown(url) {
    const copy = new URL(url.href);
    if (copy.searchParams.has("x-Gateway-APIKey")) copy.searchParams.set("x-Gateway-APIKey", "***");
    return copy.href;
  }

  function connect() {
    let url;
    try {
      url = targetURL();
      if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new Error("the URI must start with ws:// or wss://");
    } catch (e) {
      log("error", "•", `invalid URI: ${e.message}`);
      return;
    }
    opened = false;
    setState("connecting");
    log("status", "•", `connecting to ${shown(url)}`);
    socket = new WebSocket(url.href);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      opened = true;
      setState("open");
      log("status", "•", "open");
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        log("in", "←", event.data);
      } else {
        const bytes = new Uint8Array(event.data);
        const hex = Array.from(bytes.slice(0, 32), (b) => b.toString(16).padStart(2, "0")).join(" ");
        log("in", "←", `binary, ${bytes.length} bytes: ${hex}${bytes.length > 32 ? " …" : ""}`);
      }
    };
    socket.onclose = (event) => {
      const reason = event.reason ? ` reason "${event.reason}"` : "";
      if (!opened && event.code === 1006) {
        log("error", "•",
          "connection refused before opening (close code 1006): the gateway answered the upgrade with an " +
          "error such as 401 missing/invalid API key, 503 throttled (browsers do not expose the HTTP status; " +
          "the gateway's log has it), or nothing listens there");
      } else {
        log(event.code === 1000 || event.code === 1001 ? "status" : "error", "•",
          `closed: code ${event.code}${reason}${event.wasClean ? "" : " (not clean)"}`);
      }
      socket = null;
      setState("closed");
    };
  }

  function send() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const text = $("message").value;
    socket.send(text);
    log("out", "→", text);
  }

  function setState(state) {
    const badge = $("state");
    badge.className = `state ${state}`;
    badge.textContent = { open: "connected", connecting: "connecting…", closed: "disconnected" }[state];
    $("connect").disabled = state !== "closed";
    $("disconnect").disabled = state === "closed";
    $("send").disabled = state !== "open";
  }

  function log(kind, direction, text) {
    const item = document.createElement("li");
    item.className = kind;
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toTimeString().slice(0, 8) + "." + String(now.getMilliseconds()).padStart(3, "0");
    const dir = document.createElement("span");
    dir.className = "dir";
    dir.textContent = direction;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(time, dir, body);
    const pane = $("log");
    pane.appendChild(item);
    pane.scrollTop = pane.scrollHeight;
  }
})();
