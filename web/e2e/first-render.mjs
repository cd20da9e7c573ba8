// Time to first render of the page against a running stack: N cold loads (fresh browser context each, so
// nothing is cached) in the system's Chromium. Prints the median first-contentful-paint, the time until the
// discover list is rendered (data fetched over gRPC-web), and the bytes transferred.
//   COWATCH_WEB_URL=http://localhost:8080 CHROMIUM=/usr/bin/chromium node e2e/first-render.mjs [runs]
import { chromium } from "playwright-core";

const base = process.env.COWATCH_WEB_URL ?? "http://localhost:8080";
const runs = Number(process.argv[2] ?? 7);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
const samples = [];
try {
  for (let i = 0; i < runs; i++) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(base, { waitUntil: "load" });
    await page.waitForSelector("ul.cards li, p.empty");
    samples.push(
      await page.evaluate(() => {
        const fcp = performance.getEntriesByName("first-contentful-paint")[0];
        const nav = performance.getEntriesByType("navigation")[0];
        const rpc = performance.getEntriesByType("resource").find((r) => r.name.includes("ListEvents"));
        const bytes = performance.getEntriesByType("resource").concat([nav]).reduce((s, e) => s + (e.transferSize || 0), 0);
        return { fcp: fcp?.startTime ?? NaN, listed: rpc ? rpc.responseEnd : NaN, bytes };
      }),
    );
    await ctx.close();
  }
} finally {
  await browser.close();
}
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(
  JSON.stringify({
    runs,
    first_contentful_paint_ms: Math.round(median(samples.map((s) => s.fcp))),
    events_listed_ms: Math.round(median(samples.map((s) => s.listed))),
    transferred_bytes: median(samples.map((s) => s.bytes)),
  }),
);
