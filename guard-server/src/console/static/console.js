// guard console: the live queue (Server-Sent Events from /events) and the countdowns.
// Cards arrive rendered and escaped by the server; this script only places and removes them.
"use strict";

function duration(ms) {
  var s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor((s % 86400) / 3600)).padStart(2, "0") + "h";
}

function tick() {
  var now = Date.now();
  document.querySelectorAll("[data-until]").forEach(function (el) {
    var left = Number(el.getAttribute("data-until")) - now;
    el.textContent = left > 0 ? duration(left) : "now";
    el.classList.toggle("soon", left < 60000);
  });
  document.querySelectorAll("[data-since]").forEach(function (el) {
    el.textContent = duration(now - Number(el.getAttribute("data-since")));
  });
}

function parseCard(html) {
  var t = document.createElement("template");
  t.innerHTML = html;
  return t.content.firstElementChild;
}

function updateEmpty(queue) {
  var empty = document.getElementById("empty");
  if (empty) empty.hidden = queue.children.length > 0;
}

function place(queue, id, html) {
  var card = parseCard(html);
  if (!card) return;
  var old = document.getElementById("req-" + id);
  if (old) old.replaceWith(card); else queue.appendChild(card);
}

function live() {
  var queue = document.getElementById("queue");
  var badge = document.getElementById("live");
  if (!queue || !window.EventSource) return;
  var source = new EventSource("/events");
  source.onopen = function () { if (badge) { badge.textContent = "live"; badge.classList.add("on"); } };
  source.onerror = function () { if (badge) { badge.textContent = "reconnecting"; badge.classList.remove("on"); } };
  source.addEventListener("snapshot", function (e) {
    var data = JSON.parse(e.data);
    var keep = {};
    data.ids.forEach(function (id) { keep["req-" + id] = true; });
    Array.prototype.slice.call(queue.children).forEach(function (card) {
      if (!keep[card.id]) card.remove();
    });
    data.cards.forEach(function (c) { if (!document.getElementById("req-" + c.id)) place(queue, c.id, c.html); });
    updateEmpty(queue);
    tick();
  });
  var upsert = function (e) {
    var data = JSON.parse(e.data);
    place(queue, data.id, data.html);
    updateEmpty(queue);
    tick();
  };
  source.addEventListener("created", upsert);
  source.addEventListener("reviewed", upsert);
  source.addEventListener("decided", function (e) {
    var data = JSON.parse(e.data);
    var card = document.getElementById("req-" + data.id);
    if (card) card.remove();
    updateEmpty(queue);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  tick();
  setInterval(tick, 1000);
  live();
});
