// The player's page: live over the push gateway's WebSocket, actions on the bet API.
// Plain JavaScript, no build step (see README): the curve is drawn here from flying_at and the
// growth rate, m(t) = floor(100 e^(g t)) / 100; every amount shown comes from the server's
// integers (money.js); floats only draw.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const LAG_MS = 600;           // no frame for this long while flying: freeze and say so
  const STATES = ["pre_start", "starting", "flying", "crashed", "aborted", "closed"];
  const REASONS = {
    betting_closed: "betting is closed for this round",
    late: "it arrived after the bets were sealed",
    insufficient_funds: "not enough balance",
    below_min_bet: "below the minimum bet",
    above_max_bet: "above the maximum bet",
    max_bets_per_user: "you already have the most bets allowed this round",
    unsupported_currency: "this currency is not played here",
    invalid_amount: "the amount is not valid",
    invalid_auto_cashout: "the auto cash-out is not valid",
    term_aborted: "the round was cancelled",
    clock_skew: "your request carried a wrong time",
    unknown_bet: "no such bet",
    not_your_bet: "that bet is not yours",
    cancelled: "the bet was cancelled",
    not_flying: "the round is not flying",
    crashed: "too late: it crashed first",
    already_cashed_out: "already cashed out",
    term_over: "the round is over",
    session_expired: "your session has expired: open the game again from the casino",
    bad_session: "your session is not valid",
    no_session: "log in at the casino to play",
    wallet_unavailable: "the wallet did not answer; press again",
    decision_timeout: "no answer in time; press again",
    order_no_taken: "this bet number was already used",
    bad_request: "the request was not valid",
  };

  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  let token = fragment.get("token") || sessionStorage.getItem("crash.token") || "";
  if (fragment.get("token")) {
    sessionStorage.setItem("crash.token", token);
    history.replaceState(null, "", location.pathname + location.search);   // not left in the address bar
  }

  const S = {
    api: "", channelId: params.get("channel") || "", config: null, term: null, bets: new Map(), history: [],
    jackpots: {}, you: null, currency: null, balance: null, offset: null, offsets: [], lastFrame: 0,
    connected: false, ws: null, retry: 0, frozenAt: null,
  };
  window.crashPage = S;   // for the browser tests and the curious

  // ---------------------------------------------------------------- time
  function serverNow() { return Date.now() + (S.offset || 0); }
  function sampleClock(ts) {
    // A frame's ts is the server's time when it was sent: ts - local arrival <= the offset.
    S.offsets.push(ts - Date.now());
    if (S.offsets.length > 30) S.offsets.shift();
    S.offset = Math.max(...S.offsets);
  }
  function growth() { return Number((S.term && S.term.growth_per_ms) || (S.config && S.config.growth_per_ms) || 0.00006); }
  function multipleAt(elapsedMs) {          // hundredths, as the server computes it
    if (elapsedMs <= 0) return 100;
    return Math.max(100, Math.floor(100 * Math.exp(growth() * elapsedMs)));
  }

  // ---------------------------------------------------------------- answers
  function say(text, kind) {
    const li = document.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    if (kind) li.className = kind;
    const list = $("answers");
    list.prepend(li);
    while (list.children.length > 5) list.lastChild.remove();
  }
  function reasonText(body) {
    const code = body && (body.reason && REASONS[body.reason] ? body.reason : body.error);
    return REASONS[code] || (body && (body.reason || body.error)) || "unknown reason";
  }

  async function api(method, path, body) {
    if (!token) return {status: 401, body: {error: "no_session", reason: REASONS.no_session}};
    try {
      const response = await fetch(S.api + path, {
        method, headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
        body: body === undefined ? undefined : JSON.stringify(body)});
      let data = null;
      try { data = await response.json(); } catch (e) { data = {error: "bad_answer", reason: `HTTP ${response.status}`}; }
      return {status: response.status, body: data};
    } catch (error) {
      return {status: 0, body: {error: "network", reason: "no connection to the game server; press again"}};
    }
  }

  async function refreshBalance() {
    if (!token || !S.currency) return;
    const {status, body} = await api("GET", `/v1/page/balance?currency=${S.currency}`);
    if (status === 200) { S.balance = body.balance; $("balance").textContent = Money.format(body.balance, S.currency); }
    else if (status === 401) sessionRefused(body);
  }
  function sessionRefused(body) {
    say(`Session refused: ${reasonText(body)}`, "bad");
    token = "";
    sessionStorage.removeItem("crash.token");
    $("player").textContent = "watching";
    renderSlots();
  }

  // ---------------------------------------------------------------- bets of the page
  const slots = [0, 1].map((i) => ({
    index: i, amount: "1.00", auto: i === 0, target: "2.00", status: "idle", order: null, betId: null,
    termId: null, stake: 0, msg: "", msgKind: "", autoplay: false}));

  function newOrder() {
    const random = crypto.getRandomValues(new Uint8Array(8));
    return "pg-" + Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  function limits() { return S.config && S.config.currencies && S.config.currencies[S.currency]; }

  function slotMessage(slot, text, kind) { slot.msg = text; slot.msgKind = kind || ""; }

  async function place(slot, fromAutoplay) {
    const amount = Money.parse(slot.amount, S.currency);
    if (amount === null || amount <= 0) { slotMessage(slot, "Enter an amount, e.g. 1.00", "bad"); renderSlots(); return; }
    let target = null;
    if (slot.auto) {
      target = Money.parseMultiple(slot.target);
      if (target === null || target < 101) { slotMessage(slot, "Auto cash-out from 1.01x", "bad"); renderSlots(); return; }
    }
    const term = S.term;
    slot.status = "placing"; slot.order = newOrder(); slot.termId = term && term.term_id; slot.stake = amount;
    slot.autoplay = !!fromAutoplay;
    slotMessage(slot, "placing…");
    renderSlots();
    const body = {channel_id: S.channelId, api_order_no: slot.order, amount, currency: S.currency};
    if (target !== null) body.auto_cashout_x100 = target;
    let answer = await api("POST", "/v1/page/bets", body);
    if (answer.status === 503 || answer.status === 0) answer = await api("POST", "/v1/page/bets", body);  // same order: same decision
    const label = `Bet ${slot.index + 1}`;
    if (answer.status === 200 && answer.body.status === "accepted") {
      slot.status = "placed"; slot.betId = answer.body.bet_id; slot.termId = answer.body.term_id || slot.termId;
      slotMessage(slot, `Accepted: ${Money.format(amount, S.currency)}` + (target ? `, auto at ${Money.multiple(target)}` : ""), "ok");
      say(`${label} accepted (${Money.format(amount, S.currency)})`, "ok");
    } else {
      slot.status = "idle"; slot.betId = null;
      const why = reasonText(answer.body);
      slotMessage(slot, `Refused: ${why}`, "bad");
      say(`${label} refused: ${why}`, "bad");
      if (answer.status === 401) sessionRefused(answer.body);
      if (fromAutoplay) stopAutoplay(`a bet was refused (${why})`);
    }
    refreshBalance();
    renderSlots();
  }

  async function cancel(slot) {
    slot.status = "cancelling"; renderSlots();
    const {status, body} = await api("POST", `/v1/page/bets/${S.channelId}/${slot.order}/cancel`);
    if (status === 200 && body.status === "accepted") {
      slot.status = "idle"; slot.betId = null;
      slotMessage(slot, "Cancelled: the stake is refunded", "ok");
      say(`Bet ${slot.index + 1} cancelled`, "ok");
    } else {
      slot.status = "placed";
      slotMessage(slot, `Cancel refused: ${reasonText(body)}`, "bad");
      say(`Bet ${slot.index + 1} cancel refused: ${reasonText(body)}`, "bad");
    }
    refreshBalance();
    renderSlots();
  }

  async function cashout(slot) {
    slot.status = "cashing"; renderSlots();
    const {status, body} = await api("POST", `/v1/page/bets/${S.channelId}/${slot.order}/cashout`);
    if (status === 200 && body.status === "accepted") {
      cashedOut(slot, body.multiple_x100, body.payout);
    } else if (slot.status === "cashing") {
      slot.status = body && body.reason === "already_cashed_out" ? slot.status : "placed";
      slotMessage(slot, `Cash-out refused: ${reasonText(body)}`, "bad");
      say(`Bet ${slot.index + 1} cash-out refused: ${reasonText(body)}`, "bad");
    }
    renderSlots();
  }

  function cashedOut(slot, x100, payout) {
    if (slot.status === "cashed") return;
    slot.status = "cashed"; slot.payout = payout;
    slotMessage(slot, `Cashed out at ${Money.multiple(x100)}: ${Money.format(payout, S.currency, true)}`, "ok");
    say(`Bet ${slot.index + 1} cashed out at ${Money.multiple(x100)} (${Money.format(payout, S.currency)})`, "ok");
    if (slot.autoplay) Auto.result(slot.payout - slot.stake);
  }

  function onSlotButton(slot) {
    const term = S.term;
    const open = term && term.state === "pre_start" && serverNow() < term.bets_close_at;
    if (slot.status === "placed" && term && term.term_id === slot.termId) {
      if (term.state === "pre_start") return cancel(slot);
      if (term.state === "flying") return cashout(slot);
      return;
    }
    if (slot.status === "queued") { slot.status = "idle"; slotMessage(slot, "Not queued any more"); renderSlots(); return; }
    if (["placing", "cashing", "cancelling"].includes(slot.status)) return;
    if (!token) { slotMessage(slot, REASONS.no_session, "bad"); renderSlots(); return; }
    if (open) return place(slot, false);
    slot.status = "queued";
    slotMessage(slot, "Queued: placed as soon as the next round opens");
    renderSlots();
  }

  // A new round: finished bets make room, queued ones are placed.
  function onNewTerm() {
    for (const slot of slots) {
      if (["cashed", "lost", "placed"].includes(slot.status) && slot.termId !== S.term.term_id) slot.status = "idle";
      if (slot.status === "queued") place(slot, false);
    }
    Auto.round();
  }
  function onSettled(termId) {
    for (const slot of slots) {
      if (slot.status === "placed" && slot.termId === termId) {
        slot.status = "lost";
        slotMessage(slot, `Lost ${Money.format(slot.stake, S.currency)}`, "bad");
        if (slot.autoplay) Auto.result(-slot.stake);
      }
    }
    Auto.roundOver(termId);
    renderSlots();
  }

  // ---------------------------------------------------------------- auto-play
  const Auto = {
    running: false, rounds: 0, limit: null, profit: 0, profitStop: null, lossStop: null, lastTerm: null, pending: 0,
    start() {
      const playing = slots.filter((s) => s.auto);
      if (!token) return this.status(REASONS.no_session, true);
      if (!playing.length) return this.status("Set an auto cash-out on a bet first: auto-play places those.", true);
      const rounds = $("ap-rounds").value.trim();
      this.limit = rounds ? Number.parseInt(rounds, 10) : null;
      if (rounds && !(this.limit > 0)) return this.status("Rounds must be a whole number above 0.", true);
      const profit = $("ap-profit").value.trim(), loss = $("ap-loss").value.trim();
      this.profitStop = profit ? Money.parse(profit, S.currency) : null;
      this.lossStop = loss ? Money.parse(loss, S.currency) : null;
      if ((profit && this.profitStop === null) || (loss && this.lossStop === null)) return this.status("Profit and loss are amounts such as 5.00.", true);
      this.running = true; this.rounds = 0; this.profit = 0; this.lastTerm = null;
      $("ap-toggle").textContent = "Stop";
      this.status("Auto-play on: bets go in at the start of each round.");
      this.round();
    },
    round() {
      if (!this.running || !S.term || S.term.state !== "pre_start" || this.lastTerm === S.term.term_id) return;
      if (serverNow() > S.term.bets_close_at - 150) return;
      this.lastTerm = S.term.term_id;
      for (const slot of slots) {
        if (slot.auto && ["idle", "cashed", "lost"].includes(slot.status)) place(slot, true);
      }
    },
    result(delta) { this.profit += delta; this.progress(); },
    roundOver(termId) {
      if (!this.running || termId !== this.lastTerm) return;
      this.rounds += 1;
      const f = (v) => Money.format(v, S.currency);
      if (this.limit !== null && this.rounds >= this.limit) return stopAutoplay(`${this.rounds} round${this.rounds > 1 ? "s" : ""} played (result ${Money.format(this.profit, S.currency, true)})`);
      if (this.profitStop !== null && this.profit >= this.profitStop) return stopAutoplay(`profit target reached (${Money.format(this.profit, S.currency, true)} ≥ ${f(this.profitStop)})`);
      if (this.lossStop !== null && -this.profit >= this.lossStop) return stopAutoplay(`loss limit reached (${Money.format(this.profit, S.currency, true)}, limit ${f(this.lossStop)})`);
      this.progress();
    },
    progress() {
      if (this.running) this.status(`Auto-play on: ${this.rounds} round${this.rounds === 1 ? "" : "s"}, result ${Money.format(this.profit, S.currency, true)}`);
    },
    status(text, stopped) { const el = $("ap-status"); el.textContent = text; el.classList.toggle("stopped", !!stopped); },
  };
  function stopAutoplay(why) {
    Auto.running = false;
    $("ap-toggle").textContent = "Start";
    Auto.status(`Auto-play stopped: ${why}.`, true);
    say(`Auto-play stopped: ${why}`);
  }
  $("ap-toggle").addEventListener("click", () => (Auto.running ? stopAutoplay("you stopped it") : Auto.start()));

  // ---------------------------------------------------------------- slots UI
  function buildSlots() {
    for (const slot of slots) {
      const el = document.querySelector(`.slot[data-slot="${slot.index}"]`);
      el.innerHTML = `
        <div class="row"><label>Bet ${slot.index + 1}</label></div>
        <div class="row">
          <input type="text" inputmode="decimal" class="amount" aria-label="amount of bet ${slot.index + 1}" data-testid="amount-${slot.index}">
          <button class="chip half">½</button><button class="chip double">2×</button>
        </div>
        <div class="row auto">
          <label><input type="checkbox" class="auto-on" data-testid="auto-on-${slot.index}"> Auto cash-out at</label>
          <input type="text" inputmode="decimal" class="target" aria-label="auto cash-out of bet ${slot.index + 1}" data-testid="target-${slot.index}">
        </div>
        <button class="action" data-testid="action-${slot.index}"></button>
        <div class="msg" data-testid="msg-${slot.index}"></div>`;
      const amount = el.querySelector(".amount"), target = el.querySelector(".target"), auto = el.querySelector(".auto-on");
      amount.value = slot.amount; target.value = slot.target; auto.checked = slot.auto;
      amount.addEventListener("input", () => { slot.amount = amount.value; renderSlots(); });
      target.addEventListener("input", () => { slot.target = target.value; });
      auto.addEventListener("change", () => { slot.auto = auto.checked; renderSlots(); });
      const scale = (num, den) => {
        const value = Money.parse(slot.amount, S.currency || "EUR");
        if (value === null) return;
        const lim = limits();
        let next = Math.floor((value * num) / den);
        if (lim) next = Math.min(lim.max_bet, Math.max(lim.min_bet, next));
        slot.amount = Money.format(next, "XXX").replace(/ XXX$/, "").replace(/,/g, "");
        amount.value = slot.amount; renderSlots();
      };
      el.querySelector(".half").addEventListener("click", () => scale(1, 2));
      el.querySelector(".double").addEventListener("click", () => scale(2, 1));
      el.querySelector(".action").addEventListener("click", () => onSlotButton(slot));
      slot.el = el;
    }
  }

  function renderSlots() {
    const term = S.term;
    const now = serverNow();
    for (const slot of slots) {
      const button = slot.el.querySelector(".action");
      const busy = ["placing", "cashing", "cancelling"].includes(slot.status);
      const mine = term && slot.termId === term.term_id;
      let text, cls = "action", disabled = busy;
      const amount = Money.parse(slot.amount, S.currency || "EUR");
      const shown = amount === null ? "" : Money.format(amount, S.currency || "EUR");
      if (busy) text = {placing: "Placing…", cashing: "Cashing out…", cancelling: "Cancelling…"}[slot.status];
      else if (slot.status === "placed" && mine && term.state === "pre_start") { text = "Cancel"; cls += " cancel"; }
      else if (slot.status === "placed" && mine && term.state === "flying") {
        const x = S.frozenAt !== null ? S.frozenAt : multipleAt(now - term.flying_at);
        text = `Cash out ${Money.format(Money.payout(slot.stake, x), S.currency)}`; cls += " cashout";
      } else if (slot.status === "placed" && mine) { text = "Waiting for take-off"; disabled = true; }
      else if (slot.status === "queued") { text = `Queued ${shown} — tap to unqueue`; cls += " queued"; }
      else if (term && term.state === "pre_start" && now < term.bets_close_at) text = `Bet ${shown}`;
      else { text = `Bet ${shown} next round`; cls += " queued"; }
      button.textContent = text;
      button.className = cls;
      button.disabled = disabled;
      const msg = slot.el.querySelector(".msg");
      msg.textContent = slot.msg;
      msg.className = "msg " + slot.msgKind;
      slot.el.querySelectorAll("input").forEach((input) => { input.disabled = slot.status === "placed" || busy; });
    }
  }

  // ---------------------------------------------------------------- live data
  function applyOp(op) {
    switch (op.k) {
      case "term": setTerm(op.term); break;
      case "tick":
        if (S.term && S.term.term_id === op.term_id) S.term.multiple_x100 = op.m;
        break;
      case "bet":
        if (S.term && op.bet.term_id === S.term.term_id) {
          S.bets.set(op.bet.bet_id, op.bet);
          const slot = slots.find((s) => s.betId === op.bet.bet_id);
          if (op.bet.status === "cashed_out") {
            if (slot && (slot.status === "placed" || slot.status === "cashing")) cashedOut(slot, op.bet.multiple_x100, op.bet.payout);
          } else if (op.bet.status === "voided" && slot && slot.status === "placed") {
            slot.status = "idle"; slot.betId = null;
            slotMessage(slot, "The round was cancelled: your stake is refunded", "bad");
            say(`Bet ${slot.index + 1}: the round was cancelled, the stake is refunded`, "bad");
            refreshBalance();
            renderSlots();
          }
        }
        break;
      case "settled":
        for (const bet of S.bets.values()) if (bet.status === "open") bet.status = "lost";
        onSettled(op.term_id);
        break;
      case "hist":
        if (!S.history.some((h) => h.term_id === op.item.term_id)) { S.history.unshift(op.item); S.history.length = Math.min(S.history.length, 50); }
        renderHistory();
        break;
      case "config": S.config = op.config; renderJackpots(); break;
      case "jackpot": S.jackpots[op.jackpot.jackpot_id] = op.jackpot; renderJackpots(); break;
      case "jackpot_hit": jackpotHit(op); break;
    }
  }

  function setTerm(term) {
    const fresh = !S.term || S.term.term_id !== term.term_id;
    if (!fresh && STATES.indexOf(term.state) < STATES.indexOf(S.term.state) && term.state !== "closed") return;
    if (fresh) S.bets = new Map();
    S.term = term;
    if (fresh && term.state === "pre_start") onNewTerm();
    if (term.state === "closed") onSettled(term.term_id);
  }

  function onHello(frame) {
    S.you = frame.you;
    $("player").textContent = frame.you ? frame.you.user_id : "watching";
    const channel = frame.channel;
    if (channel) {
      S.config = channel.config;
      S.history = channel.history || [];
      S.term = null;
      if (channel.term) setTerm(channel.term);
      S.bets = new Map((channel.bets || []).map((b) => [b.bet_id, b]));
      $("channel-name").textContent = (channel.config && channel.config.name) || S.channelId;
      const currencies = Object.keys((channel.config && channel.config.currencies) || {}).sort();
      if (!S.currency || !currencies.includes(S.currency)) S.currency = params.get("currency") || currencies[0] || "EUR";
    }
    S.jackpots = frame.jackpots || {};
    renderHistory(); renderJackpots(); renderSlots();
    refreshBalance();
  }

  // ---------------------------------------------------------------- WebSocket
  function connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/channel/${encodeURIComponent(S.channelId)}`;
    const ws = new WebSocket(url);
    S.ws = ws;
    let helloSeen = false;
    ws.onopen = () => ws.send(JSON.stringify(token ? {t: "hello", token} : {t: "hello"}));
    ws.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.ts) sampleClock(frame.ts);
      S.lastFrame = performance.now();
      if (frame.t === "hello") { helloSeen = true; S.retry = 0; S.connected = true; onHello(frame); setLink(true); return; }
      if (frame.t === "error") {
        if (["session_expired", "bad_session", "no_session"].includes(frame.error)) sessionRefused(frame);
        else { say(`The game server refused the connection: ${reasonText(frame)}`, "bad"); S.fatal = frame.error === "unknown_channel"; }
        return;
      }
      if (!helloSeen) return;       // anything before the snapshot is in the snapshot
      if (frame.t === "delta") frame.ops.forEach(applyOp);
      else if (frame.t === "wallet") refreshBalance();
    };
    ws.onclose = () => {
      S.connected = false; setLink(false);
      if (S.fatal) { $("phase").textContent = "no such channel"; return; }
      const delay = Math.min(5000, 300 * 2 ** S.retry) * (0.7 + Math.random() * 0.6);
      S.retry = Math.min(S.retry + 1, 5);
      setTimeout(connect, delay);
    };
  }
  function setLink(up) { const dot = $("link"); dot.className = "dot " + (up ? "up" : "down"); dot.title = up ? "live" : "reconnecting"; }

  // ---------------------------------------------------------------- drawing
  const canvas = $("curve");
  const ctx = canvas.getContext("2d");
  function draw() {
    const term = S.term;
    const now = serverNow();
    const big = $("big"), phase = $("phase"), lag = $("lag");
    const stale = performance.now() - S.lastFrame > LAG_MS;
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    let showLag = false;
    if (!term) { big.textContent = "–"; phase.textContent = S.connected ? "waiting for the next round" : "connecting…"; }
    else if (term.state === "pre_start") {
      big.textContent = "1.00x"; big.className = "big";
      const left = Math.max(0, term.bets_close_at - now);
      phase.textContent = `Next round in ${(left / 1000).toFixed(1)} s — place your bets`;
    } else if (term.state === "starting") {
      big.textContent = "1.00x"; big.className = "big";
      phase.textContent = `Taking off in ${(Math.max(0, term.flying_at - now) / 1000).toFixed(1)} s`;
    } else if (term.state === "flying") {
      let elapsed = now - term.flying_at;
      if (stale || !S.connected) {
        // Frames stopped: freeze where the last frame left us rather than draw a guess.
        if (S.frozenAt === null) S.frozenAt = multipleAt(elapsed - (performance.now() - S.lastFrame));
        showLag = true;
      } else S.frozenAt = null;
      const x100 = S.frozenAt !== null ? S.frozenAt : multipleAt(elapsed);
      if (S.frozenAt !== null) elapsed = Math.log(S.frozenAt / 100) / growth();
      big.textContent = Money.multiple(x100); big.className = "big";
      phase.textContent = "Flying";
      curve(elapsed, x100, w, h, "#2ecc71");
    } else {
      S.frozenAt = null;
      const crash = term.crash_x100;
      big.textContent = term.state === "aborted" || term.aborted ? "Round void" : `Crashed @ ${Money.multiple(crash)}`;
      big.className = "big crashed";
      phase.textContent = term.state === "closed" ? "Round over — next one soon" : "Settling…";
      if (crash && !(term.aborted)) curve(Math.log(crash / 100) / growth(), crash, w, h, "#ff5d5d");
    }
    if (!S.connected && S.lastFrame) showLag = true;
    lag.classList.toggle("hidden", !showLag);
    lag.textContent = S.connected ? "Connection lag — waiting for the server…" : "Reconnecting to the game…";
    if (term && (term.state === "pre_start" || term.state === "flying")) renderSlots();
    requestAnimationFrame(draw);
  }
  function curve(elapsedMs, x100, w, h, color) {
    const spanT = Math.max(elapsedMs, 8000) * 1.1;
    const spanM = Math.max(x100 / 100, 2) * 1.1;
    const px = (t) => 30 + (t / spanT) * (w - 40);
    const py = (m) => h - 20 - ((m - 1) / (spanM - 1)) * (h - 40);
    ctx.strokeStyle = "#2a3550"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(30, 10); ctx.lineTo(30, h - 20); ctx.lineTo(w - 10, h - 20); ctx.stroke();
    ctx.strokeStyle = color; ctx.lineWidth = 3; ctx.beginPath();
    const steps = 80;
    for (let i = 0; i <= steps; i++) {
      const t = (elapsedMs * i) / steps;
      const m = Math.floor(100 * Math.exp(growth() * t)) / 100;
      if (i === 0) ctx.moveTo(px(t), py(m)); else ctx.lineTo(px(t), py(m));
    }
    ctx.stroke();
  }

  // ---------------------------------------------------------------- lists
  function renderHistory() {
    const el = $("history");
    el.innerHTML = "";
    for (const item of S.history) {
      const a = document.createElement("a");
      a.href = `/verify/?term=${encodeURIComponent(item.term_id)}`;
      a.dataset.term = item.term_id;
      a.title = `${item.term_id}: check its proof`;
      a.textContent = item.aborted ? "void" : Money.multiple(item.crash_x100);
      a.className = item.aborted ? "void" : item.crash_x100 >= 1000 ? "high" : item.crash_x100 >= 200 ? "mid" : "";
      el.appendChild(a);
    }
  }

  let listTimer = null;
  function renderBets() {
    const body = $("bets");
    const bets = [...S.bets.values()].filter((b) => b.status !== "cancelled");
    bets.sort((a, b) => (b.status === "cashed_out") - (a.status === "cashed_out") || b.amount - a.amount);
    const totals = {};
    for (const b of bets) totals[b.currency] = (totals[b.currency] || 0) + b.amount;
    $("round-summary").textContent = `${bets.length} bet${bets.length === 1 ? "" : "s"}` +
      Object.entries(totals).map(([c, v]) => ` · ${Money.format(v, c)}`).join("");
    const rows = bets.slice(0, 60).map((b) => {
      const mine = S.you && b.tag === S.you.tag;
      const x = b.status === "cashed_out" ? Money.multiple(b.multiple_x100) : b.status === "voided" ? "void" : "";
      const win = b.status === "cashed_out" ? Money.format(b.payout, b.currency) : b.status === "lost" ? "–" : "";
      return `<tr class="${b.status}${mine ? " mine" : ""}" data-bet="${b.bet_id}"><td>${mine ? "you" : escapeHtml(b.name)}</td>` +
        `<td class="num">${Money.format(b.amount, b.currency)}</td><td class="num">${x}</td><td class="num">${win}</td></tr>`;
    });
    body.innerHTML = rows.join("");
    $("bets-more").textContent = bets.length > 60 ? `and ${bets.length - 60} more` : "";
  }
  function escapeHtml(text) { return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }

  // ---------------------------------------------------------------- jackpots
  const shownJackpot = {};
  function renderJackpots() {
    const el = $("jackpots");
    const ids = (S.config && S.config.jackpots) || [];
    for (const child of [...el.children]) if (!ids.includes(child.dataset.jackpot)) child.remove();
    for (const id of ids) {
      const jp = S.jackpots[id];
      let card = el.querySelector(`[data-jackpot="${CSS.escape(id)}"]`);
      if (!card) {
        card = document.createElement("div");
        card.className = "jackpot"; card.dataset.jackpot = id; card.dataset.testid = "jackpot";
        card.innerHTML = `<div class="jp-head"><span class="jp-name"></span><span class="jp-tier"></span></div>
          <div class="jp-value" data-testid="jackpot-value">–</div><div class="bar"><span style="width: 0%"></span></div><div class="jp-foot"></div>`;
        el.appendChild(card);
      }
      if (!jp || !jp.currency) { card.querySelector(".jp-name").textContent = id; continue; }
      card.querySelector(".jp-name").textContent = jp.name || id;
      card.querySelector(".jp-tier").textContent = jp.tier || "";
      const cap = jp.cap || 0;
      card.querySelector(".bar span").style.width = cap ? `${Math.min(100, (100 * jp.value) / cap)}%` : "0%";
      const near = jp.near_cap || (cap && jp.value * 10000 >= cap * (jp.near_cap_bps || 8000));
      const foot = card.querySelector(".jp-foot");
      const hit = jp.last_hit;
      if (near) foot.innerHTML = `<span class="near">Near the cap!</span> cap ${Money.format(cap, jp.currency)}`;
      else if (hit && hit.winners && hit.winners.length) foot.textContent = `Last won ${Money.format(hit.amount, jp.currency)} by ${winnersText(hit.winners, jp.currency)}`;
      else foot.textContent = cap ? `cap ${Money.format(cap, jp.currency)}` : "";
      tick(card, jp);
      const overlay = $("jackpot-hit");
      if (hit && hit.winners && hit.winners.length && overlay.dataset.award === hit.award_id &&
          overlay.dataset.winners !== String(hit.winners.length)) {
        overlay.dataset.winners = String(hit.winners.length);
        showHit(jp, hit);
      }
    }
  }
  function winnersText(winners, currency) {
    return winners.map((w) => `#${w.rank} ${S.you && w.tag === S.you.tag ? "you" : w.name} ${Money.format(w.bonus_amount, currency)}`).join(", ");
  }
  // Odometer: counts up to the pool's value, never past it; a reset (a hit) jumps at once.
  function tick(card, jp) {
    const valueEl = card.querySelector(".jp-value");
    const from = shownJackpot[jp.jackpot_id];
    const to = jp.value;
    if (from === undefined || to < from) { shownJackpot[jp.jackpot_id] = to; valueEl.textContent = Money.format(to, jp.currency); return; }
    const started = performance.now();
    const step = () => {
      const k = Math.min(1, (performance.now() - started) / 600);
      const value = from + Math.floor((to - from) * k);
      if ((S.jackpots[jp.jackpot_id] || {}).value !== to) return;     // a newer value took over
      shownJackpot[jp.jackpot_id] = value;
      valueEl.textContent = Money.format(value, jp.currency);
      if (k < 1) requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  }
  function jackpotHit(op) {
    const jp = S.jackpots[op.jackpot_id] || {jackpot_id: op.jackpot_id, currency: op.currency};
    const overlay = $("jackpot-hit");
    overlay.dataset.award = op.award_id;
    showHit({...jp, currency: op.currency}, {amount: op.amount, winners: []});
    S.hitShownAt = Date.now();
    const card = document.querySelector(`[data-jackpot="${CSS.escape(op.jackpot_id)}"]`);
    if (card) { card.classList.remove("hit"); void card.offsetWidth; card.classList.add("hit"); }
    say(`JACKPOT ${jp.name || op.jackpot_id}: ${Money.format(op.amount, op.currency)}!`, "ok");
  }
  function showHit(jp, hit) {
    const overlay = $("jackpot-hit");
    overlay.innerHTML = `<div>JACKPOT ${escapeHtml(jp.name || jp.jackpot_id)}</div>` +
      `<div class="amount" data-testid="jackpot-hit-amount">${Money.format(hit.amount, jp.currency)}</div>` +
      `<div class="winners" data-testid="jackpot-winners">${hit.winners && hit.winners.length ? "Won by " + escapeHtml(winnersText(hit.winners, jp.currency)) : "Winners being ranked…"}</div>`;
    overlay.classList.remove("hidden");
    // Shown for a while after the hit, and again when the winners are known.
    clearTimeout(showHit.timer);
    showHit.timer = setTimeout(() => overlay.classList.add("hidden"), 8000);
  }

  // ---------------------------------------------------------------- start
  async function main() {
    buildSlots();
    try {
      const config = await (await fetch("/play/config.json")).json();
      S.api = config.api_url;
      if (!S.channelId) S.channelId = config.channels[0] || "";
    } catch (e) { say("The game server did not answer; retrying", "bad"); setTimeout(main, 2000); return; }
    if (!S.channelId) { $("phase").textContent = "no channel is running"; return; }
    connect();
    requestAnimationFrame(draw);
    setInterval(renderBets, 250);
    setInterval(() => Auto.round(), 200);
    setInterval(refreshBalance, 15000);
  }
  main();
})();
