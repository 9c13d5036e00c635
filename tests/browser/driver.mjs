// Browser driver for tests/browser.rs: a thin JSON-lines server over stdin/stdout around playwright-core
// and the system Chromium (no browser download). The Rust test sends one command per line and reads one
// reply per line ({"id", "ok": true, "value"} or {"id", "ok": false, "error"}); all checks are made in
// Rust. Page console output and page errors go to the log file given to `launch`.
//
// Commands: launch {chromium, log}, new_page {init_script}, goto {url}, eval {expr},
// wait {expr, timeout_ms, poll_ms}, screenshot {path}, reload {delay_app_ms}, classic_check {origin},
// close {}.
import { createInterface } from 'node:readline';
import { appendFileSync } from 'node:fs';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  process.stdout.write(
    JSON.stringify({ id: 0, ok: false, fatal: true, error: `cannot load playwright-core (run: bash scripts/install-deps.sh --with-browser): ${e.message}` }) + '\n',
  );
  process.exit(2);
}

let browser = null;
let page = null;
let logPath = null;

function log(line) {
  if (logPath) appendFileSync(logPath, `${new Date().toISOString()} ${line}\n`);
}

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Keep timers running at full rate even if the headless page is considered hidden.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

async function openPage(initScript) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  if (initScript) await context.addInitScript(initScript);
  page = await context.newPage();
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`pageerror: ${e.stack || e}`));
  page.on('websocket', (ws) => {
    log(`websocket open ${ws.url()}`);
    ws.on('close', () => log(`websocket closed ${ws.url()}`));
  });
}

const commands = {
  async launch({ chromium: executablePath, log: lp }) {
    logPath = lp || null;
    // launch() gives the browser a fresh temporary --user-data-dir and passes --headless.
    browser = await chromium.launch({ executablePath, headless: true, args: FLAGS, timeout: 30000 });
    await openPage(null);
    return browser.version();
  },
  async new_page({ init_script = null }) {
    // A fresh context (empty storage), with a script that runs before the page's own.
    if (page) await page.context().close();
    await openPage(init_script);
    return true;
  },
  async goto({ url }) {
    const r = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 15000 });
    return { status: r ? r.status() : null, contentType: r ? r.headers()['content-type'] : null, cacheControl: r ? r.headers()['cache-control'] : null };
  },
  async eval({ expr }) {
    return await page.evaluate(expr);
  },
  async wait({ expr, timeout_ms = 10000, poll_ms = 100 }) {
    const h = await page.waitForFunction(expr, null, { timeout: timeout_ms, polling: poll_ms });
    return await h.jsonValue();
  },
  async screenshot({ path }) {
    await page.screenshot({ path, fullPage: true });
    return path;
  },
  async reload({ delay_app_ms = 0 }) {
    // Optionally hold /app.js back, so records arrive while the page is away and must be replayed.
    const hold = async (route) => {
      await new Promise((r) => setTimeout(r, delay_app_ms));
      await route.continue();
    };
    if (delay_app_ms > 0) await page.route('**/app.js', hold);
    try {
      const r = await page.reload({ waitUntil: 'domcontentloaded', timeout: 15000 });
      return r ? r.status() : null;
    } finally {
      if (delay_app_ms > 0) await page.unroute('**/app.js', hold);
    }
  },
  async classic_check({ origin }) {
    // The classic-script build on a page without the module: window.DashStreamClient must appear.
    const p = await page.context().newPage();
    try {
      await p.goto(`${origin}/health`, { waitUntil: 'domcontentloaded' });
      await p.addScriptTag({ url: '/client.classic.js' });
      return await p.evaluate(() => {
        const C = window.DashStreamClient;
        if (typeof C !== 'function') return { type: typeof C };
        const c = new C({ url: 'ws://example.invalid/ws', storage: null, threads: 'b,a', startFrom: 'latest' });
        return { type: typeof C, url: c.connectUrl() };
      });
    } finally {
      await p.close();
    }
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return true;
  },
};

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    process.stdout.write(JSON.stringify({ id: null, ok: false, error: `bad command line: ${e.message}` }) + '\n');
    continue;
  }
  const { id, cmd, ...args } = msg;
  try {
    if (!commands[cmd]) throw new Error(`unknown command ${cmd}`);
    const value = await commands[cmd](args);
    process.stdout.write(JSON.stringify({ id, ok: true, value: value ?? null }) + '\n');
  } catch (e) {
    log(`command ${cmd} failed: ${e.stack || e}`);
    process.stdout.write(JSON.stringify({ id, ok: false, error: String((e && e.message) || e) }) + '\n');
  }
  if (cmd === 'close') break;
}
if (browser) await browser.close();
process.exit(0);
