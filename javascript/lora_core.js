// lora_core: LoRA tab behaviour in the page. Loaded as is by AUTOMATIC1111 (javascript/*.js) and by
// the standalone app (served from /lora_core/static/lora_core.js). Works with the gradio 3.41 DOM
// (A1111) and the gradio 6 DOM (standalone): it only relies on elem_ids and on textareas inside them.
//
// * Clicking a card (.lora-core-card[data-lora-tag]) toggles "<lora:alias:weight>, trigger words"
//   in the prompt box that last had focus (txt2img_prompt / img2img_prompt), then fires an `input`
//   event so gradio's state follows the textarea.
// * Card buttons ☆ and ⓘ are relayed to Python through a hidden textbox + button (see ui/tab.py).
// * Typing "<lora:" in a prompt box opens suggestions (name, thumbnail) from lora_core/api/suggest
//   (under the app's root, which is not the server's behind --subpath).
//
// Every string taken from the page's data-* attributes or from the suggest route is untrusted: it
// goes into the DOM only through textContent / value / attribute properties, never innerHTML.
(function () {
  "use strict";
  if (window.__loraCoreLoaded) {
    return;
  }
  window.__loraCoreLoaded = true;

  var PROMPT_IDS = ["txt2img_prompt", "img2img_prompt"];
  var ALL_PROMPT_IDS = PROMPT_IDS.concat(["txt2img_neg_prompt", "img2img_neg_prompt"]);
  var API_PATH = "lora_core/api";
  var lastPrompt = null;

  function root() {
    // A1111 defines gradioApp(); gradio may render into a shadow root of <gradio-app>.
    try {
      if (typeof window.gradioApp === "function") {
        return window.gradioApp();
      }
    } catch (e) {
      /* fall through */
    }
    var app = document.querySelector("gradio-app");
    if (app && app.shadowRoot) {
      return app.shadowRoot;
    }
    return document;
  }

  // Where the JSON routes are. Behind A1111's --subpath or a reverse proxy the UI is not at the
  // server's root, so an absolute "/lora_core/api" would miss: gradio publishes the app's root
  // (gradio_config.root); without it, the page's own URL is the app's root. Exposed as
  // window.loraCoreAppUrl for the other scripts of javascript/ (this file runs before them in
  // both hosts: A1111 loads the folder in name order, the standalone page loads them from here).
  function appUrl(path) {
    var base = null;
    try {
      var cfg = window.gradio_config;
      if (cfg && typeof cfg.root === "string" && cfg.root) {
        base = cfg.root.replace(/\/*$/, "/");
      }
    } catch (e) {
      /* fall through */
    }
    try {
      return new URL(path, base || document.baseURI || window.location.href).href;
    } catch (e) {
      return "/" + path;
    }
  }
  window.loraCoreAppUrl = appUrl;

  // An element holding `text` as text (never parsed as markup: server strings come from files and
  // Civitai), for the companion scripts.
  window.loraCoreElement = function (tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) {
      node.className = cls;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  };
  window.loraCoreRoot = root; // where gradio put the page (A1111's gradioApp(), a shadow root, the document)

  function apiUrl(route) {
    return appUrl(API_PATH + route);
  }

  function byId(id) {
    var r = root();
    return (r.getElementById ? r.getElementById(id) : null) || r.querySelector("#" + id) || document.getElementById(id);
  }

  function textareaOf(id) {
    var el = byId(id);
    if (!el) {
      return null;
    }
    if (el.tagName === "TEXTAREA" || el.tagName === "INPUT") {
      return el;
    }
    return el.querySelector("textarea") || el.querySelector("input");
  }

  function promptIdOf(textarea, ids) {
    for (var i = 0; i < ids.length; i++) {
      var holder = byId(ids[i]);
      if (holder && (holder === textarea || holder.contains(textarea))) {
        return ids[i];
      }
    }
    return null;
  }

  function isVisible(el) {
    return !!(el && (el.offsetWidth || el.offsetHeight || el.getClientRects().length));
  }

  function targetPrompt() {
    if (lastPrompt && lastPrompt.isConnected) {
      return lastPrompt;
    }
    // Nothing focused yet: the first visible prompt box (the active tab's), else the first one.
    var first = null;
    for (var i = 0; i < PROMPT_IDS.length; i++) {
      var ta = textareaOf(PROMPT_IDS[i]);
      if (ta && !first) {
        first = ta;
      }
      if (ta && isVisible(ta)) {
        return ta;
      }
    }
    return first;
  }

  function fireInput(el) {
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function escapeRegExp(s) {
    return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  // Join prompt pieces with ", " and tidy the separators a removal leaves behind.
  function tidy(text) {
    return text
      .replace(/[ \t]+,/g, ",")
      .replace(/,(\s*,)+/g, ",")
      .replace(/^[\s,]+/, "")
      .replace(/[\s,]+$/, "")
      .replace(/[ \t]{2,}/g, " ");
  }

  function appendPiece(text, piece) {
    var t = text.replace(/\s+$/, "");
    if (!t) {
      return piece;
    }
    return /,$/.test(t) ? t + " " + piece : t + ", " + piece;
  }

  // Toggle a LoRA in the prompt text. Returns the new text.
  function toggleLora(text, name, tag, triggers) {
    var tagRe = new RegExp("<(?:lora|lyco):" + escapeRegExp(name) + "(?::[^>]*)?>", "gi");
    if (tagRe.test(text)) {
      var out = text.replace(tagRe, "");
      if (triggers) {
        out = out.split(triggers).join("");
      }
      return tidy(out);
    }
    var piece = triggers ? tag + ", " + triggers : tag;
    return appendPiece(text, piece);
  }
  window.loraCoreToggleLora = toggleLora; // exposed for tests and other extensions

  function setPromptText(ta, text) {
    ta.value = text;
    fireInput(ta);
    try {
      ta.focus();
      ta.setSelectionRange(text.length, text.length);
    } catch (e) {
      /* not focusable: fine */
    }
  }

  // A short note at the bottom of the window: a card click edits a prompt box that is usually on
  // another tab, so say what changed where. textContent only (names are untrusted).
  var toast = null;
  var toastTimer = null;
  function notify(text) {
    if (!toast || !toast.isConnected) {
      toast = document.createElement("div");
      toast.className = "lora-core-toast";
      toast.setAttribute("role", "status");
      toast.setAttribute("aria-live", "polite");
      document.body.appendChild(toast);
    }
    toast.textContent = text;
    toast.classList.add("lora-core-toast-shown");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      toast.classList.remove("lora-core-toast-shown");
    }, 5000);
  }

  function promptName(ta) {
    var id = promptIdOf(ta, PROMPT_IDS);
    return (id ? id.replace(/_prompt$/, "") + " " : "") + "prompt";
  }

  function onCardClick(card) {
    var tag = card.getAttribute("data-lora-tag");
    if (!tag) {
      return; // error entries carry no tag
    }
    var ta = targetPrompt();
    if (!ta) {
      return;
    }
    var name = card.getAttribute("data-lora-name") || "";
    var triggers = card.getAttribute("data-lora-triggers") || "";
    var had = new RegExp("<(?:lora|lyco):" + escapeRegExp(name) + "(?::[^>]*)?>", "i").test(ta.value);
    setPromptText(ta, toggleLora(ta.value, name, tag, triggers));
    if (had) {
      notify("Removed <lora:" + name + "> from the " + promptName(ta) + ".");
    } else {
      notify("Added " + (triggers ? tag + ", " + triggers : tag) + " to the " + promptName(ta) + ".");
    }
  }

  function sendAction(action, key, extra) {
    var box = textareaOf("lora_core_action");
    var holder = byId("lora_core_action_btn");
    var button = holder && (holder.tagName === "BUTTON" ? holder : holder.querySelector("button"));
    if (!box || !button) {
      return;
    }
    // The nonce makes every click a change, even on the same card twice.
    var msg = { action: action, key: key, nonce: Date.now() + Math.random() };
    if (extra) {
      for (var k in extra) {
        if (Object.prototype.hasOwnProperty.call(extra, k)) {
          msg[k] = extra[k];
        }
      }
    }
    box.value = JSON.stringify(msg);
    fireInput(box);
    // Let gradio read the new value before the click event is sent.
    setTimeout(function () {
      button.click();
    }, 50);
  }

  function addTrainingTag(tag) {
    var ta = textareaOf("lora_core_edit_activation");
    if (!ta) {
      return;
    }
    var existing = ta.value.split(",").map(function (s) {
      return s.trim();
    });
    if (existing.indexOf(tag) >= 0) {
      return;
    }
    ta.value = appendPiece(ta.value, tag);
    fireInput(ta);
  }

  // Add every tag of a saved stack that the prompt does not already name (one click, one input event).
  function insertTags(text, tagsText) {
    var tags = tagsText.match(/<(?:lora|lyco):[^<>]+>/gi) || [];
    var out = text;
    tags.forEach(function (tag) {
      var name = /^<(?:lora|lyco):([^:>]*)/i.exec(tag)[1];
      var re = new RegExp("<(?:lora|lyco):" + escapeRegExp(name) + "(?::[^>]*)?>", "i");
      if (!re.test(out)) {
        out = appendPiece(out, tag);
      }
    });
    return out;
  }
  window.loraCoreInsertTags = insertTags; // exposed for tests

  function insertStack(tagsText) {
    var ta = targetPrompt();
    if (ta) {
      var before = ta.value;
      var after = insertTags(before, tagsText);
      setPromptText(ta, after);
      var added = after.length > before.length ? after.slice(before.replace(/\s+$/, "").length).replace(/^[\s,]+/, "") : "";
      notify(added ? "Added " + added + " to the " + promptName(ta) + "." : "The " + promptName(ta) + " already has these LoRAs.");
    }
  }

  function searchFor(text) {
    var box = textareaOf("lora_core_search");
    var holder = byId("lora_core_search_btn");
    var button = holder && (holder.tagName === "BUTTON" ? holder : holder.querySelector("button"));
    if (!box || !button) {
      return;
    }
    box.value = text;
    fireInput(box);
    setTimeout(function () {
      button.click();
    }, 50);
  }

  // While a background Civitai fetch runs, show its progress (JSON route) and refresh the grid at the end.
  var civitaiPolling = false;
  function pollCivitai() {
    if (civitaiPolling) {
      return;
    }
    civitaiPolling = true;
    var sawRunning = false;
    function tick() {
      fetch(apiUrl("/civitai/status"), { credentials: "same-origin" })
        .then(function (r) {
          return r.ok ? r.json() : null;
        })
        .then(function (st) {
          if (!st) {
            civitaiPolling = false;
            return;
          }
          var holder = byId("lora_core_civitai_progress");
          var line = holder && holder.querySelector(".lora-core-civitai-progress");
          if (line && typeof st.text === "string") {
            line.textContent = st.text;
          }
          if (st.running) {
            sawRunning = true;
            setTimeout(tick, 1000);
            return;
          }
          civitaiPolling = false;
          if (sawRunning) {
            var b = byId("lora_core_search_btn");
            var btn = b && (b.tagName === "BUTTON" ? b : b.querySelector("button"));
            if (btn) {
              btn.click(); // redraw cards: trigger words, previews
            }
          }
        })
        .catch(function () {
          civitaiPolling = false;
        });
    }
    setTimeout(tick, 600);
  }

  function eventTarget(ev) {
    // Events from inside a shadow root are retargeted; the composed path has the real element.
    var path = ev.composedPath ? ev.composedPath() : null;
    var t = path && path.length ? path[0] : ev.target;
    return t && t.nodeType === 1 ? t : t && t.parentElement;
  }

  document.addEventListener(
    "click",
    function (ev) {
      var t = eventTarget(ev);
      if (!t || !t.closest) {
        return;
      }
      var chip = t.closest(".lora-core-train-tag");
      if (chip) {
        ev.preventDefault();
        addTrainingTag(chip.getAttribute("data-tag") || "");
        return;
      }
      var stackSave = t.closest("#lora_core_stack_save");
      if (stackSave) {
        ev.preventDefault();
        ev.stopPropagation();
        var nameBox = textareaOf("lora_core_stack_name");
        var prompt = targetPrompt();
        sendAction("stack_save", nameBox ? nameBox.value : "", { prompt: prompt ? prompt.value : "" });
        return;
      }
      if (t.closest("#lora_core_civitai_all")) {
        pollCivitai(); // the click itself still goes to gradio, which starts the fetch
        return;
      }
      var insert = t.closest(".lora-core-stack-insert");
      if (insert) {
        ev.preventDefault();
        insertStack(insert.getAttribute("data-stack-tags") || "");
        return;
      }
      var del = t.closest(".lora-core-stack-delete");
      if (del) {
        ev.preventDefault();
        sendAction("stack_delete", del.getAttribute("data-stack-name") || "");
        return;
      }
      var removeTag = t.closest(".lora-core-user-tag-remove");
      if (removeTag) {
        ev.preventDefault();
        var details = removeTag.closest(".lora-core-details");
        sendAction("tag_remove", details ? details.getAttribute("data-lora-key") || "" : "", {
          tag: removeTag.getAttribute("data-tag") || "",
        });
        return;
      }
      var blurred = t.closest(".lora-core-blur");
      if (blurred) {
        // First click on a blurred (NSFW) preview only reveals it; it does not insert the tag.
        ev.preventDefault();
        ev.stopPropagation();
        blurred.classList.remove("lora-core-blur");
        blurred.classList.add("lora-core-revealed");
        return;
      }
      var userTag = t.closest(".lora-core-user-tag");
      if (userTag) {
        ev.preventDefault();
        ev.stopPropagation();
        searchFor(userTag.getAttribute("data-tag") || "");
        return;
      }
      var card = t.closest(".lora-core-card");
      if (!card) {
        return;
      }
      var key = card.getAttribute("data-lora-key") || "";
      if (t.closest(".lora-core-fav-btn")) {
        ev.preventDefault();
        sendAction("fav", key);
        return;
      }
      if (t.closest(".lora-core-info-btn")) {
        ev.preventDefault();
        sendAction("details", key);
        return;
      }
      onCardClick(card);
    },
    true
  );

  document.addEventListener(
    "keydown",
    function (ev) {
      var t = eventTarget(ev);
      if (ev.key === "Enter" && t && t.classList && t.classList.contains("lora-core-card")) {
        ev.preventDefault();
        onCardClick(t);
      }
    },
    true
  );

  document.addEventListener(
    "focusin",
    function (ev) {
      var t = eventTarget(ev);
      if (t && t.tagName === "TEXTAREA" && promptIdOf(t, PROMPT_IDS)) {
        lastPrompt = t;
      }
    },
    true
  );

  // ---- autocomplete for "<lora:" ------------------------------------------------------------
  var popup = null;
  var popupFor = null;
  var items = [];
  var active = 0;
  var pending = null;
  var requestSeq = 0;

  function closePopup() {
    if (popup) {
      popup.remove();
    }
    popup = null;
    popupFor = null;
    items = [];
  }

  function partialAtCaret(ta) {
    var before = ta.value.slice(0, ta.selectionStart);
    var m = /<(lora|lyco):([^<>:,\n]*)$/i.exec(before);
    return m ? { start: before.length - m[0].length, query: m[2], kind: m[1].toLowerCase() } : null;
  }

  function formatWeight(w) {
    var n = Number(w);
    if (!isFinite(n) || n === 0) {
      n = 1;
    }
    return String(Math.round(n * 1000) / 1000);
  }

  function choose(ta, item) {
    var p = partialAtCaret(ta);
    if (!p) {
      closePopup();
      return;
    }
    var tag = "<" + p.kind + ":" + item.tag_name + ":" + formatWeight(item.preferred_weight) + ">";
    var after = ta.value.slice(ta.selectionStart);
    // Swallow the rest of a half-typed tag after the caret ("<lora:ab|c:1>").
    var rest = /^[^<>\s,]*(:[^<>]*)?>/.exec(after);
    if (rest) {
      after = after.slice(rest[0].length);
    }
    var text = ta.value.slice(0, p.start) + tag + after;
    ta.value = text;
    var caret = p.start + tag.length;
    ta.setSelectionRange(caret, caret);
    fireInput(ta);
    closePopup();
  }

  function renderPopup(ta) {
    if (!items.length) {
      closePopup();
      return;
    }
    if (!popup) {
      popup = document.createElement("div");
      popup.className = "lora-core-suggest";
      popup.setAttribute("role", "listbox");
      document.body.appendChild(popup);
    }
    popupFor = ta;
    popup.textContent = "";
    items.forEach(function (item, i) {
      var row = document.createElement("div");
      row.className = "lora-core-suggest-item" + (i === active ? " lora-core-suggest-active" : "");
      row.setAttribute("role", "option");
      if (item.thumbnail) {
        var img = document.createElement("img");
        img.src = item.thumbnail;
        img.alt = "";
        img.loading = "lazy";
        row.appendChild(img);
      } else {
        var ph = document.createElement("span");
        ph.className = "lora-core-suggest-noimg";
        row.appendChild(ph);
      }
      var label = document.createElement("span");
      label.className = "lora-core-suggest-name";
      label.textContent = item.alias || item.name;
      row.appendChild(label);
      if (item.family) {
        var fam = document.createElement("span");
        fam.className = "lora-core-suggest-family";
        fam.textContent = item.family;
        row.appendChild(fam);
      }
      row.addEventListener("mousedown", function (ev) {
        ev.preventDefault(); // keep focus in the textarea
        choose(ta, item);
      });
      popup.appendChild(row);
    });
    var rect = ta.getBoundingClientRect();
    popup.style.left = window.scrollX + rect.left + "px";
    popup.style.top = window.scrollY + rect.bottom + 2 + "px";
    popup.style.minWidth = Math.min(rect.width, 420) + "px";
  }

  function suggest(ta) {
    var p = partialAtCaret(ta);
    if (!p) {
      closePopup();
      return;
    }
    var seq = ++requestSeq;
    var url = apiUrl("/suggest?limit=12&q=" + encodeURIComponent(p.query));
    fetch(url, { credentials: "same-origin" })
      .then(function (r) {
        return r.ok ? r.json() : { items: [] };
      })
      .then(function (data) {
        if (seq !== requestSeq) {
          return; // a newer keystroke won
        }
        items = (data && Array.isArray(data.items) ? data.items : []).filter(function (it) {
          return it && typeof it.tag_name === "string";
        });
        active = 0;
        renderPopup(ta);
      })
      .catch(function () {
        closePopup();
      });
  }

  document.addEventListener(
    "input",
    function (ev) {
      var t = eventTarget(ev);
      if (!t || t.tagName !== "TEXTAREA" || !promptIdOf(t, ALL_PROMPT_IDS)) {
        return;
      }
      if (!ev.isTrusted) {
        return; // our own synthetic events (insertions) must not reopen the popup
      }
      clearTimeout(pending);
      pending = setTimeout(function () {
        suggest(t);
      }, 120);
    },
    true
  );

  document.addEventListener(
    "keydown",
    function (ev) {
      if (!popup || !items.length) {
        return;
      }
      var t = eventTarget(ev);
      if (t !== popupFor) {
        return;
      }
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        active = (active + (ev.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
        renderPopup(t);
      } else if (ev.key === "Enter" || ev.key === "Tab") {
        choose(t, items[active]);
      } else if (ev.key === "Escape") {
        closePopup();
      } else {
        return;
      }
      ev.preventDefault();
      ev.stopPropagation();
    },
    true
  );

  document.addEventListener(
    "focusout",
    function (ev) {
      if (popup && eventTarget(ev) === popupFor) {
        setTimeout(closePopup, 150);
      }
    },
    true
  );
})();

// The Download box's and the library tools' scripts (javascript/lora_core_downloads.js,
// lora_core_library_tools.js): A1111 loads every file in javascript/ by itself, the standalone page
// only this one, so load them from here once (each file guards against a second run).
(function () {
  "use strict";
  [["lora_core_downloads.js", "__loraCoreDownloadsLoaded"],
   ["lora_core_library_tools.js", "__loraCoreLibraryToolsLoaded"]].forEach(function (item) {
    var file = item[0];
    if (window[item[1]] || document.querySelector('script[data-lora-core-script="' + file + '"]')) {
      return;
    }
    var s = document.createElement("script");
    s.setAttribute("data-lora-core-script", file);
    s.defer = true;
    s.src = window.loraCoreAppUrl("lora_core/static/" + file);
    (document.head || document.documentElement).appendChild(s);
  });
})();
