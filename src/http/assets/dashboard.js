// runbook-worker dashboard: the Run-now and Cancel buttons, the page's only script.
//
// Each button opens a dialog that asks for the API token, POSTs to the JSON API with
// `Authorization: Bearer <token>` and shows the job id or the worker's error. The token stays
// in this page's memory: it is never stored, put in a URL or written into the page.
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
  const paramsInput = form.elements.namedItem("params");
  const dryRunInput = form.elements.namedItem("dry_run");

  let token = "";
  let action = null;

  function show(message, state) {
    result.textContent = message;
    result.dataset.state = state;
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
      let params = {};
      const paramsText = paramsInput.value.trim();
      if (paramsText) {
        try {
          params = JSON.parse(paramsText);
        } catch (e) {
          show("The parameters are not valid JSON: " + e.message, "error");
          return;
        }
      }
      body = JSON.stringify({ params: params, dry_run: dryRunInput.checked });
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
