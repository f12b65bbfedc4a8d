// probewatch review: progressive enhancement only (every page works without it: the heatmap tabs are
// links the server answers, every token with a score is focusable with its score in its title).
// - queue rows open their generation on click; filter menus apply on change;
// - bulk: a select-all box over the page's rows, the selected count on the bulk bar;
// - heatmap probe tabs switch in place (arrow keys between tabs); a tooltip shows a token's exact score
//   on hover and on focus; the tokens become one Tab stop per heatmap, arrow keys move between them;
// - keyboard (shown by "?" and the hints on each page): j/k move focus through the queue's row links,
//   Enter opens, x selects, / searches; on a generation page 1/2/3 pick the verdict for every probe and
//   focus "Save, resolve & next" (Enter presses it), u goes back to the queue.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  function each(selector, fn) { Array.prototype.forEach.call(document.querySelectorAll(selector), fn); }

  each("tr.row[data-href]", function (row) {
    row.addEventListener("click", function (e) {
      if (e.target.closest("a, button, input, select, label")) { return; }
      window.location.href = row.getAttribute("data-href");
    });
  });
  var filters = document.getElementById("filters");
  if (filters) {
    each("#filters select", function (s) { s.addEventListener("change", function () { filters.submit(); }); });
  }

  // bulk selection
  var all = document.getElementById("select-all");
  var count = document.getElementById("selected-count");
  function picks() { return document.querySelectorAll("input.pick"); }
  function recount() {
    var n = document.querySelectorAll("input.pick:checked").length;
    if (count) { count.textContent = n + " selected"; }
    if (all) { all.checked = n > 0 && n === picks().length; all.indeterminate = n > 0 && n < picks().length; }
  }
  if (all) {
    all.addEventListener("change", function () {
      each("input.pick", function (p) { p.checked = all.checked; });
      recount();
    });
  }
  each("input.pick", function (p) { p.addEventListener("change", recount); });
  recount();

  // heatmap tabs (WAI-ARIA tabs): links to ?probe=ID without JavaScript; here they switch in place,
  // the selected tab is the only one in the Tab order and the arrow keys / Home / End move between them
  var tabs = document.querySelectorAll(".probe-tab");
  function select(tab, focus) {
    each(".probe-tab", function (t) {
      var on = t === tab;
      t.classList.toggle("active", on);
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.setAttribute("tabindex", on ? "0" : "-1");
      var panel = document.getElementById(t.getAttribute("aria-controls"));
      if (panel) { panel.classList.toggle("hidden", !on); }
    });
    if (focus) { tab.focus(); }
  }
  each(".probe-tab", function (tab, n) {
    tab.setAttribute("tabindex", tab.getAttribute("aria-selected") === "true" ? "0" : "-1");
    tab.addEventListener("click", function (e) { e.preventDefault(); select(tab, false); });
    tab.addEventListener("keydown", function (e) {
      var at = Array.prototype.indexOf.call(tabs, tab), to = -1;
      if (e.key === "ArrowRight" || e.key === "ArrowDown") { to = (at + 1) % tabs.length; }
      else if (e.key === "ArrowLeft" || e.key === "ArrowUp") { to = (at - 1 + tabs.length) % tabs.length; }
      else if (e.key === "Home") { to = 0; } else if (e.key === "End") { to = tabs.length - 1; }
      if (to >= 0) { select(tabs[to], true); e.preventDefault(); }
    });
  });

  var tip = null;
  function showTip(tok, x, y) {
    if (!tip) { tip = document.createElement("div"); tip.id = "tip"; tip.setAttribute("role", "status"); document.body.appendChild(tip); }
    var map = tok.closest(".heatmap");
    var score = tok.getAttribute("data-score");
    var thr = map ? parseFloat(map.getAttribute("data-threshold")) : NaN;
    var text = (map ? map.getAttribute("data-probe") + " · " : "") + "position " + tok.getAttribute("data-pos");
    if (score !== null) {
      var s = parseFloat(score);
      text += " · score " + (s >= 0 ? "+" : "") + s.toFixed(3);
      if (!isNaN(thr)) { text += (s >= thr ? " ≥ " : " < ") + "threshold " + thr.toFixed(3); }
    } else { text += " · not scored"; }
    tip.textContent = text;
    tip.style.left = Math.max(0, Math.min(x + 12, document.documentElement.clientWidth - 260)) + "px";
    tip.style.top = (y + 14) + "px";
    tip.style.display = "block";
  }
  function hideTip() { if (tip) { tip.style.display = "none"; } }
  each(".tokens", function (box) {
    box.addEventListener("mousemove", function (e) {
      var tok = e.target.closest(".tok");
      if (tok) { showTip(tok, e.clientX, e.clientY); } else { hideTip(); }
    });
    box.addEventListener("mouseleave", hideTip);
    // keyboard: one scored token per heatmap in the Tab order (roving tabindex), arrows move between them
    var scored = box.querySelectorAll(".tok[data-score]");
    var first = box.querySelector(".tok.hot[data-score]") || scored[0];
    Array.prototype.forEach.call(scored, function (t) { t.setAttribute("tabindex", t === first ? "0" : "-1"); });
    box.addEventListener("focusin", function (e) {
      var tok = e.target.closest(".tok");
      if (!tok) { return; }
      Array.prototype.forEach.call(scored, function (t) { t.setAttribute("tabindex", t === tok ? "0" : "-1"); });
      var r = tok.getBoundingClientRect();
      showTip(tok, r.left, r.bottom - 10);
    });
    box.addEventListener("focusout", hideTip);
    box.addEventListener("keydown", function (e) {
      var at = Array.prototype.indexOf.call(scored, e.target), to = -1;
      if (at < 0) { return; }
      if (e.key === "ArrowRight") { to = Math.min(scored.length - 1, at + 1); }
      else if (e.key === "ArrowLeft") { to = Math.max(0, at - 1); }
      else if (e.key === "Home") { to = 0; } else if (e.key === "End") { to = scored.length - 1; }
      if (to >= 0) { scored[to].focus(); e.preventDefault(); }
    });
  });

  // keyboard
  var help = document.getElementById("help");
  var before = null;
  function toggleHelp(show) {
    if (!help) { return; }
    if (show) { before = document.activeElement; help.classList.remove("hidden"); help.focus(); }
    else { help.classList.add("hidden"); if (before && before.focus) { before.focus(); } }
  }
  var close = document.getElementById("help-close");
  if (close) { close.addEventListener("click", function () { toggleHelp(false); }); }

  var links = document.querySelectorAll("tr.row a.open");
  function rowIndex() {
    var row = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr.row") : null;
    return row ? Array.prototype.indexOf.call(document.querySelectorAll("tr.row"), row) : -1;
  }
  function move(step) {
    var at = Math.max(0, Math.min(links.length - 1, rowIndex() + step));
    if (rowIndex() < 0 && step < 0) { at = 0; }
    links[at].focus();
    links[at].closest("tr").scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (e.key === "Escape" && help && !help.classList.contains("hidden")) { toggleHelp(false); return; }
    if (e.target.closest("input[type=text], input[type=search], input:not([type]), input[type=number], textarea, select")) { return; }
    if (e.key === "?") { toggleHelp(help && help.classList.contains("hidden")); e.preventDefault(); return; }
    if (links.length && (e.key === "j" || e.key === "k")) {
      move(e.key === "j" ? 1 : -1);
      e.preventDefault();
    } else if (links.length && e.key === "x" && rowIndex() >= 0) {
      var box = document.querySelectorAll("tr.row")[rowIndex()].querySelector("input.pick");
      if (box) { box.checked = !box.checked; recount(); }
    } else if (e.key === "/" && document.getElementById("search")) {
      document.getElementById("search").focus();
      e.preventDefault();
    } else if (e.key === "u" && document.getElementById("back")) {
      window.location.href = document.getElementById("back").getAttribute("href");
    } else if (["1", "2", "3"].indexOf(e.key) >= 0) {
      var n = parseInt(e.key, 10) - 1;
      var group = document.querySelectorAll("#review-form input[name=label_all]");
      var next = document.getElementById("save-next");
      if (group.length) {
        group[n].checked = true;
      } else {
        each("#review-form tbody tr[data-incident]", function (row) {
          var r = row.querySelectorAll("input[type=radio]")[n]; if (r) { r.checked = true; }
        });
      }
      var single = document.querySelectorAll("#label-form input[name=label]")[n];  // an incident page
      if (single) { single.checked = true; single.focus(); } else if (next) { next.focus(); }
      if (group.length || next || single) { e.preventDefault(); }
    }
  });
})();
