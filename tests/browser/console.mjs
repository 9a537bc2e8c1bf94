// Drives the orgwarden console in headless Chromium (playwright-core) for
// tests/console.rs, which starts the real binary and asserts on what this
// prints. Usage:
//
//   node console.mjs SCENARIO BASE_URL SCREENSHOT_DIR [JSON_OPTIONS]
//
// Each scenario acts through the page only (typing, clicking, hovering),
// reads what the page shows, saves screenshots, and prints one JSON object
// on stdout. A step that does not happen within its wait fails the
// scenario: exit code 1 with the reason on stderr.
import { chromium } from 'playwright-core';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [scenario, base, shots, optionsText] = process.argv.slice(2);
const options = optionsText ? JSON.parse(optionsText) : {};
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
const consoleErrors = [];
page.on('pageerror', (e) => consoleErrors.push(String(e)));
// A page opened without its token asks first: those 401s are expected.
const expected = (text) => (scenario === 'login' || options.token) && /status of 401/.test(text);
page.on('console', (m) => { if (m.type() === 'error' && !expected(m.text())) consoleErrors.push(m.text()); });
page.setDefaultTimeout(options.wait_ms || 15000);

const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
const text = async (selector) => (await page.locator(selector).first().textContent()) || '';

async function open(hash = '') {
  await page.goto(`${base}/console/${hash}`);
  if (options.token) {
    await page.locator('#login').waitFor({ state: 'visible' });
    await page.fill('#token', options.token);
    await page.click('#login-form button[type=submit]');
    await page.locator('#login').waitFor({ state: 'hidden' });
  }
}

async function waitStatus() {
  await page.locator('#status-cards .card').first().waitFor();
  await page.locator('#files tbody tr').first().waitFor();
}

const scenarios = {
  // The status page of the sample world.
  async status() {
    await open('#status');
    await waitStatus();
    const cards = await page.locator('#status-cards .card').allTextContents();
    const files = await page.locator('#files tbody tr').allTextContents();
    const state = await text('#last-error');
    await shot('status');
    return { cards, files, state };
  },

  // Try a request through the form, as a policy author would.
  async try() {
    await open('#try');
    await page.fill('#principal', options.principal);
    await page.fill('#action', options.action);
    await page.fill('#resource', options.resource);
    await page.click('#decide');
    await page.locator('#decision').waitFor();
    const result = {
      decision: await text('#decision'),
      reason: await text('#reason'),
      policies: await page.locator('#policies details').allTextContents(),
      holds: await page.locator('#holds tbody tr').allTextContents(),
    };
    // Completion: typing part of an id offers the stored entities.
    await page.fill('#principal', '');
    await page.type('#principal', options.complete);
    await page.waitForFunction((needle) => [...document.querySelectorAll('#principal-options option')]
      .some((o) => o.value.includes(needle)), options.complete);
    result.completions = await page.locator('#principal-options option').evaluateAll((os) => os.map((o) => o.value));
    await page.fill('#principal', options.principal);
    await shot('try');
    return result;
  },

  // A determining policy's file and line, and its text one click away.
  async policy() {
    await open('#try');
    await page.fill('#principal', options.principal);
    await page.fill('#action', options.action);
    await page.fill('#resource', options.resource);
    await page.click('#decide');
    const details = page.locator('#policies details').first();
    await details.waitFor();
    await details.locator('summary a').click();
    await details.locator('pre').waitFor({ state: 'visible' });
    return {
      decision: await text('#decision'),
      reason: await text('#reason'),
      link: await details.locator('summary a').textContent(),
      source: await details.locator('pre').textContent(),
    };
  },

  // The access map of a workspace, then the reverse view of a principal.
  async access() {
    await open('#access');
    await page.fill('#workspace', options.workspace);
    await page.click('#workspace-form button[type=submit]');
    const cell = page.locator(`td.cell[data-principal='${options.principal}'][data-scope='${options.scope}']`);
    await cell.waitFor();
    await cell.hover();
    await page.locator('#cell-info').waitFor({ state: 'visible' });
    const result = {
      title: await text('#map-title'),
      rule: await cell.getAttribute('data-rule'),
      hover: await text('#cell-info'),
      rows: await page.locator('#heatmap tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.row)),
      legend: await text('#legend'),
    };
    await shot('access');
    await page.mouse.move(0, 0);
    await page.fill('#map-principal', options.principal);
    await page.click('#principal-form button[type=submit]');
    // The workspace map's cells would match too: wait for the new map.
    await page.waitForFunction((before) => document.querySelector('#map-title').textContent !== before, result.title);
    const back = page.locator(`td.cell[data-principal='${options.principal}'][data-workspace='${options.reverse_workspace}'][data-scope='${options.scope}']`);
    await back.waitFor();
    result.reverse_title = await text('#map-title');
    result.reverse_rule = await back.getAttribute('data-rule');
    result.reverse_rows = await page.locator('#heatmap tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.row));
    await shot('access-principal');
    return result;
  },

  // Break a policy file on disk and watch the status page report it.
  async reload() {
    await open('#status');
    await waitStatus();
    const before = await text('#last-error');
    writeFileSync(options.file, options.broken);
    const error = page.locator('[data-testid=reload-error]');
    await error.waitFor({ timeout: options.reload_wait_ms });
    const result = {
      before,
      error: await error.textContent(),
      diagnostics: await page.locator('[data-testid=reload-error] pre.diag').allTextContents(),
      serving: await text('#serving'),
    };
    await shot('reload-error');
    writeFileSync(options.file, options.fixed);
    await page.locator('[data-testid=reload-ok]').waitFor({ timeout: options.reload_wait_ms });
    result.after = await text('#last-error');
    return result;
  },

  // With an admin token: the console asks for it, refuses a wrong one.
  async login() {
    await page.goto(`${base}/console/#status`);
    await page.locator('#login').waitFor({ state: 'visible' });
    const main_hidden = await page.locator('#main').isHidden();
    await shot('login');
    await page.fill('#token', 'not-the-token');
    await page.click('#login-form button[type=submit]');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0);
    const refused = await text('#login-error');
    await page.fill('#token', options.right_token);
    await page.click('#login-form button[type=submit]');
    await page.locator('#login').waitFor({ state: 'hidden' });
    await waitStatus();
    const generation = await text('#status-cards .card');
    const stored = await page.evaluate(() => sessionStorage.getItem('orgwarden.console.token'));
    return { main_hidden, refused, generation, stored, url: page.url() };
  },

  // Run the matrices (and the proofs) from the page; failures come first.
  async runs() {
    await open('#runs');
    await page.locator('#run-matrices').click();
    const state = page.locator('[data-testid=state-matrices]');
    await page.waitForFunction(() => {
      const s = document.querySelector('[data-testid=state-matrices]');
      return s && s.textContent !== 'running';
    }, null, { timeout: options.run_wait_ms });
    const result = {
      matrices_state: await state.textContent(),
      matrices_summary: await text('#run-matrices-result'),
      first_failure: (await page.locator('#run-matrices-result .failure').count()) > 0
        ? await text('#run-matrices-result .failure') : null,
    };
    if (options.verify) {
      await page.locator('#run-verify').click();
      await page.waitForFunction(() => {
        const s = document.querySelector('[data-testid=state-verify]');
        return s && s.textContent !== 'running';
      }, null, { timeout: options.run_wait_ms });
      result.verify_state = await text('[data-testid=state-verify]');
      result.verify_summary = await text('#run-verify-result');
    }
    await shot('runs');
    return result;
  },
};

let code = 0;
try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`no scenario ${scenario}`);
  const result = await run();
  result.page_errors = consoleErrors;
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (e) {
  try { await shot(`${scenario}-failed`); } catch (_) { /* the page may be gone */ }
  process.stderr.write(`scenario ${scenario} failed: ${e.message}\npage errors: ${JSON.stringify(consoleErrors)}\n`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
