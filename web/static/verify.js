// The verifier page: DESIGN section 6 recomputed in the browser with WebCrypto, from the
// published data only (GET /v1/proofs/{term_id}) or from values pasted by hand.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TWO_52 = 1n << 52n;
  const HEX = /^[0-9a-f]{64}$/;

  function bytes(hex) { return Uint8Array.from(hex.match(/../g).map((b) => parseInt(b, 16))); }
  function hex(buffer) { return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join(""); }

  async function crashPoint(hashHex, saltHex, edgeBps, maxX100) {
    const key = await crypto.subtle.importKey("raw", bytes(saltHex), {name: "HMAC", hash: "SHA-512"}, false, ["sign"]);
    const digest = hex(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(hashHex)));
    const r = BigInt("0x" + digest.slice(0, 13));          // the first 52 bits
    let crash = (BigInt(10000 - edgeBps) * TWO_52) / ((TWO_52 - r) * 100n);   // BigInt division floors
    if (crash < 100n) crash = 100n;
    if (crash > BigInt(maxX100)) crash = BigInt(maxX100);
    return {digest, crash: Number(crash)};
  }

  // SHA-256 applied `steps` times to the raw 32 bytes; reports progress on long chains.
  async function hashSteps(hashHex, steps, progress) {
    let h = bytes(hashHex);
    for (let i = 1; i <= steps; i++) {
      h = new Uint8Array(await crypto.subtle.digest("SHA-256", h));
      if (progress && i % 2000 === 0) progress(i);
    }
    return hex(h);
  }

  function report(verdict, computed, checks) {
    const el = $("verdict");
    el.textContent = verdict === null ? "" : verdict ? "Match: this round was fair" : "Mismatch: these values do not agree";
    el.className = "verdict " + (verdict === null ? "" : verdict ? "match" : "mismatch");
    $("computed").textContent = computed;
    const list = $("checks");
    list.innerHTML = "";
    for (const [kind, text] of checks) {
      const li = document.createElement("li");
      li.className = kind; li.textContent = text;
      list.appendChild(li);
    }
  }

  async function verify(p) {
    const checks = [];
    const hashHex = (p.revealed_hash || "").toLowerCase(), saltHex = (p.salt || "").toLowerCase();
    if (!HEX.test(hashHex) || !HEX.test(saltHex)) {
      report(false, "", [["bad", "the hash and the salt must each be 64 hexadecimal characters"]]);
      return;
    }
    const edge = Number(p.edge_bps), max = Number(p.max_multiple_x100);
    if (!Number.isInteger(edge) || edge < 0 || edge > 5000 || !Number.isInteger(max) || max < 101) {
      report(false, "", [["bad", "the edge (0-5000 bps) and the max multiple (hundredths, >= 101) must be integers"]]);
      return;
    }
    report(null, "computing…", []);
    const {digest, crash} = await crashPoint(hashHex, saltHex, edge, max);
    let ok = true;
    checks.push(["info", `HMAC-SHA512 digest: ${digest}`]);
    if (p.hmac_digest) {
      const same = p.hmac_digest.toLowerCase() === digest;
      ok = ok && same;
      checks.push([same ? "ok" : "bad", same ? "the published digest is the one computed" : `the published digest differs: ${p.hmac_digest}`]);
    }
    if (p.crash_x100 !== null && p.crash_x100 !== undefined && !p.aborted) {
      const same = Number(p.crash_x100) === crash;
      ok = ok && same;
      checks.push([same ? "ok" : "bad", same ? `the published crash point ${Money.multiple(p.crash_x100)} is the one computed`
        : `the published crash point ${Money.multiple(p.crash_x100)} differs from ${Money.multiple(crash)}`]);
    } else if (p.aborted) {
      checks.push(["info", `the round was void; its committed crash point was ${Money.multiple(p.crash_x100)}`]);
    }
    if (p.prev_hash) {
      const next = await hashSteps(hashHex, 1);
      const same = next === p.prev_hash.toLowerCase();
      ok = ok && same;
      checks.push([same ? "ok" : "bad", same ? "SHA-256 of the revealed hash is the round's commitment (published before it)"
        : `SHA-256 of the revealed hash is ${next}, not the commitment ${p.prev_hash}`]);
    }
    if (p.terminator && Number.isInteger(Number(p.chain_index)) && Number(p.chain_index) > 0) {
      const k = Number(p.chain_index);
      const end = await hashSteps(hashHex, k, (i) => { $("computed").textContent = `hashing the chain: ${i} of ${k}…`; });
      const same = end === p.terminator.toLowerCase();
      ok = ok && same;
      checks.push([same ? "ok" : "bad", same ? `SHA-256 applied ${k} times gives the channel's published terminator`
        : `SHA-256 applied ${k} times gives ${end}, not the terminator ${p.terminator}`]);
    }
    report(ok, `Crash point computed: ${Money.multiple(crash)}${p.term_id ? ` for round ${p.term_id}` : ""}`, checks);
    document.body.dataset.verified = ok ? "match" : "mismatch";
  }

  async function loadTerm() {
    const termId = $("term").value.trim();
    if (!termId) return;
    report(null, "loading…", []);
    let response, body;
    try {
      response = await fetch(`/v1/proofs/${encodeURIComponent(termId)}`);
      body = await response.json();
    } catch (error) {
      report(false, "", [["bad", "the game server did not answer; try again"]]);
      return;
    }
    if (!response.ok) { report(false, "", [["bad", body.reason || `HTTP ${response.status}`]]); return; }
    for (const [field, id] of [["revealed_hash", "hash"], ["salt", "salt"], ["edge_bps", "edge"], ["max_multiple_x100", "max"],
      ["chain_index", "index"], ["terminator", "terminator"], ["prev_hash", "prev"], ["hmac_digest", "digest"]]) {
      $(id).value = body[field] === null || body[field] === undefined ? "" : body[field];
    }
    $("claimed").value = body.crash_x100 ? Money.multiple(body.crash_x100).replace("x", "") : "";
    await verify(body);
  }

  $("load").addEventListener("click", loadTerm);
  $("term").addEventListener("keydown", (e) => { if (e.key === "Enter") loadTerm(); });
  $("compute").addEventListener("click", () => {
    const claimed = $("claimed").value.trim();
    verify({revealed_hash: $("hash").value.trim(), salt: $("salt").value.trim(), edge_bps: Number($("edge").value),
      max_multiple_x100: Number($("max").value), chain_index: $("index").value.trim() ? Number($("index").value) : null,
      terminator: $("terminator").value.trim(), prev_hash: $("prev").value.trim(), hmac_digest: $("digest").value.trim(),
      crash_x100: claimed ? Money.parseMultiple(claimed) : null});
  });
  const term = new URLSearchParams(location.search).get("term");
  if (term) { $("term").value = term; loadTerm(); }
})();
