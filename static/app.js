// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  function wireCopyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var input = document.getElementById(button.getAttribute("data-copy"));
        if (!input) return;
        input.select();
        var done = function () {
          var label = button.textContent;
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 1500);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(input.value).then(done, function () {
            document.execCommand("copy"); done();
          });
        } else {
          document.execCommand("copy");
          done();
        }
      });
    });
  }

  function describe(seconds) {
    if (seconds <= 0) return "expired";
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h > 0) return "in " + h + " h " + m + " min";
    if (m > 0) return "in " + m + " min " + s + " s";
    return "in " + s + " s";
  }

  function tickCountdowns() {
    var now = Math.floor(Date.now() / 1000);
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var at = parseInt(el.getAttribute("data-countdown"), 10);
      if (!isNaN(at)) el.textContent = describe(at - now);
    });
  }

  function localTimes() {
    document.querySelectorAll("time[datetime]:not([data-countdown])").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) el.textContent = d.toLocaleString();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wireCopyButtons();
    localTimes();
    tickCountdowns();
    setInterval(tickCountdowns, 1000);
  });
})();
