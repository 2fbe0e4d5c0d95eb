// The operators' console: plain JavaScript, no build step (as the player's page). It calls the
// /ops views of crash-ops with the session cookie its login set (HttpOnly: this script never
// sees it, and never any HMAC key) and sends the session's CSRF token on every POST. Every answer
// is shown in words, a refusal with the server's reason; amounts are the server's integers,
// shown through money.js. Nothing is built with innerHTML: text goes in as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 4000;
  const IDLE_MS = 5 * 60 * 1000;     // no click or key for this long: updates stop, so that the session can lapse
  const KEEPALIVE_MS = 60 * 1000;    // while the operator works, the session is refreshed this often
  const SESSION_ERRORS = new Set(["no_session", "session_expired", "session_ended", "bad_session"]);
  const WORDS = {
    bad_config: "the config was refused", bad_definition: "the parameters were refused",
    bad_request: "the request was refused", forbidden: "not allowed", not_found: "not found",
    exists: "it exists already", not_failed: "nothing to retry", csrf_missing: "the CSRF token was missing",
    csrf_mismatch: "the CSRF token is not this session's", database_unavailable: "the database is unreachable",
    redis_unavailable: "Redis is unreachable", network: "crash-ops did not answer",
  };
  const STATES = {pre_start: "taking bets", starting: "starting", flying: "flying", crashed: "crashed",
                  aborted: "aborted", closed: "closed"};
  const CONFIG_FIELDS = [
    ["name", "Name", "text"], ["operator_group", "Operator group", "text"],
    ["betting_ms", "Betting window (ms)", "int"], ["starting_ms", "Starting phase (ms)", "int"],
    ["cooldown_ms", "Cool-down (ms)", "int"], ["growth_per_ms", "Growth per ms", "text"],
    ["edge_bps", "House edge (bps)", "int"], ["max_multiple_x100", "Max multiple (×100)", "int"],
    ["tick_ms", "Tick (ms)", "int"], ["grace_ms", "Grace (ms)", "int"],
    ["jackpots", "Jackpots it feeds (comma-separated)", "list"],
    ["currencies", "Currencies and their limits (JSON, minor units)", "json"],
  ];
  const JACKPOT_FIELDS = [
    ["name", "Name", "text"], ["rate_bps", "Rate (bps of each stake)", "int"], ["seed", "Seed (minor units)", "int"],
    ["cap", "Cap (minor units)", "int"], ["near_cap_bps", "Near-cap notice (bps of the cap)", "int"],
    ["rank_split_bps", "Rank split (bps, comma-separated)", "intlist"],
  ];

  const S = {me: null, csrf: "", tab: "channels", channelId: null, channel: null, jackpotId: null, jackpot: null,
             channels: [], verified: {}, shown: {}, formFor: {}, auditBefore: null, lastActivity: Date.now(),
             lastKeepalive: 0};
  window.consolePage = S;   // for the browser tests and the curious

  // ---------------------------------------------------------------- small helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }
  const pad = (n) => String(n).padStart(2, "0");
  function when(ms) {
    if (!ms) return "–";
    const d = new Date(Number(ms));
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return d.toDateString() === new Date().toDateString() ? time
      : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }
  const short = (hex) => (hex ? `${String(hex).slice(0, 12)}…` : "–");
  const money = (amount, currency) => (amount === null || amount === undefined ? "–" : Money.format(amount, currency));
  const segment = (id) => encodeURIComponent(id).replace(/%3A/gi, ":");   // order numbers hold ':'

  function say(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    el.className = el.className.replace(/\b(ok|bad)\b/g, "").trim() + (kind ? ` ${kind}` : "");
  }
  function reason(answer) {
    const body = answer.body || {};
    return body.reason || WORDS[body.error] || body.error || `HTTP ${answer.status}`;
  }
  function refused(id, doing, answer) { say(id, `${doing} refused: ${reason(answer)}`, "bad"); }
  function status(text) { $("status").textContent = text; }

  // Table bodies are rebuilt only when their data changed (no flicker, no lost hover or focus).
  function rows(id, data, build, empty, columns) {
    const key = JSON.stringify(data);
    if (S.shown[id] === key) return;
    S.shown[id] = key;
    const body = $(id);
    body.replaceChildren(...(data.length ? data.flatMap(build)
      : [h("tr", {}, h("td", {class: "empty", colspan: columns, text: empty}))]));
  }

  // ---------------------------------------------------------------- the API
  async function call(method, path, body) {
    const headers = {};
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      if (S.csrf) headers["X-CSRF-Token"] = S.csrf;
    }
    let response;
    try {
      response = await fetch(path, {method, headers, credentials: "same-origin", cache: "no-store",
                                    body: method === "GET" ? undefined : JSON.stringify(body || {})});
    } catch (error) {
      return {status: 0, body: {error: "network", reason: "crash-ops did not answer; try again"}};
    }
    let data;
    try { data = await response.json(); } catch (error) { data = {error: "bad_answer", reason: `HTTP ${response.status}`}; }
    if (response.status === 401 && data && SESSION_ERRORS.has(data.error) && S.me) loggedOut(data.reason, "bad");
    return {status: response.status, body: data};
  }

  // ---------------------------------------------------------------- login and the session
  function showWho() {
    const me = S.me;
    $("who-name").textContent = `${me.name} · ${me.role} · ${me.group ? "group " + me.group : "every group"}`;
    $("who-until").textContent = `session until ${when(me.expires_at)}`;
  }
  function loggedIn(me) {
    S.me = me; S.csrf = me.csrf_token;
    document.body.classList.toggle("reader", me.role !== "admin");
    $("readonly").classList.toggle("hidden", me.role === "admin");
    showWho();
    $("login").classList.add("hidden");
    $("who").classList.remove("hidden");
    $("app").classList.remove("hidden");
    S.shown = {}; S.formFor = {};
    route();
  }
  function loggedOut(text, kind) {
    S.me = null; S.csrf = "";
    $("app").classList.add("hidden");
    $("who").classList.add("hidden");
    $("modal").classList.add("hidden");
    $("login").classList.remove("hidden");
    say("login-msg", text || "", kind);
    $("login-name").focus();
  }
  async function login(event) {
    event.preventDefault();
    const name = $("login-name").value.trim(), password = $("login-password").value;
    if (!name || !password) { say("login-msg", "Enter your name and your password.", "bad"); return; }
    $("login-submit").disabled = true;
    say("login-msg", "Checking…");
    const answer = await call("POST", "/ops/login", {name, password});
    $("login-submit").disabled = false;
    if (answer.status === 200) {
      $("login-password").value = "";
      say("login-msg", "");
      loggedIn(answer.body);
    } else {
      refused("login-msg", "Login", answer);
    }
  }
  async function logout() {
    await call("POST", "/ops/logout", {});
    loggedOut("You have logged out.", "ok");
  }
  async function keepalive() {
    const answer = await call("GET", "/ops/session");
    if (answer.status === 200 && S.me) { S.me = answer.body; S.csrf = answer.body.csrf_token; showWho(); }
  }

  // ---------------------------------------------------------------- confirmation with a reason
  function confirmAction({title, text, confirm, danger = true}) {
    return new Promise((resolve) => {
      const modal = $("modal"), form = $("modal-form"), cancel = $("modal-cancel"), input = $("modal-reason");
      $("modal-title").textContent = title;
      $("modal-text").textContent = text;
      $("modal-confirm").textContent = confirm;
      $("modal-confirm").className = danger ? "danger" : "primary";
      input.value = "";
      say("modal-msg", "", "bad");
      modal.classList.remove("hidden");
      input.focus();
      const onKey = (event) => { if (event.key === "Escape") done(null); };
      const done = (value) => {
        modal.classList.add("hidden");
        form.onsubmit = null; cancel.onclick = null;
        document.removeEventListener("keydown", onKey);
        resolve(value);
      };
      form.onsubmit = (event) => {
        event.preventDefault();
        const why = input.value.trim();
        if (why.length < 3) { say("modal-msg", "Give a reason (3 characters at least): the audit log keeps it.", "bad"); return; }
        done(why);
      };
      cancel.onclick = () => done(null);
      document.addEventListener("keydown", onKey);
    });
  }

  // ---------------------------------------------------------------- forms of fields
  function fieldValue(value, kind) {
    if (value === null || value === undefined) return "";
    if (kind === "list" || kind === "intlist") return value.join(", ");
    if (kind === "json") return JSON.stringify(value);
    return String(value);
  }
  function buildFields(form, fields, values, prefix, onSave, saveLabel) {
    const children = fields.map(([key, label, kind]) => {
      const input = kind === "json"
        ? h("textarea", {name: key, rows: 3, spellcheck: "false", "data-testid": `${prefix}-${key}`})
        : h("input", {name: key, autocomplete: "off", spellcheck: "false", "data-testid": `${prefix}-${key}`,
                      inputmode: kind === "int" ? "numeric" : null});
      input.value = fieldValue(values[key], kind);
      input.dataset.original = input.value;
      input.readOnly = S.me.role !== "admin";       // a reader sees the values, and has nothing to change
      const wrap = h("label", {class: kind === "json" ? "wide" : null}, label, input);
      input.addEventListener("input", () => wrap.classList.toggle("changed", input.value !== input.dataset.original));
      return wrap;
    });
    children.push(h("div", {class: "actions admin-only"},
      h("button", {class: "primary", type: "submit", "data-testid": `${prefix}-save`, text: saveLabel}),
      h("button", {class: "secondary", type: "button", text: "Undo changes", onclick: () => {
        for (const input of form.querySelectorAll("input, textarea")) { input.value = input.dataset.original; }
        for (const label of form.querySelectorAll("label.changed")) label.classList.remove("changed");
      }})));
    form.replaceChildren(...children);
    form.onsubmit = (event) => { event.preventDefault(); onSave(); };
  }
  // The changed fields only, as the server wants them; a value that is not even of the right
  // shape is sent as typed, so that the server's validation says what is wrong with it.
  function changedFields(form, fields, msgId) {
    const changes = {};
    for (const [key, label, kind] of fields) {
      const input = form.elements[key];
      const raw = input.value.trim();
      if (input.value === input.dataset.original) continue;
      if (kind === "int") changes[key] = /^-?\d+$/.test(raw) ? Number(raw) : raw;
      else if (kind === "list") changes[key] = raw.split(",").map((s) => s.trim()).filter(Boolean);
      else if (kind === "intlist") changes[key] = raw ? raw.split(",").map((s) => (/^\s*\d+\s*$/.test(s) ? Number(s) : s.trim())) : null;
      else if (kind === "json") {
        try { changes[key] = JSON.parse(raw); } catch (error) {
          say(msgId, `Not sent: ${label} is not valid JSON (${error.message})`, "bad");
          return null;
        }
      } else changes[key] = input.value;
    }
    return changes;
  }

  // ---------------------------------------------------------------- tabs
  function route() {
    if (!S.me) return;
    const parts = location.hash.slice(1).split("/");
    const tab = ["channels", "payouts", "jackpots", "audit"].includes(parts[0]) ? parts[0] : "channels";
    const id = parts[1] ? decodeURIComponent(parts[1]) : null;
    S.tab = tab;
    for (const link of document.querySelectorAll(".tabs a")) link.classList.toggle("on", link.dataset.tab === tab);
    for (const section of document.querySelectorAll("main.tab")) section.classList.toggle("hidden", section.id !== `tab-${tab}`);
    if (tab === "channels" && id !== S.channelId) { S.channelId = id; S.channel = null; $("term-detail").classList.add("hidden"); }
    if (tab === "jackpots" && id !== S.jackpotId) { S.jackpotId = id; S.jackpot = null; }
    refresh(true);
  }
  async function refresh(full) {
    if (!S.me) return;
    if (S.tab === "channels") await Promise.all([loadChannels(), S.channelId ? loadChannel(full) : null]);
    else if (S.tab === "payouts") await loadPayouts();
    else if (S.tab === "jackpots") await Promise.all([loadJackpots(), S.jackpotId ? loadJackpot(full) : null]);
    else if (S.tab === "audit" && (full || S.auditBefore === null)) await loadAudit();
    if (S.me) status(`updated ${when(Date.now())}`);
  }

  // ---------------------------------------------------------------- channels
  async function loadChannels() {
    const answer = await call("GET", "/ops/channels");
    if (answer.status !== 200) { status(`channels not shown: ${reason(answer)}`); return; }
    // A group's account acts on its group's channels only: those are the ones listed.
    S.channels = answer.body.channels.filter((c) => !S.me.group || c.operator_group === S.me.group);
    $("channels-scope").textContent = S.me.group ? `(group ${S.me.group})` : "";
    rows("channels", S.channels.map((c) => [c.channel_id, c.config.name, c.operator_group,
      Object.keys(c.config.currencies || {}).join(" "), c.config_version, c.channel_id === S.channelId]),
    ([id, name, group, currencies, version, on]) => h("tr", {class: `pick${on ? " on" : ""}`, "data-testid": `channel-${id}`,
      onclick: () => { location.hash = `#channels/${encodeURIComponent(id)}`; }},
    h("td", {}, h("span", {class: "mono", text: id}), name ? h("div", {class: "muted small", text: name}) : null),
    h("td", {text: group}), h("td", {text: currencies}), h("td", {class: "num opt", text: version})),
    "No channel yet.", 4);
  }

  async function loadChannel(full) {
    const id = S.channelId;
    const answer = await call("GET", `/ops/channels/${encodeURIComponent(id)}`);
    if (id !== S.channelId) return;
    if (answer.status !== 200) {
      $("channel-body").classList.add("hidden");
      $("channel-empty").classList.remove("hidden");
      $("channel-empty").textContent = `Channel ${id} not shown: ${reason(answer)}`;
      return;
    }
    const ch = answer.body;
    S.channel = ch;
    $("channel-empty").classList.add("hidden");
    $("channel-body").classList.remove("hidden");
    $("channel-title").textContent = `${ch.channel_id}${ch.config.name ? " — " + ch.config.name : ""} (group ${ch.operator_group})`;
    if (full || S.formFor.channel !== id) {
      S.formFor.channel = id;
      buildFields($("config"), CONFIG_FIELDS, ch.config, "cfg", saveConfig, "Save config");
      say("config-msg", ""); say("command-msg", ""); say("verify-msg", "");
    }
    const live = ch.terms[0];
    $("live").textContent = live ? `Latest term ${live.term_id}: ` + (live.aborted
      ? `aborted (${live.abort_reason || "no reason given"})` : STATES[live.state] || live.state) +
      (live.state === "pre_start" && live.bets_close_at ? `, bets close at ${when(live.bets_close_at)}` : "") : "No term yet.";
    renderTerms(ch.terms);
    rows("chains", ch.fairness, (c) => h("tr", {},
      h("td", {class: "num", text: c.chain_no}), h("td", {class: "num", text: c.length}),
      h("td", {class: "mono", title: c.terminator, text: short(c.terminator)}),
      h("td", {class: "mono", title: c.salt, text: short(c.salt)}), h("td", {class: "opt", text: when(c.published_at)})),
    "No chain published yet.", 5);
  }

  function renderTerms(terms) {
    rows("terms", terms.map((t) => [t, S.verified[t.term_id] || null]), ([t, verified]) => {
      const revealed = ["crashed", "closed", "aborted"].includes(t.state);
      const proof = revealed ? h("td", {},
        h("button", {class: "secondary", "data-testid": `verify-${t.term_id}`, text: verified === null ? "Verify"
          : verified ? "✓ verified" : "✗ failed", onclick: (event) => { event.stopPropagation(); verifyTerm(t.term_id); }}),
        " ",
        S.me.verifier_url ? h("a", {href: `${S.me.verifier_url}?term=${encodeURIComponent(t.term_id)}`,
          target: "_blank", rel: "noopener noreferrer", "data-testid": `verifier-${t.term_id}`, text: "verifier ↗",
          onclick: (event) => event.stopPropagation()}) : null)
        : h("td", {class: "muted", text: "after the crash"});
      // An aborted term is voided whatever its state now: its revealed crash point was never played.
      const state = t.aborted ? `aborted: ${t.abort_reason || "no reason given"}` : (STATES[t.state] || t.state);
      return h("tr", {class: "pick", "data-testid": `term-${t.term_id}`, onclick: () => termDetail(t.term_id)},
        h("td", {class: "mono", text: t.term_id}),
        h("td", {class: `state state-${t.aborted ? "aborted" : t.state}`, text: state}),
        h("td", {class: "num", title: t.aborted && t.crash_x100 ? `its chain's point was ${Money.multiple(t.crash_x100)}` : null,
                 text: t.aborted ? "void" : t.crash_x100 ? Money.multiple(t.crash_x100) : "–"}),
        proof, h("td", {class: "opt", text: when(t.created_at)}), h("td", {class: "opt", text: when(t.closed_at || t.ended_at)}));
    }, "No term yet.", 6);
  }

  async function verifyTerm(termId) {
    say("verify-msg", `Verifying ${termId}…`);
    const answer = await call("GET", `/ops/verify?channel=${encodeURIComponent(S.channelId)}&term=${encodeURIComponent(termId)}`);
    if (answer.status !== 200) { refused("verify-msg", "Verification", answer); return; }
    const report = answer.body;
    const term = (report.terms || [])[0];
    const ok = report.problems.length === 0 && report.terms_ok === 1;
    S.verified[termId] = ok;
    if (ok) {
      say("verify-msg", `${termId} verified: its revealed hash links to the published terminator of chain`
        + ` ${term.chain_no} and gives ${term.crash_x100 ? "the crash point " + Money.multiple(term.crash_x100) : "its (voided) result"}.`, "ok");
    } else {
      say("verify-msg", `${termId} does not verify: ${report.problems.flatMap((p) => p.problems).join("; ")}`, "bad");
    }
    renderTerms(S.channel ? S.channel.terms : []);
  }

  async function termDetail(termId) {
    const panel = $("term-detail");
    const answer = await call("GET", `/ops/terms/${encodeURIComponent(termId)}`);
    panel.classList.remove("hidden");
    if (answer.status !== 200) { panel.replaceChildren(`Term ${termId} not shown: ${reason(answer)}`); return; }
    const t = answer.body;
    const totals = t.totals.length ? t.totals.map((c) => h("div", {},
      `${c.currency}: ${c.bets} bets, stakes ${money(c.stakes, c.currency)}, payouts ${money(c.payouts, c.currency)},`
      + ` refunds ${money(c.refunds, c.currency)}, house result ${money(c.house_result, c.currency)}`))
      : [h("div", {class: "muted", text: "No totals yet (they are written when the term is settled)."})];
    const bets = t.bets_by_status.map((b) => `${b.n} ${b.status} (${money(b.stakes, b.currency)})`).join(", ");
    panel.replaceChildren(h("b", {text: `Term ${t.term_id}`}),
      h("div", {class: "muted", text: `created ${when(t.created_at)}, bets closed ${when(t.bets_close_at)}, flying ${when(t.flying_at)},`
        + ` crashed ${when(t.crash_at)}, closed ${when(t.closed_at)}; chain ${t.chain_no} index ${t.chain_index}`}),
      ...totals, h("div", {text: bets ? `Bets: ${bets}` : "No bets."}));
  }

  async function saveConfig() {
    const form = $("config");
    const changes = changedFields(form, CONFIG_FIELDS, "config-msg");
    if (changes === null) return;
    if (!Object.keys(changes).length) { say("config-msg", "Nothing changed."); return; }
    say("config-msg", "Sending…");
    const id = S.channelId;
    const answer = await call("POST", `/ops/channels/${encodeURIComponent(id)}/config`, changes);
    if (answer.status !== 202) { refused("config-msg", "Config", answer); return; }
    buildFields(form, CONFIG_FIELDS, answer.body.config, "cfg", saveConfig, "Save config");
    say("config-msg", `Config saved (${Object.keys(changes).join(", ")}): it applies from the next term.`, "ok");
  }

  async function channelCommand(kind) {
    const id = S.channelId;
    const abort = kind === "abort";
    await loadChannel(false);        // what is running now, not 4 s ago
    const live = S.channel && S.channel.terms[0];
    const now = live ? ` Now: ${live.term_id}, ${live.aborted ? "aborted" : STATES[live.state] || live.state}.` : "";
    const why = await confirmAction(abort ? {
      title: `Abort the running term of ${id}?`, confirm: "Abort the term",
      text: `The running term is voided: every open bet is refunded and its hash is revealed. This cannot be undone.${now}`}
      : {title: `Start the term of ${id} now?`, confirm: "Start now", danger: false,
        text: `Betting closes at the moment crash-ops receives this; the term then flies to its committed crash point.${now}`});
    if (why === null) return;
    say("command-msg", "Sending…");
    const answer = await call("POST", `/ops/channels/${encodeURIComponent(id)}/${kind}`, {reason: why});
    if (answer.status !== 202) { refused("command-msg", abort ? "Abort" : "Start", answer); return; }
    say("command-msg", `${abort ? "Abort" : "Start"} sent (command ${answer.body.command_id}): the term list shows its effect.`, "ok");
    loadChannel(false);
  }

  async function createChannel(event) {
    event.preventDefault();
    let config;
    try { config = JSON.parse($("new-channel-config").value || "{}"); } catch (error) {
      say("create-channel-msg", `Not sent: the config is not valid JSON (${error.message})`, "bad"); return;
    }
    const id = $("new-channel-id").value.trim();
    if (S.me.group && config && typeof config === "object" && !config.operator_group) config.operator_group = S.me.group;
    say("create-channel-msg", "Sending…");
    const answer = await call("POST", "/ops/channels", {channel_id: id, config});
    if (answer.status !== 202) { refused("create-channel-msg", "Creation", answer); return; }
    say("create-channel-msg", `Channel ${id} created: its fairness chain is published; it appears in the list in a moment.`, "ok");
  }

  // ---------------------------------------------------------------- payouts
  async function loadPayouts() {
    const wanted = $("payout-status").value;
    const answer = await call("GET", `/ops/payouts?limit=200${wanted ? "&status=" + wanted : ""}`);
    if (answer.status !== 200) { refused("payout-msg", "The payout list", answer); rows("payouts", [], null, "–", 10); return; }
    rows("payouts", answer.body.payouts, (p) => h("tr", {"data-testid": `payout-${p.order_no}`},
      h("td", {class: "order"}, h("span", {class: "mono", text: p.order_no}),
        // The last error stays on the row for the record; it is the reason only while the payout is failed.
        p.last_error ? h("div", {class: `small ${p.status === "failed" ? "error" : "muted"}`, title: p.last_error,
                                 text: (p.status === "failed" ? "" : "earlier: ") + String(p.last_error).slice(0, 120)}) : null),
      h("td", {class: "num", text: money(p.amount, p.currency)}),
      h("td", {class: p.status === "failed" ? "bad-text" : p.status === "acked" ? "ok-text" : "", text: p.status}),
      h("td", {}, p.status === "failed" ? h("button", {class: "secondary admin-only", "data-testid": `retry-${p.order_no}`,
        text: "Send again", onclick: () => retryPayout(p)}) : null),
      h("td", {class: "opt", text: p.user_id}), h("td", {class: "opt", text: p.kind}),
      h("td", {class: "opt", text: p.channel_id}), h("td", {class: "num opt", text: p.retry_count}),
      h("td", {class: "opt", text: when(p.updated_at)})),
    wanted ? `No ${wanted} payout.` : "No payout.", 10);
  }

  async function retryPayout(p) {
    const why = await confirmAction({title: `Send payout ${p.order_no} again?`, confirm: "Send again", danger: false,
      text: `${money(p.amount, p.currency)} to ${p.user_id}. The wallet credits an order number once: if it was paid after all, nothing more is paid.`});
    if (why === null) return;
    say("payout-msg", "Sending…");
    const answer = await call("POST", `/ops/payouts/${segment(p.order_no)}/retry`, {reason: why});
    if (answer.status !== 202) { refused("payout-msg", "The retry", answer); return; }
    say("payout-msg", `Payout ${p.order_no} is ready again: the payout adapter sends it now.`, "ok");
    loadPayouts();
  }

  // ---------------------------------------------------------------- jackpots
  function liveOf(row) { return row.live || {}; }
  async function loadJackpots() {
    const answer = await call("GET", "/ops/jackpots");
    if (answer.status !== 200) { status(`jackpots not shown: ${reason(answer)}`); return; }
    rows("jackpots", answer.body.jackpots.map((j) => [j.jackpot_id, j.definition.name, j.tier, j.currency,
      liveOf(j).value ?? null, j.definition.cap, liveOf(j).status || j.status, j.channel_id || j.operator_group,
      j.jackpot_id === S.jackpotId]),
    ([id, name, tier, currency, value, cap, state, scope, on]) => h("tr", {class: `pick${on ? " on" : ""}`,
      "data-testid": `jackpot-${id}`, onclick: () => { location.hash = `#jackpots/${encodeURIComponent(id)}`; }},
    h("td", {}, h("span", {class: "mono", text: id}),
      h("div", {class: "muted small", text: [name, `${tier}${scope ? " · " + scope : ""}`].filter(Boolean).join(" · ")})),
    h("td", {class: "num", text: money(value, currency)}),
    h("td", {class: "opt"}, h("meter", {min: 0, max: cap || 1, value: value || 0,
                                        title: `${money(value, currency)} of ${money(cap, currency)}`})),
    h("td", {}, h("span", {class: `pill ${state}`, text: state}))),
    "No jackpot yet.", 5);
  }

  async function loadJackpot(full) {
    const id = S.jackpotId;
    const answer = await call("GET", `/ops/jackpots/${encodeURIComponent(id)}`);
    if (id !== S.jackpotId) return;
    if (answer.status !== 200) {
      $("jackpot-body").classList.add("hidden");
      $("jackpot-empty").classList.remove("hidden");
      $("jackpot-empty").textContent = `Jackpot ${id} not shown: ${reason(answer)}`;
      return;
    }
    const j = answer.body, live = liveOf(j), def = j.definition, cur = j.currency;
    S.jackpot = j;
    $("jackpot-empty").classList.add("hidden");
    $("jackpot-body").classList.remove("hidden");
    $("jackpot-title").textContent = `${j.jackpot_id}${def.name ? " — " + def.name : ""}`;
    const state = live.status || j.status;
    $("jackpot-status").textContent = state;
    $("jackpot-status").className = `pill ${state}`;
    for (const button of document.querySelectorAll("[data-status]")) button.disabled = button.dataset.status === state;
    const facts = [["Value", money(live.value, cur)], ["Seed", money(def.seed, cur)], ["Cap", money(def.cap, cur)],
      ["Cycle", live.cycle ?? "–"], ["Rate", `${def.rate_bps} bps`], ["Near cap at", `${def.near_cap_bps} bps`],
      ["Trigger", def.trigger], ["Tier", `${def.tier}${def.channel_id ? " · " + def.channel_id : ""}${def.operator_group ? " · " + def.operator_group : ""}`],
      ["Commitment", short(live.commitment)], ["Rank split", def.rank_split_bps ? def.rank_split_bps.join(" / ") : "–"]];
    rowsOfFacts(facts);
    const pending = j.pending ? JACKPOT_FIELDS.filter(([key]) => JSON.stringify(j.pending[key]) !== JSON.stringify(def[key]))
      .map(([key, label]) => `${label.replace(/ \(.*\)$/, "")} ${fieldValue(def[key], "json")} → ${fieldValue(j.pending[key], "json")}`) : [];
    $("jackpot-pending").classList.toggle("hidden", !pending.length);
    $("jackpot-pending").textContent = pending.length ? `Pending from the next reset: ${pending.join("; ")}` : "";
    if (full || S.formFor.jackpot !== id) {
      S.formFor.jackpot = id;
      buildFields($("jackpot-config"), JACKPOT_FIELDS, j.pending || def, "jp", saveJackpot, "Save parameters");
      for (const msg of ["jackpot-msg", "jackpot-config-msg", "feeds-msg"]) say(msg, "");
    }
    rows("reconciliations", j.reconciliations, (r) => h("tr", {"data-testid": `reconciliation-${r.request_id}`},
      h("td", {text: when(r.ts)}), h("td", {class: "num", text: micro(r.expected_micro, cur)}),
      h("td", {class: "num", text: micro(r.pool_micro, cur)}), h("td", {class: "num", text: `${r.difference_micro} µ`}),
      h("td", {class: Number(r.difference_micro) === 0 ? "ok-text" : "bad-text",
               text: Number(r.difference_micro) === 0 ? "exact" : "differs"})),
    "No reconciliation yet (hourly, or press Reconcile now).", 5);
    rows("awards", j.awards, (a) => {
      const winners = a.winners && a.winners.length ? a.winners : [{rank_no: null, user_id: a.user_id, bonus_amount: a.amount,
        payout_status: null, multiple_x100: null}];
      return winners.map((w, i) => h("tr", {class: i ? "sub" : "", "data-testid": i ? null : `award-${a.award_id}`},
        h("td", {class: "mono", text: i ? "" : a.award_id}), h("td", {class: "opt", text: i ? "" : when(a.ts)}),
        h("td", {class: "num opt", text: i ? "" : money(a.amount, a.currency)}),
        h("td", {text: `${w.rank_no ? "#" + w.rank_no + " " : ""}${w.user_id || "(hidden)"}${w.multiple_x100 ? " at " + Money.multiple(w.multiple_x100) : ""}`}),
        h("td", {class: "num", text: money(w.bonus_amount, a.currency)}), h("td", {text: w.payout_status || "–"})));
    }, "No award yet.", 6);
    rows("cycles", j.cycles, (c) => h("tr", {},
      h("td", {class: "num", text: c.cycle}), h("td", {class: "num", text: money(c.seed, cur)}),
      h("td", {class: "mono opt", title: c.commitment, text: short(c.commitment)}), h("td", {text: when(c.started_at)}),
      h("td", {class: "num", text: c.hit_value !== null ? money(c.hit_value, cur) : "–"}), h("td", {text: when(c.ended_at)})),
    "No cycle yet.", 6);
    rows("compensations", j.compensations, (c) => h("tr", {},
      h("td", {class: "mono", text: c.award_id}), h("td", {class: "num", text: money(c.amount, cur)}),
      h("td", {text: c.operator}), h("td", {class: "wrap", text: c.reason}), h("td", {text: c.state})),
    "No compensation.", 5);
  }
  // Micro units (millionths of the minor unit) as an amount with the extra digits: 5002500000 -> €50.025.
  function micro(value, currency) {
    let units = BigInt(String(value ?? 0).split(".")[0]);
    const sign = units < 0n ? "−" : "";
    if (units < 0n) units = -units;
    const text = Money.format((units / 1000000n).toString(), currency);
    const extra = (units % 1000000n).toString().padStart(6, "0").replace(/0+$/, "");
    if (!extra) return sign + text;
    const digits = Money.exponent(currency) ? extra : `.${extra}`;
    return sign + text.replace(/(\d)(\D*)$/, `$1${digits}$2`);
  }
  function rowsOfFacts(facts) {
    const key = JSON.stringify(facts);
    if (S.shown.facts === key) return;
    S.shown.facts = key;
    $("jackpot-facts").replaceChildren(...facts.map(([label, value]) =>
      h("div", {}, h("dt", {text: label}), h("dd", {title: String(value), text: String(value)}))));
  }

  async function setJackpotStatus(wanted) {
    const id = S.jackpotId;
    const texts = {
      active: [`Activate ${id}?`, "It takes contributions again and can hit.", "Activate"],
      paused: [`Pause ${id}?`, "It keeps its value and refuses contributions until it is activated again.", "Pause"],
      audit: [`Put ${id} in audit mode?`, "It refuses contributions; unpaid awards can be rolled back (a compensating entry).", "Audit mode"],
    };
    const [title, text, confirm] = texts[wanted];
    const why = await confirmAction({title, text, confirm, danger: wanted !== "active"});
    if (why === null) return;
    say("jackpot-msg", "Sending…");
    const answer = await call("POST", `/ops/jackpots/${encodeURIComponent(id)}/status`, {status: wanted, reason: why});
    if (answer.status !== 202) { refused("jackpot-msg", "The status change", answer); return; }
    say("jackpot-msg", `Status change to ${wanted} sent: the pool applies it in a moment.`, "ok");
  }

  async function saveJackpot() {
    const form = $("jackpot-config");
    const changes = changedFields(form, JACKPOT_FIELDS, "jackpot-config-msg");
    if (changes === null) return;
    if (!Object.keys(changes).length) { say("jackpot-config-msg", "Nothing changed."); return; }
    say("jackpot-config-msg", "Sending…");
    const answer = await call("POST", `/ops/jackpots/${encodeURIComponent(S.jackpotId)}/config`, changes);
    if (answer.status !== 202) { refused("jackpot-config-msg", "The parameters", answer); return; }
    buildFields(form, JACKPOT_FIELDS, answer.body.pending, "jp", saveJackpot, "Save parameters");
    say("jackpot-config-msg", `Saved (${Object.keys(changes).join(", ")}): pending until the next reset, never mid-cycle.`, "ok");
  }

  async function verifyJackpot() {
    say("jackpot-msg", "Verifying…");
    const answer = await call("GET", `/ops/jackpots/${encodeURIComponent(S.jackpotId)}/verify`);
    if (answer.status !== 200) { refused("jackpot-msg", "The verification", answer); return; }
    const report = answer.body;
    if (report.failures.length) {
      say("jackpot-msg", `Commitments that do not verify: ${report.failures.map((f) => `cycle ${f.cycle}: ${f.problems.join(", ")}`).join("; ")}`, "bad");
    } else if (!report.checked) {
      say("jackpot-msg", "No commitment revealed yet: a must-hit-by pool reveals its hit value and nonce at each hit.", "ok");
    } else {
      say("jackpot-msg", `${report.checked} revealed commitment${report.checked > 1 ? "s" : ""} checked: each hit was the committed value.`, "ok");
    }
  }

  async function reconcileJackpot() {
    const id = S.jackpotId;
    say("jackpot-msg", "Asking the pool for a snapshot…");
    const answer = await call("POST", `/ops/jackpots/${encodeURIComponent(id)}/reconcile`, {});
    if (answer.status !== 202) { refused("jackpot-msg", "The reconciliation", answer); return; }
    const requestId = answer.body.request_id;
    say("jackpot-msg", `Reconciliation ${requestId} asked: its result appears below in a moment.`, "ok");
    for (let i = 0; i < 30 && S.jackpotId === id; i++) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      await loadJackpot(false);
      const found = S.jackpot && S.jackpot.reconciliations.find((r) => r.request_id === requestId);
      if (found) {
        const exact = Number(found.difference_micro) === 0;
        say("jackpot-msg", exact ? "Reconciled: the pool equals seeds + contributions − awards + compensations in MySQL, to the micro unit."
          : `Reconciled: the pool differs from MySQL by ${found.difference_micro} µ.`, exact ? "ok" : "bad");
        return;
      }
    }
  }

  async function feedJackpot(feed) {
    const channel = $("feed-channel").value.trim();
    say("feeds-msg", "Sending…");
    const answer = await call("POST", `/ops/jackpots/${encodeURIComponent(S.jackpotId)}/feeds`, {channel_id: channel, feed});
    if (answer.status !== 202) { refused("feeds-msg", "The change", answer); return; }
    say("feeds-msg", `${channel} ${feed ? "feeds" : "stops feeding"} the jackpot from its next term.`, "ok");
  }

  // ---------------------------------------------------------------- the audit log
  function requestSummary(r) {
    if (!r || typeof r !== "object") return String(r || "");
    const body = r.body || {};
    return [r.method, r.path, body.reason ? `“${body.reason}”` : null, r.address ? `from ${r.address}` : null]
      .filter(Boolean).join(" ")
      || Object.entries(r).slice(0, 4).map(([k, v]) => `${k} ${typeof v === "object" ? "…" : v || "–"}`).join(", ");
  }
  async function loadAudit() {
    const answer = await call("GET", `/ops/audit?limit=100${S.auditBefore ? "&before=" + S.auditBefore : ""}`);
    const chain = $("chain");
    if (answer.status !== 200) {
      chain.textContent = `The audit log is not shown: ${reason(answer)}`;
      chain.className = "chain bad";
      rows("audit", [], null, "–", 8);
      return;
    }
    const log = answer.body, c = log.chain;
    chain.textContent = c.first_seq === null ? "The audit log is empty."
      : c.intact ? `Chain intact: rows ${c.first_seq}–${c.last_seq} checked; the log's head is row ${c.head_seq}.`
        : `Chain broken: ${c.problems.join("; ")}`;
    $("chain-how").textContent = c.first_seq === null ? "" : `Checked: ${c.checked}.`;
    chain.className = `chain ${c.intact ? "ok" : "bad"}`;
    // Each row, then what it was asked (method, path, body) on a line of its own below it.
    rows("audit", log.rows, (r) => [h("tr", {"data-testid": `audit-${r.seq}`},
      h("td", {class: "num", text: r.seq}), h("td", {text: when(r.ts)}), h("td", {text: r.actor}),
      h("td", {text: r.action}), h("td", {class: "mono opt", text: r.target || "–"}),
      h("td", {class: "mono opt", text: r.key_id || "–"}),
      h("td", {class: r.ok ? "ok-text" : "bad-text wrap", title: r.problems.join("; "),
               text: r.ok ? "✓" : `✗ ${r.problems.join("; ")}`})),
    h("tr", {class: "request"}, h("td", {}), h("td", {class: "wrap", colspan: 6},
      h("details", {}, h("summary", {text: requestSummary(r.request)}), h("code", {text: JSON.stringify(r.request, null, 1)}))))],
    "No row.", 7);
    $("audit-older").classList.toggle("hidden", !log.next_before);
    $("audit-older").onclick = () => { S.auditBefore = log.next_before; loadAudit(); };
  }

  // ---------------------------------------------------------------- wiring
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("start").addEventListener("click", () => channelCommand("start"));
  $("abort").addEventListener("click", () => channelCommand("abort"));
  $("create-channel").addEventListener("submit", createChannel);
  $("payout-status").addEventListener("change", () => { S.shown.payouts = null; loadPayouts(); });
  for (const button of document.querySelectorAll("[data-status]")) {
    button.addEventListener("click", () => setJackpotStatus(button.dataset.status));
  }
  $("jackpot-verify").addEventListener("click", verifyJackpot);
  $("jackpot-reconcile").addEventListener("click", reconcileJackpot);
  $("jackpot-feeds").addEventListener("submit", (event) => {
    event.preventDefault();
    feedJackpot(!(event.submitter && event.submitter.dataset.feed === "false"));
  });
  $("audit-newest").addEventListener("click", () => { S.auditBefore = null; loadAudit(); });
  window.addEventListener("hashchange", route);
  for (const kind of ["pointerdown", "keydown"]) {
    document.addEventListener(kind, () => { S.lastActivity = Date.now(); }, {passive: true});
  }

  setInterval(() => {
    if (!S.me || document.hidden) return;
    if (Date.now() - S.lastActivity > IDLE_MS) { status("updates paused while you are away"); return; }
    refresh(false);
  }, POLL_MS);
  setInterval(() => {
    // Refreshed on use: while the operator works, and once the session is due to lapse (the
    // answer says whether it still lives: a 401 brings the login back with its reason).
    if (!S.me) return;
    const working = Date.now() - S.lastActivity < KEEPALIVE_MS && Date.now() - S.lastKeepalive >= KEEPALIVE_MS;
    if (working || Date.now() >= S.me.expires_at) { S.lastKeepalive = Date.now(); keepalive(); }
  }, 5000);

  async function main() {
    const answer = await call("GET", "/ops/session");
    if (answer.status === 200) loggedIn(answer.body);
    else loggedOut(answer.body && SESSION_ERRORS.has(answer.body.error) && answer.body.error !== "no_session"
      ? reason(answer) : (answer.status === 401 ? "" : `crash-ops: ${reason(answer)}`), "bad");
  }
  main();
})();
