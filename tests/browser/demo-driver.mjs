// Drive the demo page of `resumable serve --demo` like a person would:
// pick files through the Dashboard's file input, click Upload, pause and
// resume mid-way, wait until Uppy says complete and the status table shows
// every upload complete with offset == length, take a screenshot.
//   node demo-driver.mjs --url http://127.0.0.1:P/ --files a.bin,b.txt
//     --screenshot out.png [--throttle BYTES_PER_SECOND] [--pause 1]
import { args, runDriver } from './launch.mjs'

const opts = args()
const files = opts.files.split(',')
const timeout = Number(opts.timeout || 40000)

/** Rows of the status table as plain objects. */
function readTable () {
  return Array.from(document.querySelectorAll('#uploads tbody tr')).map((row) => ({
    url: row.dataset.url,
    state: row.dataset.state,
    name: row.querySelector('td.name').textContent,
    offset: row.querySelector('td.offset').dataset.value,
    length: row.querySelector('td.length').dataset.value,
    offsetText: row.querySelector('td.offset').textContent,
    detail: row.querySelector('td.state .detail')?.textContent ?? '',
  }))
}

await runDriver(async ({ page, context }) => {
  const steps = []
  const heads = [] // HEAD requests the page's status poller made, with their answers
  page.on('response', (response) => {
    if (response.request().method() === 'HEAD') {
      heads.push({ url: response.url(), status: response.status(), offset: response.headers()['upload-offset'] })
    }
  })
  if (opts.throttle) {
    // Slow the upload down so the table can be seen mid-way and pause has something to pause.
    const cdp = await context.newCDPSession(page)
    await cdp.send('Network.enable')
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false,
      latency: 0,
      downloadThroughput: -1,
      uploadThroughput: Number(opts.throttle),
    })
    steps.push(`throttled uploads to ${opts.throttle} B/s`)
  }
  await page.goto(opts.url, { waitUntil: 'load' })
  await page.locator('#dashboard .uppy-Dashboard').waitFor({ timeout })
  await page.waitForFunction(() => document.getElementById('extensions').children.length > 0, null, { timeout })
  const input = page.locator('#dashboard input.uppy-Dashboard-input[name="files[]"]:not([webkitdirectory])').first()
  await input.setInputFiles(files)
  await page.locator('.uppy-Dashboard-Item').nth(files.length - 1).waitFor({ timeout })
  steps.push(`picked ${files.length} files`)
  await page.locator('.uppy-StatusBar-actionBtn--upload').click({ timeout })
  steps.push('clicked Upload')

  let midway = null
  if (opts.pause === '1') {
    // The table shows an upload in progress (HEAD during the PATCH), then pause.
    await page.waitForFunction(
      () => Array.from(document.querySelectorAll('#uploads tbody tr')).some((row) => {
        const offset = Number(row.querySelector('td.offset').dataset.value || 0)
        const length = Number(row.querySelector('td.length').dataset.value || 0)
        return row.dataset.state === 'uploading' && offset > 0 && offset < length
      }),
      null, { timeout, polling: 50 },
    )
    midway = await page.evaluate(readTable)
    steps.push('table showed an upload midway')
    await page.locator('[data-cy="togglePauseResume"]').click({ timeout })
    await page.waitForFunction(
      () => Object.values(window.resumableDemo.uppy.getState().files).every((f) => f.isPaused || f.progress.uploadComplete),
      null, { timeout },
    )
    steps.push('paused')
    await page.waitForTimeout(1200) // a poll or two while paused
    midway = { beforePause: midway, whilePaused: await page.evaluate(readTable) }
    await page.locator('[data-cy="togglePauseResume"]').click({ timeout })
    steps.push('resumed')
  }

  await page.locator('.uppy-StatusBar.is-complete').waitFor({ timeout })
  steps.push('Uppy: complete')
  await page.waitForFunction(
    (count) => {
      const rows = Array.from(document.querySelectorAll('#uploads tbody tr'))
      return rows.length === count && rows.every((row) =>
        row.dataset.state === 'complete' &&
        row.querySelector('td.offset').dataset.value !== '' &&
        row.querySelector('td.offset').dataset.value === row.querySelector('td.length').dataset.value)
    },
    files.length,
    { timeout, polling: 100 },
  )
  steps.push('table: all complete')
  const table = await page.evaluate(readTable)
  // Follow each row's link the way the page offers it: the href of its <a>.
  const links = await page.evaluate(async () => Promise.all(
    Array.from(document.querySelectorAll('#uploads tbody tr')).map(async (row) => {
      const link = row.querySelector('td.url a')
      const response = await fetch(link.href)
      const body = new Uint8Array(await response.arrayBuffer())
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', body))
      return {
        name: row.querySelector('td.name').textContent,
        href: link.href,
        status: response.status,
        size: body.length,
        sha256: Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join(''),
        type: response.headers.get('content-type'),
      }
    })))
  steps.push('followed the table\'s links')
  const stored = await page.evaluate(() => JSON.parse(window.localStorage.getItem('resumable.demo.uploads') || '[]'))
  const uppyFiles = await page.evaluate(() => Object.values(window.resumableDemo.uppy.getState().files)
    .map((f) => ({ name: f.name, size: f.size, uploadURL: f.response?.uploadURL ?? null, error: f.error ?? null })))
  await page.screenshot({ path: opts.screenshot, fullPage: true })
  steps.push('screenshot')
  return { steps, table, links, midway, stored, uppyFiles, heads: heads.length, headStatuses: [...new Set(heads.map((h) => h.status))] }
})
