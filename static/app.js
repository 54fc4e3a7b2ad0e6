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

  // Buttons that take access away from many people at once ask first.
  function wireConfirmations() {
    document.querySelectorAll("button[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
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
    // A button that only works until a time (Accept on an invite) says so once it has passed,
    // instead of leading to the server's refusal.
    document.querySelectorAll("button[data-until]").forEach(function (button) {
      var until = parseInt(button.getAttribute("data-until"), 10);
      if (!isNaN(until) && now >= until && !button.disabled) {
        button.disabled = true;
        button.textContent = "Link expired";
      }
    });
  }

  function localTimes() {
    document.querySelectorAll("time[datetime]:not([data-countdown])").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) el.textContent = d.toLocaleString();
    });
  }

  // A page that shows a new invite link or API token answered a form post. Its history entry
  // becomes a plain visit of the same address, so that reloading it (or coming back to it) asks
  // for the page again instead of posting the form a second time, which would make another link
  // or token. The copy button gets the focus, where a keyboard user wants to be next.
  function settleShownOnce() {
    var shown = document.querySelector("[data-shown-once]");
    if (!shown) return;
    if (window.history && typeof history.replaceState === "function") {
      history.replaceState(null, "", location.href);
    }
    var copy = shown.querySelector("[data-copy]");
    if (copy) copy.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    settleShownOnce();
    wireCopyButtons();
    wireConfirmations();
    localTimes();
    tickCountdowns();
    setInterval(tickCountdowns, 1000);
  });
})();
