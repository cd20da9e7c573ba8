// The browser walk-through: playwright-core driving the system's Chromium against a running stack (make run).
// Run by tests/e2e/test_web_page.py, which starts `make run` and answers this script's requests on stdin:
//   this script prints `NEED ended events/<id>`  → the test moves the event into the past and answers `ok`.
// Environment: COWATCH_WEB_URL (the page, same origin as the API), CHROMIUM (executable), ARTIFACTS (screenshot
// directory). Prints `METRIC {json}` lines (time to first render) and exits non-zero on the first failure.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";

const base = process.env.COWATCH_WEB_URL;
const executablePath = process.env.CHROMIUM;
const artifacts = process.env.ARTIFACTS ?? "artifacts";
if (!base || !executablePath) throw new Error("set COWATCH_WEB_URL and CHROMIUM");
mkdirSync(artifacts, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const answers = stdin[Symbol.asyncIterator]();
async function ask(request) {
  console.log(`NEED ${request}`);
  const { value, done } = await answers.next();
  assert.ok(!done && value.trim() === "ok", `the test answered ${JSON.stringify(value)} to ${request}`);
}

const step = (text) => console.log(`STEP ${text}`);

/** Every form control on the page has an accessible name (a label, or aria-label). */
async function assertLabelled(page) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea, button")]
      .filter((el) => !el.hidden && !(el.labels?.length || el.getAttribute("aria-label") || el.textContent?.trim()))
      .map((el) => el.outerHTML.slice(0, 120)),
  );
  assert.deepEqual(unlabelled, [], `controls without a label on ${page.url()}`);
}
const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
const TIMEOUT = 15_000;

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
try {
  // --- time to first render, on a cold context ------------------------------------------------------------
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(base, { waitUntil: "load" });
    await page.getByRole("heading", { name: "Discover co-watching events" }).waitFor({ timeout: TIMEOUT });
    const metric = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const fcp = performance.getEntriesByName("first-contentful-paint")[0];
      const transferred = performance
        .getEntriesByType("resource")
        .concat([nav])
        .reduce((sum, e) => sum + (e.transferSize || 0), 0);
      return {
        first_contentful_paint_ms: fcp ? Math.round(fcp.startTime) : null,
        dom_content_loaded_ms: Math.round(nav.domContentLoadedEventEnd),
        load_ms: Math.round(nav.loadEventEnd),
        transferred_bytes: transferred,
      };
    });
    console.log(`METRIC ${JSON.stringify(metric)}`);
    await ctx.close();
  }

  const signIn = async (page, button) => {
    await page.goto(`${base}/signin`);
    await page.getByRole("heading", { name: "Development only" }).waitFor({ timeout: TIMEOUT });
    await page.getByRole("button", { name: button }).click();
    await page.getByTestId("signed-in-as").waitFor({ timeout: TIMEOUT });
  };

  const hostCtx = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const guestCtx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const host = await hostCtx.newPage();
  const guest = await guestCtx.newPage();
  const city = `Webtown-${Math.random().toString(36).slice(2, 8)}`;

  // --- the host creates an event in the page ---------------------------------------------------------------
  step("host signs in and creates an event");
  await signIn(host, "Dev User (host)");
  await host.getByRole("link", { name: "Host an event" }).click();
  const tomorrow = new Date(Date.now() + 86_400_000);
  const pad = (n) => String(n).padStart(2, "0");
  const startValue = `${tomorrow.getFullYear()}-${pad(tomorrow.getMonth() + 1)}-${pad(tomorrow.getDate())}T20:00`;
  const fillEvent = async (title, capacity, visibility) => {
    await host.getByLabel("Film id").fill("tt0069293");
    await host.getByLabel("Film title").fill("Solaris");
    await host.getByLabel("Title", { exact: true }).fill(title);
    await host.getByLabel("Description").fill("Bring snacks.");
    await host.getByLabel("Start (your local time)").fill(startValue);
    await host.getByLabel("Duration (minutes)").fill("120");
    await host.getByLabel("Place name").fill("Living room");
    await host.getByLabel("Address").fill("Torstr. 1, 10119 Berlin");
    await host.getByLabel("City").fill(city);
    await host.getByLabel("Seats").fill(String(capacity));
    await host.getByLabel("Visibility").selectOption({ label: visibility });
  };
  await assertLabelled(host);
  await fillEvent("Solaris night", 0, "Public: listed in Discover");
  await host.getByRole("button", { name: "Create event" }).click();
  // A field error appears next to its field, and the field is marked invalid.
  const capacityError = host.locator('.field-error[data-field="event.capacity"]');
  await capacityError.filter({ hasText: /\S/ }).waitFor({ timeout: TIMEOUT });
  assert.equal(await host.getByLabel("Seats").getAttribute("aria-invalid"), "true");
  await shot(host, "01-host-field-error");
  await host.getByLabel("Seats").fill("3");
  await host.getByRole("button", { name: "Create event" }).click();
  await host.getByRole("heading", { name: "You host this event" }).waitFor({ timeout: TIMEOUT });
  const shareLink = await host.getByTestId("share-link").inputValue();
  assert.match(shareLink, /\/events\/[0-9a-f-]{36}$/);
  const eventPath = new URL(shareLink).pathname;
  const eventName = eventPath.slice(1);
  await shot(host, "02-host-event-created");

  // --- the guest opens the share link, books 2 seats, sees the address ---------------------------------------
  step("guest opens the share link and books 2 seats");
  await signIn(guest, "Guest User (guest)");
  await guest.goto(shareLink);
  await guest.getByRole("heading", { name: "Solaris night" }).waitFor({ timeout: TIMEOUT });
  assert.match(await guest.getByTestId("place").innerText(), /shown once you have booked/);
  assert.doesNotMatch(await guest.getByTestId("place").innerText(), /Torstr/);
  await guest.getByLabel("Seats", { exact: true }).fill("2");
  await guest.getByRole("button", { name: "Book" }).click();
  await guest.getByText("You have booked 2 seats.").waitFor({ timeout: TIMEOUT });
  assert.match(await guest.getByTestId("place").innerText(), /Torstr\. 1, 10119 Berlin/);
  assert.match(await guest.getByTestId("seats").innerText(), /1 of 3 left/);
  await shot(guest, "03-guest-booked-phone");

  step("guest: add to calendar downloads the event's .ics");
  const [download] = await Promise.all([guest.waitForEvent("download", { timeout: TIMEOUT }), guest.getByRole("button", { name: "Add to calendar" }).click()]);
  assert.match(download.suggestedFilename(), /\.ics$/);
  const ics = readFileSync(await download.path(), "utf8");
  assert.match(ics, /BEGIN:VCALENDAR/);
  assert.match(ics, /SUMMARY:Solaris night/);

  step("guest: my bookings lists it");
  await guest.getByRole("link", { name: "My bookings" }).click();
  const mine = guest.locator("li.card").filter({ hasText: "Solaris night" });
  await mine.waitFor({ timeout: TIMEOUT });
  assert.match(await mine.innerText(), /2 seats · confirmed/);
  await assertLabelled(guest);
  step("guest: the calendar feed link, shown once, serves the bookings");
  await guest.getByRole("button", { name: "Calendar feed" }).click();
  const feedUrl = await guest.getByLabel("Your feed link (copy it now)").inputValue();
  assert.match(feedUrl, /^https?:\/\//);
  const feed = await guest.request.get(feedUrl);
  assert.equal(feed.status(), 200, feedUrl);
  assert.match(await feed.text(), /SUMMARY:Solaris night/);
  await assertLabelled(guest);
  await shot(guest, "03b-calendar-feed-phone");

  // --- discover: the filters find it, with its seats -------------------------------------------------------
  step("discover finds the event by city");
  await host.goto(`${base}/?city=${city}&free=1`);
  const card = host.locator("li.card").filter({ hasText: "Solaris night" });
  await card.waitFor({ timeout: TIMEOUT });
  assert.match(await card.innerText(), /1 of 3 seats left/);
  await shot(host, "10-discover");
  await card.getByRole("link", { name: "Solaris night" }).click();
  await host.getByRole("heading", { name: "You host this event" }).waitFor({ timeout: TIMEOUT });

  // --- the host sees the guest and their rating --------------------------------------------------------------
  step("host sees the guest list");
  await host.reload();
  const guestRow = host.getByRole("row", { name: /Guest User/ });
  await guestRow.waitFor({ timeout: TIMEOUT });
  assert.match(await guestRow.innerText(), /Guest User\s+2\s+no ratings yet/);
  await shot(host, "04-host-guest-list");

  // --- an edit that raced another edit is refused, and the page says why -----------------------------------
  step("host: an edit on a stale copy is explained");
  await host.goto(`${base}${eventPath}/edit`);
  await host.getByLabel("Description").waitFor({ timeout: TIMEOUT });
  const other = await hostCtx.newPage(); // the host in a second tab
  await other.goto(`${base}${eventPath}/edit`);
  await other.getByLabel("Description").fill("Bring snacks and a blanket.");
  await other.getByRole("button", { name: "Save changes" }).click();
  await other.getByRole("heading", { name: "You host this event" }).waitFor({ timeout: TIMEOUT });
  await other.close();
  await host.getByLabel("Description").fill("Bring snacks and a pillow.");
  await host.getByRole("button", { name: "Save changes" }).click();
  await host.getByRole("alert").filter({ hasText: "Someone else changed this event" }).waitFor({ timeout: TIMEOUT });
  await shot(host, "04b-host-edit-conflict");
  await host.getByRole("button", { name: "Reload the event" }).click();
  await host.waitForFunction(() => document.querySelector("textarea")?.value === "Bring snacks and a blanket.");
  await host.getByLabel("Description").fill("Bring snacks and a pillow.");
  await host.getByRole("button", { name: "Save changes" }).click();
  await host.getByRole("heading", { name: "You host this event" }).waitFor({ timeout: TIMEOUT });
  await host.getByText("Bring snacks and a pillow.").waitFor({ timeout: TIMEOUT });

  // --- a third user fills the last seat; a fourth finds it sold out and joins the waitlist ---------------------
  step("third users: the last seat, then sold out and the waitlist");
  const thirdCtx = await browser.newContext();
  const third = await thirdCtx.newPage();
  await signIn(third, "New user");
  await third.goto(shareLink);
  await third.getByRole("button", { name: "Book" }).click();
  await third.getByText("You have booked 1 seat.").waitFor({ timeout: TIMEOUT });
  const fourthCtx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const fourth = await fourthCtx.newPage();
  await signIn(fourth, "New user");
  const fourthName = (await fourth.getByTestId("signed-in-as").innerText()).replace(/^Signed in as /, "");
  await fourth.goto(shareLink);
  await fourth.getByText("Sold out: every seat is taken.").waitFor({ timeout: TIMEOUT });
  assert.match(await fourth.getByTestId("seats").innerText(), /Sold out/);
  assert.equal(await fourth.getByRole("button", { name: "Book" }).count(), 0);
  await shot(fourth, "05-sold-out");
  await assertLabelled(fourth);
  await fourth.getByLabel("Seats wanted").fill("1");
  await fourth.getByRole("button", { name: "Join waitlist" }).click();
  await fourth.getByTestId("waitlist-entry").waitFor({ timeout: TIMEOUT });
  assert.match(await fourth.getByTestId("waitlist-entry").innerText(), /number 1 on the waitlist for 1 seat/);
  assert.match(await fourth.getByTestId("seats").innerText(), /1 on the waitlist/);
  await shot(fourth, "05b-waitlisted-phone");

  step("host sees the waitlist with the waiter's reliability");
  await host.goto(shareLink);
  const waitRow = host.getByTestId("waitlist").getByRole("row", { name: new RegExp(fourthName) });
  await waitRow.waitFor({ timeout: TIMEOUT });
  assert.match(await waitRow.innerText(), /waiting\s+no history/);
  await shot(host, "05c-host-waitlist");

  step("a booked guest cancels: the waiter is offered the seat and claims it");
  await third.reload();
  await third.getByRole("button", { name: "Cancel my booking" }).click();
  await third.getByRole("button", { name: "Cancel my booking" }).waitFor({ state: "detached", timeout: TIMEOUT });
  await thirdCtx.close();
  const offer = fourth.getByTestId("waitlist-offer");
  for (const until = Date.now() + TIMEOUT; ; ) {
    await fourth.reload();
    await fourth.locator('[data-testid="waitlist-offer"], [data-testid="waitlist-entry"]').first().waitFor({ timeout: TIMEOUT });
    if (await offer.count()) break;
    assert.ok(Date.now() < until, "no offer reached the waiter");
    await fourth.waitForTimeout(500);
  }
  assert.match(await offer.innerText(), /1 seat is held for you until/);
  await assertLabelled(fourth);
  await shot(fourth, "05d-offer-phone");
  await fourth.getByRole("button", { name: "Claim the seats" }).click();
  await fourth.getByText("You have booked 1 seat.").waitFor({ timeout: TIMEOUT });
  await fourthCtx.close();

  // --- the host marks it held (once it has ended: the test moves it into the past) ---------------------------
  step("host marks the event held");
  await host.reload();
  await host.getByRole("button", { name: "Mark as held" }).click();
  await host.getByRole("alert").filter({ hasText: "hasn't ended yet" }).waitFor({ timeout: TIMEOUT });
  await ask(`ended ${eventName}`);
  await host.reload();
  await host.getByRole("button", { name: "Mark as held" }).click();
  await host.locator(".badge.state-held").waitFor({ timeout: TIMEOUT });

  step("host marks attendance and sees reliability");
  const attendedRow = host.getByRole("row", { name: /Guest User/ });
  assert.match(await attendedRow.innerText(), /no history/);
  await host.getByRole("button", { name: "Attended: Guest User" }).click();
  await host.getByRole("row", { name: /Guest User/ }).filter({ hasText: "came 1 of 1 (100 %)" }).waitFor({ timeout: TIMEOUT });
  await host.getByRole("button", { name: `No-show: ${fourthName}` }).click();
  await host.getByRole("row", { name: new RegExp(fourthName) }).filter({ hasText: "came 0 of 1 (0 %)" }).waitFor({ timeout: TIMEOUT });
  await shot(host, "06a-host-attendance");

  // --- both review -------------------------------------------------------------------------------------------
  step("guest and host review");
  await guest.goto(shareLink);
  const rate = async (page, formName, stars, text) => {
    const form = page.getByRole("form", { name: formName });
    await form.getByLabel("Rating").selectOption(String(stars));
    await form.getByLabel("Comment (optional)").fill(text);
    await form.getByRole("button", { name: "Send review" }).click();
    await form.getByText("Thanks — your review is saved.").waitFor({ timeout: TIMEOUT }).catch(async (err) => {
      await shot(page, "failed-review");
      throw new Error(`${formName}: ${await form.innerText()}`, { cause: err });
    });
  };
  await rate(guest, "Rate the event", 5, "Great film, great couch.");
  await rate(guest, "Rate the host, Dev User", 4, "Friendly host.");
  // Blind: the guest's reviews stay hidden until the host has reviewed them back (or the window closes).
  await guest.getByTestId("review-pending").first().waitFor({ timeout: TIMEOUT });
  await shot(guest, "06-guest-reviewed-phone");
  step("guest withdraws the pending event review and sends it again");
  await guest.getByRole("form", { name: "Rate the event" }).getByRole("button", { name: "Withdraw review" }).click();
  await guest.getByRole("form", { name: "Rate the event" }).getByRole("button", { name: "Send review" }).waitFor({ timeout: TIMEOUT });
  await rate(guest, "Rate the event", 5, "Great film, great couch.");
  await host.reload();
  await rate(host, "Rate Guest User as a guest", 5, "Lovely guest.");
  // The guest had reviewed the host already: the host's review of the guest is revealed at once.
  await host.getByRole("form", { name: "Rate Guest User as a guest" }).getByText("so it is visible now").waitFor({ timeout: TIMEOUT });
  await rate(host, "Rate the event", 4, "Good night.");

  // --- the host's profile shows the new average ----------------------------------------------------------------
  step("host profile shows the new average");
  await host.getByRole("link", { name: "My host profile" }).click();
  await host.getByTestId("host-profile-rating").waitFor({ timeout: TIMEOUT });
  assert.match(await host.getByTestId("host-profile-rating").innerText(), /★ 4\.0 \(1 rating\)/);
  // Reviews of the event itself stay hidden until the review window closes (days later): not counted yet.
  const held = host.locator("ul.held > li").filter({ hasText: "Solaris night" });
  assert.match(await held.innerText(), /no ratings yet/);
  await shot(host, "07-host-profile");

  // --- a private event: the link without its token is "not found", with it the event --------------------------
  step("private event: link without and with its invite");
  await host.getByRole("link", { name: "Host an event" }).click();
  await fillEvent("Secret screening", 4, "Private: invite link only");
  await host.getByRole("button", { name: "Create event" }).click();
  await host.getByRole("heading", { name: "You host this event" }).waitFor({ timeout: TIMEOUT });
  const privateLink = await host.getByTestId("share-link").inputValue();
  const url = new URL(privateLink);
  assert.ok(url.searchParams.get("invite"), privateLink);
  await guest.goto(`${url.origin}${url.pathname}`);
  await guest.getByRole("heading", { name: "Event not found" }).waitFor({ timeout: TIMEOUT });
  await shot(guest, "08-private-without-invite");
  await guest.goto(privateLink);
  await guest.getByRole("heading", { name: "Secret screening" }).waitFor({ timeout: TIMEOUT });
  await guest.getByRole("button", { name: "Book" }).waitFor({ timeout: TIMEOUT });
  await shot(guest, "09-private-with-invite");
  // Rotating the invite link: the old link stops working, the new one works.
  await host.getByRole("button", { name: "Rotate invite link" }).click();
  await host.waitForFunction(
    (old) => document.querySelector('[data-testid="share-link"]')?.value.startsWith("http") &&
      document.querySelector('[data-testid="share-link"]').value !== old,
    privateLink,
  );
  const rotatedLink = await host.getByTestId("share-link").inputValue();
  await guest.goto(privateLink);
  await guest.getByRole("heading", { name: "Event not found" }).waitFor({ timeout: TIMEOUT });
  await guest.goto(rotatedLink);
  await guest.getByRole("heading", { name: "Secret screening" }).waitFor({ timeout: TIMEOUT });
  await assertLabelled(host);
  // The host cancels it (after a confirmation step); the guest sees it cancelled and can't book any more.
  await host.getByRole("button", { name: "Cancel event…" }).click();
  await host.getByRole("button", { name: "Yes, cancel the event" }).click();
  await host.locator(".badge.state-cancelled").waitFor({ timeout: TIMEOUT });
  await guest.reload();
  await guest.locator(".badge.state-cancelled").waitFor({ timeout: TIMEOUT });
  assert.equal(await guest.getByRole("button", { name: "Book" }).count(), 0);

  // --- private events are never listed; the held one is no longer upcoming: the empty state ------------------
  step("discover: nothing listed for the city now");
  await guest.goto(`${base}/?city=${city}`);
  await guest.getByText("No events match these filters yet.").waitFor({ timeout: TIMEOUT });
  assert.equal(await guest.getByRole("link", { name: "Secret screening" }).count(), 0);
  console.log("DONE");
} finally {
  await browser.close();
  stdin.close();
}
