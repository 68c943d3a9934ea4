// raftmq console: live updates over server-sent events. The server renders every
// fragment (escaped by its templates); this script only swaps them in, so it never
// builds HTML from record data itself.
(function () {
  "use strict";
  var TAIL_ROWS_MAX = 200;
  var main = document.querySelector("main[data-events]");
  var status = document.getElementById("live-status");
  if (!main) {
    return;
  }

  function setStatus(state, text) {
    if (status) {
      status.dataset.state = state;
      status.textContent = text;
    }
  }

  var source = new EventSource(main.dataset.events);
  source.onopen = function () {
    setStatus("live", "live");
  };
  source.onerror = function () {
    // EventSource reconnects by itself while the server answers 200; a refusal (e.g.
    // too many streams) closes it for good.
    if (source.readyState === EventSource.CLOSED) {
      setStatus("off", "live updates off");
    } else {
      setStatus("reconnecting", "reconnecting…");
    }
  };

  source.addEventListener("fragments", function (event) {
    var fragments = JSON.parse(event.data);
    Object.keys(fragments).forEach(function (id) {
      var element = document.getElementById(id);
      if (element) {
        element.innerHTML = fragments[id];
      }
    });
    setStatus("live", "live");
  });

  source.addEventListener("tail", function (event) {
    var data = JSON.parse(event.data);
    var body = document.getElementById("tail-rows");
    var note = document.getElementById("tail-note");
    if (note) {
      note.textContent = data.error ? "error: " + data.error : data.note || "";
    }
    if (body && data.rows) {
      body.insertAdjacentHTML("beforeend", data.rows);
      while (body.rows.length > TAIL_ROWS_MAX) {
        body.deleteRow(0);
      }
    }
    setStatus("live", "live");
  });

  window.addEventListener("pagehide", function () {
    source.close();
  });
})();
