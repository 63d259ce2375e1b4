// guard: the browser side of passkey ceremonies (registration, and the step-up of an approval).
// Loaded as a file (no inline script: the console's Content-Security-Policy forbids it). It only
// moves the server's options into navigator.credentials and the authenticator's answer back;
// every check is on the server.
//
// Markup it acts on:
//   <meta name="csrf-token" content="...">  sent as the X-CSRF-Token header on its fetches.
//   <button data-passkey-register data-start="URL" data-finish="URL">  registration: POSTs
//     {} to data-start, expects {"ceremony": id, "options": {"publicKey": ...}}, runs
//     navigator.credentials.create, POSTs {"ceremony", "credential", "label"} to data-finish.
//     An <input data-passkey-label> on the page names the passkey.
//   <form data-passkey-approve data-start="URL" method="post" action="...">  an approval that
//     needs a passkey: on submit, POSTs the form's fields as JSON to data-start, runs
//     navigator.credentials.get, puts the ceremony id and the assertion into the form's
//     passkey_ceremony and passkey_credential fields, then submits the form.
//   [data-passkey-status]  (in the form, else on the page) shows progress and errors; its
//     data-state attribute is "working", "ok" or "error".
(function () {
  "use strict";

  function fromB64url(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var bin = atob(b64);
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes.buffer;
  }

  function toB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function status(scope, state, text) {
    var el = (scope && scope.querySelector("[data-passkey-status]")) || document.querySelector("[data-passkey-status]");
    if (!el) return;
    el.setAttribute("data-state", state);
    el.textContent = text; // text, never HTML: server messages may quote hostile input
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  async function post(url, body) {
    var resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    });
    var text = await resp.text();
    if (!resp.ok) throw new Error(text || resp.status + " " + resp.statusText);
    return text ? JSON.parse(text) : {};
  }

  function creationOptions(options) {
    var pk = options.publicKey;
    pk.challenge = fromB64url(pk.challenge);
    pk.user.id = fromB64url(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = fromB64url(c.id); });
    return { publicKey: pk };
  }

  function requestOptions(options) {
    var pk = options.publicKey;
    pk.challenge = fromB64url(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = fromB64url(c.id); });
    return { publicKey: pk };
  }

  function registrationJSON(cred) {
    return {
      id: cred.id,
      rawId: toB64url(cred.rawId),
      type: cred.type,
      extensions: cred.getClientExtensionResults(),
      response: {
        clientDataJSON: toB64url(cred.response.clientDataJSON),
        attestationObject: toB64url(cred.response.attestationObject),
        transports: cred.response.getTransports ? cred.response.getTransports() : undefined,
      },
    };
  }

  function assertionJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: toB64url(cred.rawId),
      type: cred.type,
      extensions: cred.getClientExtensionResults(),
      response: {
        clientDataJSON: toB64url(r.clientDataJSON),
        authenticatorData: toB64url(r.authenticatorData),
        signature: toB64url(r.signature),
        userHandle: r.userHandle ? toB64url(r.userHandle) : null,
      },
    };
  }

  function describe(err) {
    // A DOMException from the authenticator (NotAllowedError: cancelled, timed out, or the
    // user could not be verified) or the server's message.
    return (err && err.name && err.name !== "Error" ? err.name + ": " : "") + (err && err.message ? err.message : String(err));
  }

  async function register(button) {
    var scope = button.closest("form, section, body");
    try {
      status(scope, "working", "Follow your browser's passkey prompt...");
      var start = await post(button.getAttribute("data-start"), {});
      var cred = await navigator.credentials.create(creationOptions(start.options));
      var label = document.querySelector("[data-passkey-label]");
      var done = await post(button.getAttribute("data-finish"), {
        ceremony: start.ceremony,
        credential: registrationJSON(cred),
        label: label ? label.value : "",
      });
      status(scope, "ok", done.message || "Passkey registered.");
    } catch (err) {
      status(scope, "error", describe(err));
    }
  }

  function field(form, name) {
    var input = form.querySelector('input[name="' + name + '"]');
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      form.appendChild(input);
    }
    return input;
  }

  async function approve(form) {
    try {
      status(form, "working", "Confirm with your passkey...");
      var fields = {};
      new FormData(form).forEach(function (value, key) {
        if (key !== "passkey_ceremony" && key !== "passkey_credential") fields[key] = String(value);
      });
      var start = await post(form.getAttribute("data-start"), fields);
      var cred = await navigator.credentials.get(requestOptions(start.options));
      field(form, "passkey_ceremony").value = start.ceremony;
      field(form, "passkey_credential").value = JSON.stringify(assertionJSON(cred));
      status(form, "working", "Sending the approval...");
      form.submit(); // the plain submit: no second pass through this handler
    } catch (err) {
      status(form, "error", describe(err));
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-passkey-register]");
    if (!button) return;
    event.preventDefault();
    register(button);
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-passkey-approve]")) return;
    event.preventDefault();
    if (!window.PublicKeyCredential) {
      status(form, "error", "This browser has no passkey support (WebAuthn needs https).");
      return;
    }
    approve(form);
  });
})();
