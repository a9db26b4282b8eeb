// lora_core: the LoRA tab's Download box (lora_core/ui/download_view.py draws the markup).
// Posts links to {api}/downloads, polls the queue while something runs and draws one row per file
// with a progress bar and pause / resume / cancel. When a file is done the card grid is refreshed
// (the tab's Search button), so the new LoRA shows at once. Everything from the server is inserted
// as text, never as markup. A1111 loads this file itself; the standalone page gets it from
// lora_core.js, so it guards against running twice.
(function () {
  "use strict";
  if (window.__loraCoreDownloadsLoaded) {
    return;
  }
  window.__loraCoreDownloadsLoaded = true;

  var API_PATH = "lora_core/api";
  var ACTIVE = { queued: 1, resolving: 1, downloading: 1, verifying: 1 };
  var polling = false;
  var seenDone = {};
  var firstLoad = true;

  var root = window.loraCoreRoot; // lora_core.js's (it runs first in both hosts)

  function byId(id) {
    return root().querySelector("#" + id) || document.getElementById(id);
  }

  // lora_core.js's rule for the app's root (--subpath, proxies)
  function apiUrl(route) {
    return window.loraCoreAppUrl(API_PATH + route);
  }

  function say(text) {
    var box = byId("lora_core_dl_message");
    if (box) {
      box.textContent = text || "";
    }
  }

  function mb(n) {
    return (n / 1048576).toFixed(n >= 1048576 * 100 ? 0 : 1) + " MB";
  }

  var el = window.loraCoreElement; // lora_core.js's: text only, never markup

  function button(label, action, id) {
    var b = el("button", "lora-core-dl-btn", label);
    b.type = "button";
    b.setAttribute("data-dl-action", action);
    b.setAttribute("data-dl-id", String(id));
    return b;
  }

  function row(job) {
    var r = el("div", "lora-core-dl-job lora-core-dl-" + job.state);
    r.setAttribute("data-dl-id", String(job.id));
    r.setAttribute("data-dl-state", job.state);
    var head = el("div", "lora-core-dl-head");
    head.appendChild(el("span", "lora-core-dl-name", job.file_name || job.label || job.text));
    head.appendChild(el("span", "lora-core-dl-state", job.state));
    r.appendChild(head);
    var bar = el("div", "lora-core-dl-bar");
    var fill = el("div", "lora-core-dl-fill");
    var pct = Math.round((job.fraction || 0) * 100);
    fill.style.width = pct + "%";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.appendChild(fill);
    r.appendChild(bar);
    var info = job.total ? mb(job.done) + " / " + mb(job.total) + " (" + pct + "%)" : mb(job.done || 0);
    if (job.state === "downloading" && job.speed) {
      info += " · " + mb(job.speed) + "/s";
    }
    r.appendChild(el("div", "lora-core-dl-info", info));
    var msg = job.message || "";
    if (job.notes && job.notes.length) {
      msg = (msg ? msg + " · " : "") + job.notes[job.notes.length - 1];
    }
    if (msg) {
      r.appendChild(el("div", "lora-core-dl-msg", msg));
    }
    var actions = el("div", "lora-core-dl-actions");
    if (ACTIVE[job.state]) {
      actions.appendChild(button("Pause", "pause", job.id));
    }
    if (job.state === "paused" || (job.state === "error" && job.resumable)) {
      actions.appendChild(button("Resume", "resume", job.id));
    }
    if (ACTIVE[job.state] || job.state === "paused" || job.state === "error") {
      actions.appendChild(button("Cancel", "cancel", job.id));
    }
    r.appendChild(actions);
    return r;
  }

  function refreshGrid() {
    var btn = byId("lora_core_search_btn");
    if (btn) {
      btn.click();
    }
  }

  function draw(items) {
    var list = byId("lora_core_dl_list");
    if (!list) {
      return;
    }
    list.textContent = "";
    var finished = false;
    items
      .slice()
      .reverse()
      .forEach(function (job) {
        list.appendChild(row(job));
        if (job.state === "done" && !seenDone[job.id]) {
          seenDone[job.id] = true;
          finished = !firstLoad || finished;
        }
      });
    firstLoad = false;
    if (finished) {
      refreshGrid();
    }
  }

  function request(method, route, body) {
    var opts = { method: method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(apiUrl(route), opts).then(function (r) {
      return r
        .json()
        .catch(function () {
          return {};
        })
        .then(function (data) {
          if (!r.ok) {
            throw new Error((data && data.detail) || "HTTP " + r.status);
          }
          return data;
        });
    });
  }

  function poll() {
    if (polling) {
      return;
    }
    polling = true;
    function tick() {
      request("GET", "/downloads")
        .then(function (data) {
          var items = (data && data.items) || [];
          draw(items);
          var busy = items.some(function (j) {
            return ACTIVE[j.state];
          });
          if (busy) {
            setTimeout(tick, 500);
          } else {
            polling = false;
          }
        })
        .catch(function () {
          polling = false;
        });
    }
    tick();
  }

  function add() {
    var url = byId("lora_core_dl_url");
    var folder = byId("lora_core_dl_folder");
    var text = url ? url.value.trim() : "";
    if (!text) {
      say("Paste a Civitai or Hugging Face link, an AIR or a model id.");
      return;
    }
    request("POST", "/downloads", { url: text, folder: folder ? folder.value.trim() : "" })
      .then(function () {
        say("Queued.");
        if (url) {
          url.value = "";
        }
        poll();
      })
      .catch(function (err) {
        say(String(err && err.message ? err.message : err));
      });
  }

  document.addEventListener(
    "click",
    function (ev) {
      var t = ev.composedPath ? ev.composedPath()[0] : ev.target;
      if (!t || !t.closest) {
        return;
      }
      if (t.closest("#lora_core_dl_add")) {
        ev.preventDefault();
        add();
        return;
      }
      var b = t.closest("[data-dl-action]");
      if (b) {
        ev.preventDefault();
        var id = b.getAttribute("data-dl-id");
        request("POST", "/downloads/" + encodeURIComponent(id) + "/" + b.getAttribute("data-dl-action"))
          .then(poll)
          .catch(function (err) {
            say(String(err && err.message ? err.message : err));
          });
      }
    },
    true
  );

  document.addEventListener(
    "keydown",
    function (ev) {
      var t = ev.composedPath ? ev.composedPath()[0] : ev.target;
      if (ev.key === "Enter" && t && t.id === "lora_core_dl_url") {
        ev.preventDefault();
        add();
      }
    },
    true
  );

  // Show the queue (downloads started from another tab or before a reload) once the box exists.
  var tries = 0;
  var waiter = setInterval(function () {
    tries += 1;
    if (byId("lora_core_dl_list")) {
      clearInterval(waiter);
      poll();
    } else if (tries > 120) {
      clearInterval(waiter);
    }
  }, 500);
})();
