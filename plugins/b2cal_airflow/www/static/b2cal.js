// Live reload of the parts of a page that change while work runs, and the dependency-aware picker.
"use strict";

function startLiveReload() {
  document.querySelectorAll("[data-live-url]").forEach(function (element) {
    var seconds = parseInt(element.getAttribute("data-live-seconds") || "5", 10);
    var timer = window.setInterval(function () {
      if (element.getAttribute("data-live") !== "on") { window.clearInterval(timer); return; }
      fetch(element.getAttribute("data-live-url"), { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var holder = document.createElement("div");
          holder.innerHTML = html;
          var fresh = holder.querySelector("[data-live-url]");
          if (fresh) {
            element.innerHTML = fresh.innerHTML;
            element.setAttribute("data-live", fresh.getAttribute("data-live"));
            element.setAttribute("data-updated", new Date().toISOString());
          }
        })
        .catch(function () { /* keep the last content; the next tick tries again */ });
    }, seconds * 1000);
  });
}

function closure(dependsOn, names) {
  var seen = {}, stack = names.slice();
  while (stack.length) {
    var name = stack.pop();
    if (seen[name]) { continue; }
    seen[name] = true;
    (dependsOn[name] || []).forEach(function (dep) { stack.push(dep); });
  }
  return seen;
}

function startPicker() {
  var holder = document.getElementById("calibration-picker");
  if (!holder) { return; }
  var dependsOn = JSON.parse(holder.getAttribute("data-depends"));
  var boxes = Array.prototype.slice.call(holder.querySelectorAll("input[name=calibrations]"));
  var note = document.getElementById("dependency-note");
  var byName = {};
  boxes.forEach(function (box) { byName[box.value] = box; });

  function dependents(name) {
    return boxes.filter(function (box) { return box.checked && closure(dependsOn, [box.value])[name] && box.value !== name; })
      .map(function (box) { return box.value; });
  }

  boxes.forEach(function (box) {
    box.addEventListener("change", function () {
      var messages = [];
      if (box.checked) {
        var needed = Object.keys(closure(dependsOn, [box.value])).filter(function (name) { return name !== box.value; });
        var added = needed.filter(function (name) { return byName[name] && !byName[name].checked; });
        added.forEach(function (name) {
          byName[name].checked = true;
          byName[name].closest(".calibration").classList.add("added");
        });
        if (added.length) { messages.push("Added " + added.join(", ") + ": " + box.value + " depends on " + (added.length > 1 ? "them" : "it") + "."); }
      } else {
        var users = dependents(box.value);
        if (users.length) {
          box.checked = true;
          messages.push(box.value + " stays chosen: " + users.join(", ") + " depend" + (users.length > 1 ? "" : "s") + " on it. Remove those first.");
        }
      }
      if (note) { note.textContent = messages.join(" "); }
    });
  });

  var all = document.getElementById("choose-all"), none = document.getElementById("choose-none");
  if (all) { all.addEventListener("click", function () { boxes.forEach(function (box) { box.checked = true; }); if (note) { note.textContent = ""; } }); }
  if (none) { none.addEventListener("click", function () { boxes.forEach(function (box) { box.checked = false; box.closest(".calibration").classList.remove("added"); }); if (note) { note.textContent = ""; } }); }

  var proposed = document.getElementById("proposed");
  var bucket = document.getElementById("bucket");
  if (proposed && bucket) {
    proposed.addEventListener("change", function () { if (proposed.value) { bucket.value = proposed.value; } });
  }
  var release = document.getElementById("release");
  var site = document.getElementById("site");
  function reloadForm() {
    var query = "?release=" + encodeURIComponent(release.value);
    if (site && site.value) { query += "&site=" + encodeURIComponent(site.value); }
    window.location.search = query;
  }
  if (release) {
    release.addEventListener("change", reloadForm);
    // The site decides which releases are offered, so a new site reloads the release list.
    if (site) { site.addEventListener("change", reloadForm); }
  }
}

document.addEventListener("DOMContentLoaded", function () { startLiveReload(); startPicker(); });
