// Paddock dashboard: live updates through the event stream, actions through the JSON API.
// Our own code, no libraries; served from the binary.
"use strict";
(function () {
  const csrfMeta = document.querySelector('meta[name="csrf"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  function notice(text, bad) {
    let box = document.getElementById("notice");
    if (!box) {
      box = document.createElement("div");
      box.id = "notice";
      document.body.appendChild(box);
    }
    box.textContent = text;
    box.className = bad ? "bad" : "ok";
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => { box.className = "hidden"; }, bad ? 12000 : 4000);
  }

  // --- actions: buttons with data-post call the API ---------------------------------------
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-post]");
    if (!button) return;
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    let body = {};
    if (button.dataset.ask !== undefined) {
      const answer = window.prompt(button.dataset.ask, "");
      if (answer === null) return;
      if (answer.trim() !== "") body.to = answer.trim();
    }
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.post, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (response.ok) {
        notice(button.textContent.trim() + ": done", false);
      } else {
        let detail = response.status + " " + response.statusText;
        try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
        notice(button.textContent.trim() + " refused: " + detail, true);
      }
    } catch (e) {
      notice("the node did not answer: " + e, true);
    } finally {
      button.disabled = false;
      refresh();
    }
  });

  // --- the live parts ------------------------------------------------------------------------
  const live = document.getElementById("live");
  const vmPage = document.getElementById("vm");
  let refreshing = false, again = false, timer = null;

  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      if (live) {
        const response = await fetch(live.dataset.fragment, { credentials: "same-origin" });
        if (response.ok) live.innerHTML = await response.text();
      } else if (vmPage) {
        const response = await fetch(location.href, { credentials: "same-origin" });
        if (response.ok) {
          const page = new DOMParser().parseFromString(await response.text(), "text/html");
          const fresh = page.getElementById("vm");
          if (fresh) vmPage.innerHTML = fresh.innerHTML;
        }
      }
    } catch (e) { /* the next event or tick tries again */ }
    refreshing = false;
    if (again) { again = false; refresh(); }
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  }

  // While migrations run, their progress (not events) changes every second.
  setInterval(() => {
    const strip = document.getElementById("strip");
    if (strip && strip.dataset.active === "1") refresh();
  }, 1000);

  // --- the event stream ----------------------------------------------------------------------
  const log = document.getElementById("event-log");
  const streamState = document.getElementById("stream-state");
  if (!log && !vmPage) return;
  const since = log ? log.dataset.last || "0" : "";
  const url = "/api/v1/events" + (since ? "?since=" + since : "?since=" + Number.MAX_SAFE_INTEGER);
  // EventSource reconnects by itself with Last-Event-ID: nothing committed is missed.
  const source = new EventSource(url, { withCredentials: true });
  source.onopen = () => { if (streamState) streamState.textContent = "live"; };
  source.onerror = () => { if (streamState) streamState.textContent = "reconnecting…"; };
  function clock(ms) {
    if (!ms) return "—";
    return new Date(ms).toISOString().substring(11, 19);
  }
  source.addEventListener("paddock", (message) => {
    const e = JSON.parse(message.data);
    if (log) {
      const item = document.createElement("li");
      item.dataset.seq = e.seq;
      const time = document.createElement("time");
      time.textContent = clock(e.at_ms);
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = e.kind;
      const subject = document.createElement("b");
      subject.textContent = e.subject;
      item.append(time, " ", kind, " ", subject, " " + e.message);
      log.prepend(item);
      while (log.children.length > 200) log.lastChild.remove();
      soon();
    } else if (vmPage && e.subject === vmPage.dataset.vm) {
      soon();
    }
  });
})();
