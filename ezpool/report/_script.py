"""The report's script, inline in the page: draws the task stream, the tasks finished over
time and the time split into SVG from the JSON the page embeds (``_model.chart_data``).

Text reaches the page only through ``textContent``, never as markup. Once a chart is
drawn, its section gets ``data-drawn="yes"`` and ``data-rects`` (how many rectangles),
which the browser tests read.
"""

from __future__ import annotations

__all__ = ["SCRIPT"]

SCRIPT = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("report-data").textContent);
var NS = "http://www.w3.org/2000/svg";
var C = {ok: "#4c78a8", failed: "#e45756", "start-up": "#b279a2", transfer: "#f2a93b",
         backup: "#54a24b", lost: "#333333", waiting: "#e8e8e8", working: "#4c78a8"};
var LEFT = 190, RIGHT = 40;

function el(tag, attrs, parent) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs) { e.setAttribute(k, attrs[k]); }
  if (parent) { parent.appendChild(e); }
  return e;
}
function tip(e, text) { el("title", {}, e).textContent = text; }
function text(parent, x, y, s, attrs) {
  var t = el("text", attrs || {}, parent);
  t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = s;
  return t;
}
function fmt(s) {
  var a = Math.abs(s);
  if (a === 0) { return "0 s"; }
  if (a < 1e-3) { return (s * 1e6).toFixed(0) + " µs"; }
  if (a < 1) { return (s * 1e3).toFixed(a < 0.01 ? 2 : 1) + " ms"; }
  if (a < 120) { return s.toFixed(a < 10 ? 3 : 1) + " s"; }
  return Math.floor(s / 60) + " min " + (s % 60).toFixed(0) + " s";
}
function step(max, px) {
  var raw = max / Math.max(1, px / 90), p = Math.pow(10, Math.floor(Math.log10(raw)));
  var m = raw / p;
  return p * (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10);
}
function axis(svg, x0, w, y, max, height) {
  var s = step(max, w), k = w / max;
  el("line", {x1: x0, x2: x0 + w, y1: y, y2: y, "class": "axis"}, svg);
  for (var t = 0; t <= max * 1.0001; t += s) {
    var x = x0 + t * k;
    el("line", {x1: x, x2: x, y1: y, y2: y + 4, "class": "axis"}, svg);
    if (height) { el("line", {x1: x, x2: x, y1: y - height, y2: y, "class": "grid"}, svg); }
    text(svg, x, y + 15, fmt(t), {"text-anchor": "middle", "class": "tick"});
  }
}
function clear(id) {
  var box = document.getElementById(id).querySelector(".chart");
  while (box.firstChild) { box.removeChild(box.firstChild); }
  return box;
}
function done(id, rects) {
  var s = document.getElementById(id);
  s.setAttribute("data-rects", String(rects));
  s.setAttribute("data-drawn", "yes");
}
function width(box) { return Math.max(480, box.clientWidth || 960); }
function label(svg, y, row) {
  var t = text(svg, LEFT - 8, y, D.workers[row][0], {"text-anchor": "end", "class": "label"});
  tip(t, D.workers[row][1]);
}

function timeline() {
  var box = clear("timeline"), W = width(box), w = W - LEFT - RIGHT, k = w / D.wall;
  var ROW = 22, LANE = 14, rows = D.workers.length, H = rows * ROW + 30, n = 0;
  var svg = el("svg", {width: W, height: H, "class": "timeline"}, box);
  for (var r = 0; r < rows; r++) {
    el("rect", {x: LEFT, y: r * ROW + 2, width: w, height: ROW - 3, "class": "row"}, svg);
    label(svg, r * ROW + 13, r);
  }
  if (D.runs) {
    D.runs.forEach(function (u) {
      var x = LEFT + u[1] * k, rw = Math.max(0.8, (u[2] - u[1]) * k);
      var rect = el("rect", {x: x, y: u[0] * ROW + 2, width: rw, height: LANE,
                             fill: u[5] ? C.failed : C.ok, "class": u[5] ? "run bad" : "run"}, svg);
      tip(rect, "task " + u[4] + "\nattempt " + u[3] + "\n" + fmt(u[2] - u[1]) +
          " from " + fmt(u[1]) + " on " + D.workers[u[0]][1] + (u[5] ? "\nfailed: " + u[5] : ""));
      n++;
    });
  } else {
    var bw = w / D.bins, per = D.wall / D.bins;
    D.bars.forEach(function (flat, r) {
      for (var i = 0; i < flat.length; i += 4) {
        var rect = el("rect", {x: LEFT + flat[i] * bw, y: r * ROW + 2, width: flat[i + 1] * bw,
                               height: LANE, fill: C.ok, "class": "run",
                               "fill-opacity": (0.15 + 0.085 * flat[i + 2]).toFixed(2)}, svg);
        tip(rect, D.workers[r][1] + "\n" + fmt(flat[i] * per) + " to " +
            fmt((flat[i] + flat[i + 1]) * per) + ": busy " + flat[i + 2] * 10 + "%, " +
            flat[i + 3] + " tasks ended");
        n++;
      }
    });
    D.fails.forEach(function (flat, r) {
      for (var i = 0; i < flat.length; i += 4) {
        var fh = Math.max(3, LANE * flat[i + 2] / 10);
        var rect = el("rect", {x: LEFT + flat[i] * bw, y: r * ROW + 2 + LANE - fh,
                               width: Math.max(1, flat[i + 1] * bw), height: fh, fill: C.failed,
                               "class": "run bad"}, svg);
        tip(rect, D.workers[r][1] + "\n" + fmt(flat[i] * per) + " to " +
            fmt((flat[i] + flat[i + 1]) * per) + ": " + flat[i + 3] + " tasks failed (up to " +
            flat[i + 2] * 10 + "% of those that ended)");
        n++;
      }
    });
  }
  D.spans.forEach(function (s) {
    var kind = D.kinds[s[1]];
    var rect = el("rect", {x: LEFT + s[2] * k, y: s[0] * ROW + 2 + LANE + 1,
                           width: Math.max(0.8, (s[3] - s[2]) * k), height: ROW - LANE - 4,
                           fill: C[kind], "class": "span"}, svg);
    tip(rect, kind + (s[4] > 1 ? " \u00d7" + s[4] : "") + ": " + fmt(s[3] - s[2]) + " from " +
        fmt(s[2]) + (s[5] ? "\n" + s[5] : ""));
    n++;
  });
  axis(svg, LEFT, w, rows * ROW + 4, D.wall, 0);
  done("timeline", n);
}

function throughput() {
  var box = clear("throughput"), W = width(box), w = W - LEFT - RIGHT, H = 170, h = 130;
  var svg = el("svg", {width: W, height: H}, box), ok = D.done.ok, bad = D.done.failed;
  var top = Math.max(1, ok[ok.length - 1]), k = w / ok.length;
  function path(values) {
    var p = "M" + LEFT + "," + (h + 6);
    values.forEach(function (v, i) {
      p += "L" + (LEFT + (i + 1) * k).toFixed(1) + "," + (h + 6 - v / top * h).toFixed(1);
    });
    return p;
  }
  el("path", {d: path(ok) + "L" + (LEFT + w) + "," + (h + 6) + "Z", fill: C.ok,
              "fill-opacity": "0.25", stroke: "none"}, svg);
  el("path", {d: path(ok), fill: "none", stroke: C.ok, "stroke-width": 2, "class": "done"}, svg);
  el("path", {d: path(bad), fill: "none", stroke: C.failed, "stroke-width": 2, "class": "failed"}, svg);
  text(svg, LEFT - 8, 12, String(top), {"text-anchor": "end", "class": "tick"});
  text(svg, LEFT - 8, h + 6, "0", {"text-anchor": "end", "class": "tick"});
  text(svg, LEFT - 8, h / 2, "tasks finished", {"text-anchor": "end", "class": "label"});
  axis(svg, LEFT, w, h + 8, D.wall, h);
  done("throughput", 0);
}

function split() {
  var box = clear("split"), W = width(box), w = W - LEFT - 170, ROW = 20, n = 0;
  var parts = ["start-up", "working", "transfer", "waiting"], rows = D.split.length;
  var svg = el("svg", {width: W, height: rows * ROW + 8}, box), top = 0;
  D.split.forEach(function (s) { top = Math.max(top, s[0] + s[1] + s[2] + s[3]); });
  var k = w / Math.max(top, 1e-9);
  D.split.forEach(function (s, r) {
    var x = LEFT, all = s[0] + s[1] + s[2] + s[3];
    label(svg, r * ROW + 14, r);
    parts.forEach(function (part, i) {
      var rw = s[i] * k;
      if (rw <= 0) { return; }
      var rect = el("rect", {x: x, y: r * ROW + 3, width: rw, height: ROW - 5, fill: C[part],
                             "class": "part " + part}, svg);
      tip(rect, D.workers[r][1] + "\n" + part + ": " + fmt(s[i]) + " (" +
          (all ? (100 * s[i] / all).toFixed(1) : "0") + "%)");
      x += rw; n++;
    });
    text(svg, LEFT + w + 8, r * ROW + 14, s[4] + " tasks" + (s[5] ? ", " + s[5] + " failed" : ""),
         {"class": s[5] ? "label bad" : "label"});
  });
  done("split", n);
}

function draw() { timeline(); throughput(); split(); }
draw();
var pending = null;
window.addEventListener("resize", function () {
  clearTimeout(pending);
  pending = setTimeout(draw, 150);
});
})();
"""
