// lora_core: the LoRA tab's "Recipe from a picture" drop zone and "Duplicates and updates" box
// (markup: lora_core/ui/library_tools_view.py; routes: lora_core/ui/library_routes.py).
// Everything the server sends comes from pictures, files or Civitai: it is inserted with
// textContent / setAttribute only, never as HTML.
(function () {
  "use strict";
  if (window.__loraCoreLibraryToolsLoaded) {
    return;
  }
  window.__loraCoreLibraryToolsLoaded = true;

  var API_PATH = "lora_core/api";

  var root = window.loraCoreRoot; // lora_core.js's (it runs first in both hosts)

  // lora_core.js's rule for the app's root (--subpath, proxies)
  function apiUrl(route) {
    return window.loraCoreAppUrl(API_PATH + route);
  }

  function eventTarget(ev) {
    var path = ev.composedPath ? ev.composedPath() : null;
    var t = path && path.length ? path[0] : ev.target;
    return t && t.nodeType === 1 ? t : t && t.parentElement;
  }

  var el = window.loraCoreElement; // lora_core.js's: text only, never markup

  function button(cls, text, attrs) {
    var b = el("button", cls, text);
    b.type = "button";
    Object.keys(attrs || {}).forEach(function (k) {
      b.setAttribute(k, String(attrs[k]));
    });
    return b;
  }

  function clear(node) {
    while (node && node.firstChild) {
      node.removeChild(node.firstChild);
    }
  }

  function json(r) {
    return r.json().then(
      function (data) {
        if (!r.ok) {
          throw new Error((data && data.detail) || "HTTP " + r.status);
        }
        return data;
      },
      function () {
        throw new Error("HTTP " + r.status);
      }
    );
  }

  function post(route, body) {
    var opts = { method: "POST", credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers = { "Content-Type": "application/json" };
      opts.body = JSON.stringify(body);
    }
    return fetch(apiUrl(route), opts).then(json);
  }

  function size(n) {
    var units = ["B", "KB", "MB", "GB"];
    var i = 0;
    n = Number(n) || 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  // -- downloads (the queue of lora_core/ui/download_routes.py) ------------------------------------
  function download(btn, source) {
    btn.disabled = true;
    var note = btn.nextSibling && btn.nextSibling.className === "lora-core-dl-note" ? btn.nextSibling : null;
    if (!note) {
      note = el("span", "lora-core-dl-note");
      btn.parentNode.insertBefore(note, btn.nextSibling);
    }
    note.textContent = " queued…";
    post("/downloads", { url: source, folder: "" })
      .then(function (job) {
        note.textContent = " " + ((job && (job.label || job.state)) || "queued") + " (see Downloads)";
      })
      .catch(function (e) {
        btn.disabled = false;
        note.textContent = " download failed: " + e.message;
      });
  }

  // -- recipe from a picture ----------------------------------------------------------------------------
  function promptBox(id) {
    var box = root().querySelector("#" + id);
    return box ? box.querySelector("textarea") || (box.tagName === "TEXTAREA" ? box : null) : null;
  }

  function setBox(ta, text) {
    ta.value = text;
    ta.dispatchEvent(new Event("input", { bubbles: true }));
    ta.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function usePrompt(result, status) {
    var ta = promptBox("txt2img_prompt");
    if (!ta) {
      status.textContent = "No txt2img prompt box on this page.";
      return;
    }
    setBox(ta, result.prompt || "");
    var neg = promptBox("txt2img_neg_prompt");
    if (neg && result.negative) {
      setBox(neg, result.negative);
    }
    status.textContent = "The txt2img prompt now holds this recipe" + (result.negative && neg ? " (and its negative prompt)." : ".");
  }

  function civitaiText(item) {
    if (item.civitai === "yes") {
      return "on Civitai" + (item.civitai_name ? ": " + item.civitai_name : "");
    }
    if (item.civitai === "no") {
      return "Civitai does not know this hash";
    }
    return "not known whether Civitai has it (offline, or the picture gives no hash)";
  }

  function renderRecipe(box, result) {
    clear(box);
    if (result.error) {
      box.appendChild(el("div", "lora-core-recipe-error", result.error));
      return;
    }
    var head = el("div", "lora-core-recipe-head", "Read from " + (result.source || "the picture") + ":");
    box.appendChild(head);
    var prompt = el("pre", "lora-core-recipe-prompt", result.prompt || "(no prompt)");
    box.appendChild(prompt);
    if (result.negative) {
      box.appendChild(el("pre", "lora-core-recipe-negative", "Negative: " + result.negative));
    }
    var list = el("ul", "lora-core-recipe-loras");
    (result.loras || []).forEach(function (item) {
      var li = el("li", item.found ? "lora-core-recipe-found" : "lora-core-recipe-missing");
      li.setAttribute("data-lora-name", item.name || "");
      li.appendChild(el("b", null, item.tag || item.name || "LoRA #" + (item.version_id || "?")));
      if (item.found) {
        li.appendChild(el("span", null, " in your library (" + item.match + "): " + item.path));
      } else {
        li.appendChild(el("span", null, " missing; " + civitaiText(item) + " "));
        if (item.download) {
          var b = button("lora-core-recipe-download", "Download", { "data-source": item.download });
          li.appendChild(b);
        }
      }
      if (item.note) {
        li.appendChild(el("div", "lora-core-note", item.note));
      }
      list.appendChild(li);
    });
    if ((result.loras || []).length) {
      box.appendChild(list);
    }
    (result.notes || []).forEach(function (n) {
      box.appendChild(el("div", "lora-core-note", n));
    });
    var use = button("lora-core-recipe-use", "Use in txt2img");
    var status = el("span", "lora-core-recipe-status");
    use.addEventListener("click", function () {
      usePrompt(result, status);
    });
    box.appendChild(use);
    box.appendChild(status);
  }

  // fill: also put the prompt into the txt2img boxes at once (a drop on the txt2img prompt itself)
  function sendPicture(zone, file, fill) {
    var box = zone.parentNode.querySelector(".lora-core-recipe-result");
    clear(box);
    box.appendChild(el("div", "lora-core-note", "Reading " + file.name + "…"));
    fetch(apiUrl("/recipe"), {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": file.type || "application/octet-stream",
        "X-File-Name": encodeURIComponent(file.name || "picture"),
      },
      body: file,
    })
      .then(json)
      .then(function (result) {
        renderRecipe(box, result);
        if (fill && !result.error) {
          usePrompt(result, box.querySelector(".lora-core-recipe-status") || el("span"));
        }
      })
      .catch(function (e) {
        clear(box);
        box.appendChild(el("div", "lora-core-recipe-error", "Could not read the picture: " + e.message));
      });
  }
  window.loraCoreSendRecipePicture = function (file) {
    var zone = root().querySelector(".lora-core-recipe-zone");
    if (zone && file) {
      sendPicture(zone, file);
    }
  };

  ["dragenter", "dragover"].forEach(function (kind) {
    document.addEventListener(kind, function (ev) {
      var t = eventTarget(ev);
      var zone = t && t.closest ? t.closest(".lora-core-recipe-zone") : null;
      if (zone) {
        ev.preventDefault();
        zone.classList.add("lora-core-recipe-over");
      }
    });
  });
  document.addEventListener("dragleave", function (ev) {
    var t = eventTarget(ev);
    var zone = t && t.closest ? t.closest(".lora-core-recipe-zone") : null;
    if (zone) {
      zone.classList.remove("lora-core-recipe-over");
    }
  });
  // A picture dropped on the txt2img prompt of the standalone app (A1111 and Forge, which define
  // gradioApp(), read dropped pictures themselves): the recipe fills the prompt, and the LoRA tab's
  // drop zone shows the LoRAs (with downloads for the missing ones).
  function pictureOnPrompt(ev) {
    if (typeof window.gradioApp === "function") {
      return null;
    }
    var t = eventTarget(ev);
    var box = t && t.closest ? t.closest("#txt2img_prompt") : null;
    var files = ev.dataTransfer && ev.dataTransfer.files;
    var types = ev.dataTransfer && ev.dataTransfer.types ? Array.prototype.slice.call(ev.dataTransfer.types) : [];
    if (!box || types.indexOf("Files") < 0) {
      return null;
    }
    return files && files.length && /^image\//.test(files[0].type || "image/") ? files[0] : true;
  }
  document.addEventListener("dragover", function (ev) {
    if (pictureOnPrompt(ev)) {
      ev.preventDefault();
    }
  });
  document.addEventListener("drop", function (ev) {
    var file = pictureOnPrompt(ev);
    var zone = root().querySelector(".lora-core-recipe-zone");
    if (file && file !== true && zone) {
      ev.preventDefault();
      ev.stopPropagation();
      sendPicture(zone, file, true);
    }
  }, true);
  document.addEventListener("drop", function (ev) {
    var t = eventTarget(ev);
    var zone = t && t.closest ? t.closest(".lora-core-recipe-zone") : null;
    if (!zone) {
      return;
    }
    ev.preventDefault();
    ev.stopPropagation();
    zone.classList.remove("lora-core-recipe-over");
    var files = ev.dataTransfer && ev.dataTransfer.files;
    if (files && files.length) {
      sendPicture(zone, files[0]);
    }
  });
  document.addEventListener("change", function (ev) {
    var t = eventTarget(ev);
    if (t && t.classList && t.classList.contains("lora-core-recipe-file") && t.files && t.files.length) {
      sendPicture(t.closest(".lora-core-recipe-zone"), t.files[0]);
      t.value = "";
    }
  });

  // -- duplicates and updates ----------------------------------------------------------------------------
  function toolsBox(from) {
    return from.closest(".lora-core-tools") || root().querySelector(".lora-core-tools");
  }

  function setStatus(box, text) {
    var s = box.querySelector(".lora-core-tools-status");
    clear(s);
    s.textContent = text;
    return s;
  }

  function showDuplicates(box) {
    var list = box.querySelector(".lora-core-dupes-list");
    return fetch(apiUrl("/duplicates"), { credentials: "same-origin" })
      .then(json)
      .then(function (data) {
        clear(list);
        var groups = data.groups || [];
        var head = groups.length ? groups.length + " file(s) stored more than once." : "No duplicates found.";
        if (data.unhashed) {
          head += " " + data.unhashed + " file(s) are still being hashed: look again in a moment.";
        }
        list.appendChild(el("div", "lora-core-dupes-head", head));
        groups.forEach(function (g) {
          var group = el("div", "lora-core-dupes-group");
          group.setAttribute("data-sha256", g.sha256 || "");
          group.appendChild(
            el("div", "lora-core-dupes-title", (g.items || []).length + " copies, " + size(g.size) + ", SHA256 " + String(g.sha256 || "").slice(0, 12))
          );
          (g.items || []).forEach(function (it) {
            var row = el("div", "lora-core-dupes-item");
            row.appendChild(el("span", "lora-core-dupes-path", it.path));
            if (it.has_metadata) {
              row.appendChild(el("span", "lora-core-dupes-meta", " (has metadata)"));
            }
            row.appendChild(button("lora-core-dupes-keep", "Keep this one", { "data-path": it.path }));
            group.appendChild(row);
          });
          list.appendChild(group);
        });
        (data.batches || []).forEach(function (b) {
          var row = el("div", "lora-core-dupes-batch", "Moved " + b.files + " cop" + (b.files === 1 ? "y" : "ies") + " to the trash, kept " + b.kept + " ");
          row.appendChild(button("lora-core-dupes-undo", "Undo", { "data-batch": b.id }));
          list.appendChild(row);
        });
      })
      .catch(function (e) {
        setStatus(box, "Could not list duplicates: " + e.message);
      });
  }

  function showUpdates(box) {
    var list = box.querySelector(".lora-core-updates-list");
    return fetch(apiUrl("/updates"), { credentials: "same-origin" })
      .then(json)
      .then(function (data) {
        clear(list);
        var items = data.items || [];
        list.appendChild(
          el("div", "lora-core-updates-head", items.length ? items.length + " LoRA(s) have a newer version on Civitai." : "No newer versions known (check Civitai first).")
        );
        items.forEach(function (u) {
          var row = el("div", "lora-core-updates-item");
          row.appendChild(el("span", "lora-core-updates-path", u.path));
          row.appendChild(el("span", null, " → " + (u.latest_name || "version " + u.latest_version_id) + " "));
          row.appendChild(button("lora-core-recipe-download", "Download", { "data-source": u.download }));
          if (/^https?:\/\//i.test(u.link || "")) {
            var a = el("a", "lora-core-civitai-link", "page");
            a.href = u.link;
            a.target = "_blank";
            a.rel = "noopener noreferrer nofollow";
            row.appendChild(a);
          }
          list.appendChild(row);
        });
        return data.status || {};
      })
      .catch(function (e) {
        setStatus(box, "Could not list updates: " + e.message);
        return {};
      });
  }

  function pollUpdates(box) {
    var tries = 0;
    function tick() {
      showUpdates(box).then(function (st) {
        setStatus(box, st.running ? "Checking Civitai: " + st.done + "/" + st.total + "…" : st.message || "");
        if (st.running && tries++ < 600) {
          setTimeout(tick, 1000);
        }
      });
    }
    tick();
  }

  // window capture: before lora_core.js's card click (document capture) inserts the tag
  window.addEventListener(
    "click",
    function (ev) {
      var t = eventTarget(ev);
      if (!t || !t.closest) {
        return;
      }
      var dl = t.closest(".lora-core-recipe-download, .lora-core-update");
      if (dl) {
        ev.preventDefault();
        ev.stopPropagation();
        download(dl, dl.getAttribute("data-source") || dl.getAttribute("data-lora-download") || "");
        return;
      }
      var zone = t.closest(".lora-core-recipe-zone");
      if (zone && !t.closest("input")) {
        var input = zone.querySelector(".lora-core-recipe-file");
        if (input) {
          input.click();
        }
        return;
      }
      var box;
      if (t.closest(".lora-core-dupes-find")) {
        box = toolsBox(t);
        setStatus(box, "");
        showDuplicates(box);
        return;
      }
      var keep = t.closest(".lora-core-dupes-keep");
      if (keep) {
        box = toolsBox(keep);
        keep.disabled = true;
        post("/duplicates/keep?path=" + encodeURIComponent(keep.getAttribute("data-path") || ""))
          .then(function (r) {
            setStatus(box, r.message || "");
            return showDuplicates(box);
          })
          .catch(function (e) {
            keep.disabled = false;
            setStatus(box, "Could not move the copies: " + e.message);
          });
        return;
      }
      var undo = t.closest(".lora-core-dupes-undo");
      if (undo) {
        box = toolsBox(undo);
        undo.disabled = true;
        post("/duplicates/undo?batch=" + encodeURIComponent(undo.getAttribute("data-batch") || ""))
          .then(function (r) {
            setStatus(box, r.message || "");
            return showDuplicates(box);
          })
          .catch(function (e) {
            setStatus(box, "Could not undo: " + e.message);
          });
        return;
      }
      if (t.closest(".lora-core-updates-check")) {
        box = toolsBox(t);
        post("/updates/check")
          .then(function (st) {
            setStatus(box, st.message || "Checking Civitai…");
            if (st.accepted !== false || st.running) {
              pollUpdates(box);
            }
          })
          .catch(function (e) {
            setStatus(box, "Could not start the check: " + e.message);
          });
        return;
      }
      if (t.closest(".lora-core-updates-show")) {
        box = toolsBox(t);
        showUpdates(box);
      }
    },
    true
  );
})();
