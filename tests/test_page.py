"""The player's page in a real browser (Debian's chromium driven by Playwright) against the real
stack: workers, bet API, wallet, payout adapter and push gateway as subprocesses.

What a player would check, step by step, with a screenshot of each under var/test/screens/:
the countdown, two bets (one with an auto cash-out at 1.50x, one cashed out by hand), the
crash, the balance equal to the wallet's to the cent, the history strip and its proof verified
in the browser, another player's bet in the live list, refusals with their reason, a bet queued
for the next round, auto-play stopping by itself, a jackpot ticker and its hit, and the page
recovering alone from a kill -9 of the push gateway. No console error anywhere.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect
from push_harness import PushGateway, session_token

from harness import REPO, next_term, now_ms, peek_crash_points, wait_for
from streams import fairness
from streams.codec import encode
from streams.events import Message

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SCREENS = REPO / "var" / "test" / "screens"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JACKPOT = f"jp-page-{uuid.uuid4().hex[:6]}"
# Rounds slow enough to click in: 3 s of betting, 2x at about 2.3 s of flight.
CONFIG = {"betting_ms": 3000, "starting_ms": 500, "cooldown_ms": 800, "growth_per_ms": "0.0003", "grace_ms": 150,
          "max_multiple_x100": 2000, "chain_length": 1000, "jackpots": [JACKPOT],
          "currencies": {"EUR": {"min_bet": 10, "max_bet": 50_000, "max_bets_per_user": 3, "max_win": 1_000_000,
                                 "max_payout_per_term": 100_000_000}}}
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
# Chromium logs each failed WebSocket reconnection while the push gateway is down, and each
# answer with an error status (a refusal is a 409 the page shows): expected in those steps only.
OUTAGE = re.compile(r"WebSocket connection to .* failed")
REFUSALS = re.compile(r"Failed to load resource: the server responded with a status of 409")

if shutil.which(CHROMIUM) is None:   # ./stack installs Debian's chromium; say so rather than skip silently
    pytest.fail(f"{CHROMIUM} is missing: ./stack installs the Debian package chromium", pytrace=False)


def euros(amount: int) -> str:
    """How the page shows an amount (integers only, as money.js)."""
    sign = "−" if amount < 0 else ""
    amount = abs(amount)
    return f"{sign}€{amount // 100:,}.{amount % 100:02d}"


def multiple(x100: int) -> str:
    return f"{x100 // 100}.{x100 % 100:02d}x"


class Console:
    """Every console error and page error of the pages opened, with what was expected apart."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected: re.Pattern[str] | None = None

    def watch(self, page: Page, name: str) -> None:
        def on_console(message) -> None:
            if message.type == "error" and not (self.expected and self.expected.search(message.text)):
                self.errors.append(f"{name}: {message.text}")
        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(f"{name}: {error}"))


@pytest.fixture(scope="module")
async def stack(pipeline_factory):
    pipe = await pipeline_factory("page")
    await pipe.start_wallet()
    pipe.start_payout()
    push = PushGateway(pipe)
    await push.start()
    channel = await pipe.create_channel("p", **CONFIG)
    await pipe.wait_gateway_channel(channel)
    await push.wait_channel(channel)
    return pipe, push, channel


@contextlib.asynccontextmanager
async def chromium(profile_prefix: str) -> AsyncIterator[BrowserContext]:
    """Debian's chromium, headless, with a profile of its own (removed afterwards)."""
    profile = tempfile.mkdtemp(prefix=profile_prefix)
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS, viewport=DESKTOP)
        yield context
        await context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
async def browser():
    async with chromium("chromium-") as context:
        yield context


async def shot(page: Page, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def open_player(browser, push: PushGateway, pipe, channel: str, user_id: str, console: Console,
                      viewport: dict[str, int] = DESKTOP) -> Page:
    token = (await session_token(pipe, user_id, channel_id=channel))["token"]
    page = await browser.new_page()
    await page.set_viewport_size(viewport)
    console.watch(page, user_id)
    await page.goto(f"{push.url}/play/?channel={channel}#token={token}")
    await expect(page.locator("#player")).to_have_text(user_id, timeout=20_000)
    return page


async def shown_balance(page: Page) -> str:
    return (await page.get_by_test_id("balance").inner_text()).strip()


async def publish_jackpot(pipe, event: Message) -> None:
    await pipe.publish("game.jackpot", event.jackpot_id, encode(event))


async def test_a_player_plays_rounds_on_the_page(stack, browser):
    from streams import jackpot_events as J
    pipe, push, channel = stack
    console = Console()
    alice, bob = f"alice-{uuid.uuid4().hex[:5]}", f"bob-{uuid.uuid4().hex[:5]}"
    wallet = pipe.wallet("admin")
    await wallet.set_balance(alice, "EUR", 10_000)
    await wallet.set_balance(bob, "EUR", 10_000)
    crash_of = await peek_crash_points(pipe, channel, CONFIG)
    page = await open_player(browser, push, pipe, channel, alice, console)
    try:
        # ---- the countdown and the balance from the wallet
        await expect(page.get_by_test_id("phase")).to_contain_text("Next round in", timeout=30_000)
        await expect(page.get_by_test_id("balance")).to_have_text(euros(10_000), timeout=10_000)
        await shot(page, "01-countdown")

        # ---- two bets in one round: 2.00 with auto cash-out at 1.50x, 1.00 cashed out by hand
        term, crash = await next_term(pipe, channel, crash_of, lambda c: c >= 300, window_left_ms=2200)
        await page.get_by_test_id("amount-0").fill("2.00")
        await page.get_by_test_id("target-0").fill("1.50")
        if not await page.get_by_test_id("auto-on-0").is_checked():
            await page.get_by_test_id("auto-on-0").check()
        await page.get_by_test_id("amount-1").fill("1.00")
        if await page.get_by_test_id("auto-on-1").is_checked():
            await page.get_by_test_id("auto-on-1").uncheck()
        await page.get_by_test_id("action-0").click()
        await page.get_by_test_id("action-1").click()
        await expect(page.get_by_test_id("msg-0")).to_contain_text("Accepted: €2.00, auto at 1.50x", timeout=10_000)
        await expect(page.get_by_test_id("msg-1")).to_contain_text("Accepted: €1.00", timeout=10_000)
        await expect(page.get_by_test_id("balance")).to_have_text(euros(9_700), timeout=10_000)
        await expect(page.locator("#bets tr.mine")).to_have_count(2, timeout=10_000)
        await shot(page, "02-two-bets-placed")

        # ---- cash the manual one out by hand at about 1.20x; the auto one goes at 1.50x
        await expect(page.get_by_test_id("phase")).to_have_text("Flying", timeout=15_000)
        await page.wait_for_function(
            "() => parseFloat(document.querySelector('[data-testid=multiplier]').textContent) >= 1.2", timeout=20_000)
        await page.get_by_test_id("action-1").click()
        await expect(page.get_by_test_id("msg-1")).to_contain_text("Cashed out at", timeout=10_000)
        await expect(page.get_by_test_id("msg-0")).to_contain_text("Cashed out at 1.50x: +€3.00", timeout=20_000)
        await shot(page, "03-cashed-out")
        await expect(page.get_by_test_id("multiplier")).to_have_text(f"Crashed @ {multiple(crash)}", timeout=30_000)
        await shot(page, "04-crashed")

        # ---- the balance shown is the wallet's, to the cent, once the payouts are in
        rows = await pipe.rows("SELECT cashout_x100, payout, amount FROM bet WHERE term_id = :t AND user_id = :u",
                               t=term["term_id"], u=alice)
        assert sorted((r["amount"], r["cashout_x100"]) for r in rows)[1] == (200, 150)
        manual = next(r for r in rows if r["amount"] == 100)
        assert 120 <= manual["cashout_x100"] < 150 and manual["payout"] == manual["cashout_x100"]
        expected = 10_000 - 300 + 300 + manual["payout"]

        async def paid() -> bool:
            return await wallet.balance(alice, "EUR") == expected
        await wait_for(paid, 30, "the payouts to reach the wallet")
        await expect(page.get_by_test_id("balance")).to_have_text(euros(expected), timeout=15_000)
        assert await shown_balance(page) == euros(await wallet.balance(alice, "EUR"))
        manual_text = (await page.get_by_test_id("msg-1").inner_text())
        assert manual_text == f"Cashed out at {multiple(manual['cashout_x100'])}: +{euros(manual['payout'])}"

        # ---- another player's bet appears in the live list (bob on a phone-sized page)
        phone = await open_player(browser, push, pipe, channel, bob, console, PHONE)
        await expect(phone.get_by_test_id("phase")).to_contain_text("Next round in", timeout=30_000)
        await phone.get_by_test_id("amount-1").fill("4.00")
        await phone.get_by_test_id("action-1").click()
        await expect(phone.get_by_test_id("msg-1")).to_contain_text("Accepted: €4.00", timeout=10_000)
        bob_row = page.locator("#bets tr", has_text=f"{bob[:2]}***{bob[-2:]}")
        await expect(bob_row).to_contain_text("€4.00", timeout=5_000)
        await expect(phone.locator("#bets tr.mine")).to_contain_text("€4.00", timeout=5_000)
        await shot(phone, "05-phone-second-player")
        await shot(page, "06-live-list-with-another-player")

        # ---- refusals say why
        console.expected = REFUSALS
        await expect(page.get_by_test_id("phase")).to_contain_text("Next round in", timeout=30_000)
        await page.get_by_test_id("amount-0").fill("0.05")
        await page.get_by_test_id("action-0").click()
        await expect(page.get_by_test_id("msg-0")).to_have_text("Refused: below the minimum bet", timeout=10_000)
        await page.get_by_test_id("amount-0").fill("600.00")
        await page.get_by_test_id("action-0").click()
        too_much = re.compile(r"Refused: (above the maximum bet|not enough balance)")
        await expect(page.get_by_test_id("msg-0")).to_have_text(too_much, timeout=10_000)
        await shot(page, "07-refused-with-reason")
        console.expected = None

        # ---- a bet queued while the round flies is placed in the next one: the click lands in
        # the take-off or the flight of a round known to fly to 3.00x or more (3.7 s), as the page
        # shows it (a page a second behind still shows the previous flight while the next round
        # already takes bets, and a bet is then placed at once, not queued)
        await page.get_by_test_id("amount-0").fill("1.00")
        flight, _ = await next_term(pipe, channel, crash_of, lambda c: c >= 300, window_left_ms=0)
        await page_shows(page, flight["term_id"], ("starting", "flying"))
        await expect(page.get_by_test_id("phase")).to_have_text(re.compile("Flying|Taking off"), timeout=5_000)
        await page.get_by_test_id("action-0").click()
        await expect(page.get_by_test_id("msg-0")).to_contain_text("Queued", timeout=5_000)
        await shot(page, "08-queued-for-next-round")
        await expect(page.get_by_test_id("msg-0")).to_contain_text("Accepted: €1.00", timeout=40_000)

        # ---- the history strip has the round, and its proof verifies in the browser
        chip = page.locator(f"#history a[data-term='{term['term_id']}']")
        await expect(chip).to_have_text(multiple(crash), timeout=10_000)
        verifier = await browser.new_page()
        console.watch(verifier, "verifier")
        await verifier.goto(push.url + await chip.get_attribute("href"))
        await expect(verifier.get_by_test_id("verdict")).to_have_text("Match: this round was fair", timeout=30_000)
        await expect(verifier.get_by_test_id("computed")).to_contain_text(f"Crash point computed: {multiple(crash)}")
        await expect(verifier.get_by_test_id("checks")).to_contain_text("gives the channel's published terminator")
        await shot(verifier, "09-proof-verified")
        # ... and a tampered salt pasted by hand does not. The salt is the only input of the crash
        # point that no other check covers, so it is changed to one whose crash point differs
        # (one hex digit alone can give the same point, e.g. both at the 20.00x cap).
        salt = await verifier.get_by_test_id("salt").input_value()
        values = [await verifier.get_by_test_id(name).input_value() for name in ("hash", "edge", "max")]
        revealed, edge, cap = bytes.fromhex(values[0]), int(values[1]), int(values[2])
        tampered = next(candidate for digit in "0123456789abcdef" for candidate in [digit + salt[1:]]
                        if fairness.crash_point_x100(revealed, bytes.fromhex(candidate), edge, cap) != crash)
        await verifier.get_by_test_id("salt").fill(tampered)
        await verifier.get_by_test_id("compute").click()
        await expect(verifier.get_by_test_id("verdict")).to_have_text("Mismatch: these values do not agree",
                                                                      timeout=30_000)
        # The published digest (loaded with the round, as a player could paste it) is checked too.
        await expect(verifier.get_by_test_id("checks")).to_contain_text("the published digest differs")
        await shot(verifier, "10-tampered-mismatch")
        await verifier.close()

        # ---- a jackpot ticker moves as others bet, and a hit shows the winners
        await jackpot_ticker(pipe, page, console, J)

        # ---- auto-play stops by itself and says why
        await page.get_by_test_id("amount-0").fill("0.20")
        await page.get_by_test_id("target-0").fill("1.01")
        await page.locator("#ap-rounds").fill("2")
        await page.locator("#ap-toggle").click()
        await expect(page.get_by_test_id("autoplay-status")).to_contain_text("Auto-play on", timeout=5_000)
        await expect(page.get_by_test_id("autoplay-status")).to_contain_text("Auto-play stopped: 2 rounds played",
                                                                             timeout=60_000)
        await shot(page, "12-autoplay-stopped")

        # ---- frames stop (the push gateway stalls, its socket stays open): the curve freezes
        # where the last frame left it, with a lag notice, and goes on when frames come back
        # (a crash point of 5.00x or more: 4 s of flight, so the stop lands before the crash
        # even when the page shows "Flying" late on a loaded machine; and that round's flight as
        # the page shows it, not the previous one on a page a second behind)
        flight, _ = await next_term(pipe, channel, crash_of, lambda c: c >= 500, window_left_ms=0)
        await page_shows(page, flight["term_id"], ("flying",))
        await expect(page.get_by_test_id("phase")).to_have_text("Flying", timeout=5_000)
        assert push.proc is not None and push.proc.proc is not None
        os.killpg(push.proc.proc.pid, signal.SIGSTOP)
        try:
            await expect(page.locator("#lag")).to_be_visible(timeout=5_000)
            await expect(page.locator("#lag")).to_have_text("Connection lag — waiting for the server…")
            frozen = await page.evaluate("() => window.crashPage.frozenAt")
            assert frozen is not None and frozen >= 100
            await expect(page.get_by_test_id("multiplier")).to_have_text(multiple(frozen))
            await shot(page, "13a-lag-frozen")
        finally:
            os.killpg(push.proc.proc.pid, signal.SIGCONT)
        await expect(page.locator("#lag")).to_be_hidden(timeout=10_000)

        # ---- kill -9 of the push gateway: the page says so and recovers by itself
        history_before = await page.locator("#history a").count()
        assert push.proc is not None
        console.expected = OUTAGE
        push.proc.kill9()
        await expect(page.locator("#lag")).to_be_visible(timeout=10_000)
        await expect(page.locator("#lag")).to_have_text("Reconnecting to the game…")
        await shot(page, "13-push-gateway-down")
        push.proc.start()
        await push.wait_ready()
        await expect(page.locator("#link")).to_have_class("dot up", timeout=30_000)
        await expect(page.locator("#lag")).to_be_hidden(timeout=10_000)
        console.expected = None
        await expect(page.get_by_test_id("phase")).to_contain_text("Next round in", timeout=30_000)
        assert await page.locator("#history a").count() >= history_before
        await shot(page, "14-recovered")
        await phone.close()
        assert console.errors == [], console.errors
    finally:
        await page.close()
        await wallet.close()


async def page_shows(page: Page, term_id: str, states: tuple[str, ...]) -> None:
    """Wait until the page itself holds this round in one of these states."""
    await page.wait_for_function(
        "([id, states]) => { const t = window.crashPage.term; return !!t && t.term_id === id && "
        "states.includes(t.state); }", arg=[term_id, list(states)], timeout=30_000)


async def jackpot_ticker(pipe, page: Page, console: Console, J) -> None:
    """The ticker against the Jackpot Service's contract: its Redis view and its events on
    game.jackpot (published here as the service would)."""
    from streams.cache import redis_client
    definition = {"jackpot_id": JACKPOT, "name": "Page Mega", "tier": "local", "currency": "EUR", "seed": 10_000,
                  "cap": 50_000, "trigger": "must_hit_by", "near_cap_bps": 8000, "rate_bps": 100}
    redis = redis_client(pipe.base.redis_url)
    try:
        await redis.set(f"jackpot:{JACKPOT}", json.dumps({
            "jackpot_id": JACKPOT, "name": "Page Mega", "tier": "local", "currency": "EUR", "status": "active",
            "trigger": "must_hit_by", "channel_id": "", "operator_group": "", "seed": 10_000, "cap": 50_000,
            "near_cap_bps": 8000, "rank_split_bps": [5000, 3000, 2000], "value": 12_000, "cycle": 1,
            "commitment": "", "near_cap": False, "pending": None, "last_hit": None, "updated_at": now_ms()}), ex=3600)
    finally:
        await redis.aclose()
    common = {"channel_id": "", "term_id": "", "jackpot_id": JACKPOT}
    await publish_jackpot(pipe, J.JackpotCycleStarted(event_id=f"{JACKPOT}.c1", ts=now_ms(), cycle=1, seed=10_000,
                                                      start_micro=12_000 * 10**6, definition=definition, **common))
    ticker = page.locator(f"[data-jackpot='{JACKPOT}']")
    await expect(ticker.get_by_test_id("jackpot-value")).to_have_text(euros(12_000), timeout=10_000)
    for step, value in enumerate((25_000, 41_234)):
        await publish_jackpot(pipe, J.JackpotContributed(
            event_id=f"{JACKPOT}.k{step}", ts=now_ms(), cycle=1, items=[], total_micro=0, value_micro=value * 10**6 + 7,
            currency="EUR", **common))
        await expect(ticker.get_by_test_id("jackpot-value")).to_have_text(euros(value), timeout=10_000)
    await publish_jackpot(pipe, J.JackpotNearCap(event_id=f"{JACKPOT}.near", ts=now_ms(), cycle=1, value=41_234,
                                                 cap=50_000, share_bps=8000, currency="EUR", **common))
    await expect(ticker).to_contain_text("Near the cap!", timeout=10_000)
    await shot(page, "11a-jackpot-near-cap")
    hit_at = now_ms()
    await publish_jackpot(pipe, J.JackpotHit(event_id=f"{JACKPOT}.hit", ts=hit_at, award_id="aw-1", cycle=1,
                                             trigger="must_hit_by", amount=43_210, currency="EUR", overflow_micro=0,
                                             **common))
    await expect(page.get_by_test_id("jackpot-hit-amount")).to_have_text(euros(43_210), timeout=1_000 + 500)
    assert now_ms() - hit_at < 1_500, "the winning value within a second of the hit (and the test's own overhead)"
    for rank, (user, bonus) in enumerate((("winner-one", 21_605), ("winner-two", 12_963)), start=1):
        await publish_jackpot(pipe, J.JackpotAwarded(
            event_id=f"{JACKPOT}.aw-1.{rank}", ts=now_ms(), award_id="aw-1", rank=rank, user_id=user, currency="EUR",
            bonus_amount=bonus, order_no=f"bonus:aw-1:{rank}", award_amount=43_210, cycle=1, **common))
    await expect(page.get_by_test_id("jackpot-winners")).to_have_text(
        f"Won by #1 wi***ne {euros(21_605)}, #2 wi***wo {euros(12_963)}", timeout=10_000)
    await shot(page, "11b-jackpot-hit-winners")
    await publish_jackpot(pipe, J.JackpotCycleStarted(event_id=f"{JACKPOT}.c2", ts=now_ms(), cycle=2, seed=10_000,
                                                      start_micro=10_000 * 10**6, definition=definition, **common))
    await expect(ticker.get_by_test_id("jackpot-value")).to_have_text(euros(10_000), timeout=10_000)
    assert console.errors == [], console.errors


async def test_the_page_fits_a_phone_and_a_spectator_sees_the_game(stack, browser):
    pipe, push, channel = stack
    console = Console()
    page = await browser.new_page()
    await page.set_viewport_size(PHONE)
    console.watch(page, "spectator")
    try:
        await page.goto(f"{push.url}/play/?channel={channel}")
        await expect(page.get_by_test_id("phase")).to_contain_text(re.compile("Next round in|Flying|Taking off|Round"),
                                                                   timeout=30_000)
        await expect(page.locator("#player")).to_have_text("watching")
        # Nothing wider than the screen: no sideways scrolling on a phone.
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        await page.get_by_test_id("action-0").click()
        await expect(page.get_by_test_id("msg-0")).to_have_text("log in at the casino to play", timeout=5_000)
        await shot(page, "15-phone-spectator")
        assert console.errors == [], console.errors
    finally:
        await page.close()


async def test_a_jackpot_ticker_moves_as_others_bet_and_its_hit_shows_the_winners(stack, browser):
    """The real Jackpot Service: a local term jackpot of the channel, fed by another player's bets."""
    from harness import create_jackpot, jackpot_view, taking_bets
    pipe, push, channel = stack
    console = Console()
    jackpot_id = f"jp-live-{uuid.uuid4().hex[:6]}"
    # Every stake goes to the pool (rate 100 %), so that a few bets reach the hit value, drawn in [10, 50] EUR.
    await create_jackpot(pipe, jackpot_id=jackpot_id, name="Rocket pot", tier="local", channel_id=channel,
                         currency="EUR", rate_bps=10_000, seed=1_000, cap=5_000, trigger="must_hit_by",
                         rank_split_bps=[5000, 3000, 2000])
    alice, bob = f"alice-{uuid.uuid4().hex[:5]}", f"bob-{uuid.uuid4().hex[:5]}"
    page = await open_player(browser, push, pipe, channel, alice, console)
    ticker = page.locator(f"[data-jackpot='{jackpot_id}']")
    try:
        await expect(ticker.get_by_test_id("jackpot-value")).to_have_text(euros(1_000), timeout=60_000)
        await expect(ticker).to_contain_text("Rocket pot")
        hits: list = []
        moved = False

        async def bet(amount: int) -> bool:
            """True when accepted; False when this round's window closed meanwhile."""
            status, body = await pipe.api("POST", "/v1/bets", {
                "api_order_no": f"jpb-{uuid.uuid4().hex[:12]}", "channel_id": channel, "user_id": bob,
                "amount": amount, "currency": "EUR", "auto_cashout_x100": 110})
            if status == 409 and body.get("reason") in ("betting_closed", "late"):
                return False
            assert status == 200 and body["status"] == "accepted", body
            return True

        async def fed(value: int) -> bool:
            nonlocal hits
            hits = await _hits(pipe, jackpot_id)
            return bool(hits) or (await jackpot_view(pipe, jackpot_id))["value"] == value

        for _ in range(20):                      # the hit value is at most 40.00 above the seed: 2 rounds
            term = await taking_bets(pipe, channel, window_left_ms=1500)
            rows = await pipe.rows("SELECT config FROM crash_term WHERE term_id = :t", t=term["term_id"])
            if not rows or jackpot_id not in json.loads(rows[0]["config"]).get("jackpots", []):
                await wait_for(lambda t=term: _left(pipe, channel, t), 30, "the next term")
                continue
            value = (await jackpot_view(pipe, jackpot_id))["value"]
            # bob's bets, all fed to the pool: a small one first, so that the ticker is seen to move
            for amount in ([10] if not moved else []) + [1_000, 1_000]:
                if not await bet(amount):
                    break
                value += amount
                await wait_for(lambda v=value: fed(v), 20, "bob's contribution in the pool")
                if hits:
                    break
                # The ticker moves with bob's bets, to the pool's value (never above it).
                await expect(ticker.get_by_test_id("jackpot-value")).to_have_text(euros(value), timeout=10_000)
                if not moved:
                    await shot(page, "16-jackpot-ticker-moves")
                    moved = True
            if hits:
                break
            await wait_for(lambda t=term: _left(pipe, channel, t), 30, "the next term")
        assert hits, "no hit after 20 rounds"
        hit = hits[0]
        await expect(page.get_by_test_id("jackpot-hit-amount")).to_have_text(euros(hit.amount), timeout=5_000)
        shown_at = await page.evaluate("() => window.crashPage.hitShownAt")
        assert shown_at - hit.ts <= 1_000, f"the winning value was shown {shown_at - hit.ts} ms after the hit"
        await shot(page, "17-jackpot-hit")
        # The pool reset at the hit (seed plus the overflow): the ticker follows it.
        reset = await wait_for(lambda: _view_of_cycle(pipe, jackpot_id, hit.cycle + 1), 20, "the next cycle")
        await expect(ticker.get_by_test_id("jackpot-value")).to_have_text(euros(reset["value"]), timeout=10_000)
        winners = await wait_for(lambda: pipe.rows(
            "SELECT rank_no, user_id, bonus_amount FROM jackpot_award_winner WHERE award_id = :a ORDER BY rank_no",
            a=hit.award_id), 90, "the winners")
        text = ", ".join(f"#{w['rank_no']} {w['user_id'][:2]}***{w['user_id'][-2:]} {euros(w['bonus_amount'])}"
                         for w in winners)
        assert sum(w["bonus_amount"] for w in winners) == hit.amount
        await expect(ticker).to_contain_text(f"Last won {euros(hit.amount)} by {text}", timeout=15_000)
        await shot(page, "18-jackpot-winners")
        assert console.errors == [], console.errors
    finally:
        await page.close()


async def _view_of_cycle(pipe, jackpot_id: str, cycle: int) -> dict | None:
    from harness import jackpot_view
    view = await jackpot_view(pipe, jackpot_id)
    return view if view and view["cycle"] >= cycle else None


async def _left(pipe, channel: str, term: dict) -> bool:
    live = await pipe.live_term(channel)
    return bool(live) and live["term_id"] != term["term_id"]


async def _hits(pipe, jackpot_id: str) -> list:
    return [r for r, *_ in await pipe.read_topic("game.jackpot", key=jackpot_id)
            if r is not None and type(r).__name__ == "JackpotHit"]
