// probewatch review: progressive enhancement only (every page works without it).
// - queue rows open their incident on click; filter menus apply on change;
// - heatmap probe tabs switch the visible heatmap; a tooltip shows a token's exact score on hover;
// - keyboard: j/k move through queue rows, Enter opens, 1/2/3 pick a verdict on an incident page.
(function () {
  "use strict";
  function each(selector, fn) { Array.prototype.forEach.call(document.querySelectorAll(selector), fn); }

  each("tr.row[data-href]", function (row) {
    row.addEventListener("click", function (e) {
      if (e.target.closest("a, button, input, select")) { return; }
      window.location.href = row.getAttribute("data-href");
    });
  });
  var filters = document.getElementById("filters");
  if (filters) {
    each("#filters select", function (s) { s.addEventListener("change", function () { filters.submit(); }); });
  }

  each(".probe-tab", function (tab) {
    tab.addEventListener("click", function () {
      each(".probe-tab", function (t) { t.classList.remove("active"); });
      each(".heatmap", function (h) { h.classList.add("hidden"); });
      tab.classList.add("active");
      var target = document.getElementById(tab.getAttribute("data-target"));
      if (target) { target.classList.remove("hidden"); }
    });
  });

  var tip = null;
  function showTip(tok, e) {
    if (!tip) { tip = document.createElement("div"); tip.id = "tip"; document.body.appendChild(tip); }
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
    tip.style.left = (e.clientX + 12) + "px";
    tip.style.top = (e.clientY + 14) + "px";
    tip.style.display = "block";
  }
  each(".tokens", function (box) {
    box.addEventListener("mousemove", function (e) {
      var tok = e.target.closest(".tok");
      if (tok) { showTip(tok, e); } else if (tip) { tip.style.display = "none"; }
    });
    box.addEventListener("mouseleave", function () { if (tip) { tip.style.display = "none"; } });
  });

  var rows = document.querySelectorAll("tr.row[data-href]");
  var at = -1;
  document.addEventListener("keydown", function (e) {
    if (e.target.closest("input, textarea, select")) { return; }
    if (rows.length && (e.key === "j" || e.key === "k")) {
      at = Math.max(0, Math.min(rows.length - 1, at + (e.key === "j" ? 1 : -1)));
      each("tr.row", function (r) { r.style.outline = ""; });
      rows[at].style.outline = "2px solid #0969da";
      rows[at].scrollIntoView({ block: "nearest" });
    } else if (rows.length && e.key === "Enter" && at >= 0) {
      window.location.href = rows[at].getAttribute("data-href");
    } else if (["1", "2", "3"].indexOf(e.key) >= 0) {
      var radios = document.querySelectorAll("#label-form input[name=label]");
      var r = radios[parseInt(e.key, 10) - 1];
      if (r) { r.checked = true; r.focus(); }
    }
  });
})();
