// Drives the web page (served by Envoy) in headless Chromium: log in, open a conversation, see
// its history, send a message, then wait for one sent by someone else to arrive live.
// Prints "subscribed" and "sent" as it goes; exits non-zero with the reason on failure.
// Inputs (environment): CHAT_URL, CHAT_USER, CHAT_PASSWORD, CHAT_CONVERSATION (group:<id>, …),
// CHAT_HISTORY (a text already there), CHAT_SEND, CHAT_EXPECT, PLAYWRIGHT_DIR, CHROMIUM.
import { createRequire } from "node:module";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const require = createRequire(env("PLAYWRIGHT_DIR") + "/");
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const timeout = 30000;
  const message = (text) => page.locator("#messages .message .text", { hasText: text });

  await page.goto(env("CHAT_URL"));
  await page.fill("#username", env("CHAT_USER"));
  await page.fill("#password", env("CHAT_PASSWORD"));
  await page.click("#login");
  await page.click(`li[data-conv="${env("CHAT_CONVERSATION")}"]`, { timeout });
  await message(env("CHAT_HISTORY")).waitFor({ timeout });
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("live:"), null, { timeout });
  console.log("subscribed");

  await page.fill("#text", env("CHAT_SEND"));
  await page.click("#send");
  await message(env("CHAT_SEND")).waitFor({ timeout });
  console.log("sent");

  await message(env("CHAT_EXPECT")).waitFor({ timeout });
  const shown = await page.locator("#messages .message .text").allTextContents();
  console.log("received", JSON.stringify(shown));
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
