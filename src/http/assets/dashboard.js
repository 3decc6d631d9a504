// runbook-worker dashboard: the Run-now and Cancel buttons and the live updates, the
// page's only script.
//
// Each button opens a dialog that asks for the API token, POSTs to the JSON API with
// `Authorization: Bearer <token>` and shows the job id or the worker's error. The token stays
// in this page's memory: it is never stored, put in a URL or written into the page.
// Run now shows one input per declared parameter: the server renders them into a
// <template data-param-fields> next to each button; this script copies them into the dialog
// and reads them back as values of their declared type (data-type).
"use strict";

(function () {
  const dialog = document.getElementById("action-dialog");
  if (!dialog || typeof dialog.showModal !== "function") {
    return;
  }
  const form = dialog.querySelector("form");
  const title = dialog.querySelector("[data-dialog-title]");
  const text = dialog.querySelector("[data-dialog-text]");
  const runFields = dialog.querySelector("[data-run-fields]");
  const result = dialog.querySelector("[data-result]");
  const submit = dialog.querySelector("[data-submit]");
  const tokenInput = form.elements.namedItem("token");
  const paramsSlot = dialog.querySelector("[data-params]");
  const dryRunInput = form.elements.namedItem("dry_run");

  let token = "";
  let action = null;

  function show(message, state) {
    result.textContent = message;
    result.dataset.state = state;
  }

  // The parameters as typed JSON values, or the problems with them (all at once). An empty
  // optional input is left out, so the runbook's default applies.
  function readParams() {
    const params = {};
    const problems = [];
    for (const input of paramsSlot.querySelectorAll("[data-param]")) {
      const name = input.dataset.param;
      const type = input.dataset.type;
      if (type === "boolean") {
        params[name] = input.checked;
        continue;
      }
      const text = input.value.trim();
      if (text === "") {
        if (input.required) {
          problems.push(name + " is required");
        }
        continue;
      }
      if (type === "integer" || type === "float") {
        const number = Number(text);
        if (!Number.isFinite(number) || (type === "integer" && !Number.isInteger(number))) {
          problems.push(name + " must be " + (type === "integer" ? "a whole number" : "a number"));
        } else {
          params[name] = number;
        }
      } else if (type === "datetime") {
        // datetime-local gives YYYY-MM-DDTHH:MM[:SS] without a zone; the form means UTC.
        params[name] = (text.length === 16 ? text + ":00" : text) + "Z";
      } else if (type === "array" || type === "table") {
        try {
          params[name] = JSON.parse(text);
        } catch (e) {
          problems.push(name + " is not valid JSON: " + e.message);
        }
      } else {
        params[name] = input.value;
      }
    }
    return { params: params, problems: problems };
  }

  function showJob(prefix, jobId) {
    result.textContent = prefix;
    const link = document.createElement("a");
    link.href = "/jobs/" + encodeURIComponent(jobId);
    link.textContent = jobId;
    result.appendChild(link);
    result.dataset.state = "done";
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) {
      return;
    }
    action = {
      kind: button.dataset.action,
      runbook: button.dataset.runbook || "",
      job: button.dataset.job || "",
    };
    const running = action.kind === "run";
    title.textContent = running ? "Run " + action.runbook + " now" : "Cancel job " + action.job;
    text.textContent = running
      ? "Starts a job of this runbook now, as the API's POST /api/runbooks/{name}/run does."
      : "Asks the job to stop between two calls; it ends as Cancelled.";
    runFields.hidden = !running;
    paramsSlot.replaceChildren();
    const fields = running && button.parentElement.querySelector("template[data-param-fields]");
    if (fields) {
      paramsSlot.appendChild(fields.content.cloneNode(true));
    }
    dryRunInput.checked = false;
    submit.textContent = running ? "Run" : "Cancel job";
    tokenInput.value = token;
    show("", "");
    dialog.showModal();
    (token ? submit : tokenInput).focus();
  });

  dialog.querySelector("[data-close]").addEventListener("click", function () {
    dialog.close();
  });

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!action) {
      return;
    }
    token = tokenInput.value.trim();
    if (!token) {
      show("Enter the worker's API token (http.api_token).", "error");
      return;
    }
    let url;
    let body = "{}";
    if (action.kind === "run") {
      url = "/api/runbooks/" + encodeURIComponent(action.runbook) + "/run";
      const read = readParams();
      if (read.problems.length > 0) {
        show("Check the parameters: " + read.problems.join("; ") + ".", "error");
        return;
      }
      body = JSON.stringify({ params: read.params, dry_run: dryRunInput.checked });
    } else {
      url = "/api/jobs/" + encodeURIComponent(action.job) + "/cancel";
    }
    show("Sending…", "busy");
    submit.disabled = true;
    try {
      const response = await fetch(url, {
        method: "POST",
        credentials: "omit",
        headers: {
          "Authorization": "Bearer " + token,
          "Content-Type": "application/json",
          "X-Runbook-Worker-Source": "dashboard",
        },
        body: body,
      });
      let data = {};
      try {
        data = await response.json();
      } catch (e) {
        data = {};
      }
      if (response.ok && action.kind === "run") {
        showJob("Started job ", String(data.job_id || ""));
      } else if (response.ok) {
        showJob("Cancellation requested for job ", action.job);
      } else {
        if (response.status === 401 || response.status === 403) {
          token = "";
        }
        show(response.status + ": " + (data.error || response.statusText), "error");
      }
    } catch (e) {
      show("The worker did not answer: " + e.message, "error");
    } finally {
      submit.disabled = false;
    }
  });
})();

// Live updates: a page whose <main> has data-live asks that URL every data-live-every ms
// with the version it shows (and, on a job's page, the last stream line it has; with
// data-live-wait the worker answers only when something changed, or after a wait). The
// answer has the page's blocks rendered by the page's own templates (data-live-block:
// replaced) and new stream lines (data-live-append: added).
// A job's page stops asking when the job has ended; every page stops while it is hidden.
(function () {
  const main = document.querySelector("main[data-live]");
  if (!main || typeof fetch !== "function") {
    return;
  }
  const PAUSE_MS = Number(main.dataset.liveEvery) || 5000;
  const MAX_PAUSE_MS = 30000;
  let version = main.dataset.liveVersion || "";
  let after = main.dataset.liveAfter || "";
  let pause = PAUSE_MS;
  let timer = null;

  const shown = {};

  // The nodes of `html` (the worker's own escaped markup) as children of an element like
  // `container`. DOMParser makes inert nodes: nothing in them runs.
  function nodes(container, html) {
    const rows = container.tagName === "TBODY";
    const doc = new DOMParser().parseFromString(
      rows ? "<table><tbody>" + html + "</tbody></table>" : "<div>" + html + "</div>",
      "text/html");
    const holder = doc.body.querySelector(rows ? "tbody" : "div");
    return Array.from(holder.childNodes).map(function (node) {
      return document.adoptNode(node);
    });
  }

  function apply(data) {
    for (const [name, html] of Object.entries(data.blocks || {})) {
      const block = main.querySelector('[data-live-block="' + name + '"]');
      if (block && shown[name] !== html) {
        block.replaceChildren(...nodes(block, html));
        shown[name] = html;
      }
    }
    for (const [name, html] of Object.entries(data.append || {})) {
      const list = main.querySelector('[data-live-append="' + name + '"]');
      if (list && html) {
        list.querySelectorAll("[data-empty]").forEach(function (row) { row.remove(); });
        list.append(...nodes(list, html));
      }
    }
    version = data.version || version;
    if (data.after !== undefined) {
      after = String(data.after);
    }
    if (data.ended) {
      main.dataset.liveEnded = "";
    }
  }

  async function poll() {
    timer = null;
    if (main.dataset.liveEnded !== undefined || document.hidden) {
      return;
    }
    const base = main.dataset.live;
    let url = base + (base.includes("?") ? "&" : "?") + "version=" + encodeURIComponent(version);
    if (after) {
      url += "&after=" + encodeURIComponent(after);
    }
    if (main.dataset.liveWait !== undefined) {
      url += "&wait=1";
    }
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        headers: { "Accept": "application/json" },
      });
      if (!response.ok) {
        throw new Error(String(response.status));
      }
      apply(await response.json());
      pause = PAUSE_MS;
    } catch (e) {
      // The worker restarts or refuses: ask again later, less and less often.
      pause = Math.min(pause * 2, MAX_PAUSE_MS);
    }
    schedule();
  }

  function schedule() {
    if (timer === null && main.dataset.liveEnded === undefined && !document.hidden) {
      timer = setTimeout(poll, pause);
    }
  }

  document.addEventListener("visibilitychange", schedule);
  schedule();
})();
