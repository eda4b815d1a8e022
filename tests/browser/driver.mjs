// Open the Uppy test page (index.html, served from its own origin) with the
// tus endpoint of another origin, wait for the upload, print the result as JSON.
//   node driver.mjs --page http://127.0.0.1:A/index.html --endpoint http://127.0.0.1:B/files/
//     [--chunk-size BYTES] [--timeout MS]
import { args, runDriver } from './launch.mjs'

const { page: pageURL, endpoint, timeout = '40000', 'chunk-size': chunkSize = '' } = args()

await runDriver(async ({ page }) => {
  const seen = [] // the requests Chromium itself sent to the tus server, with their Origin
  const pending = []
  page.on('requestfinished', (request) => {
    if (!request.url().startsWith(new URL(endpoint).origin)) return
    pending.push((async () => {
      const headers = await request.allHeaders()
      const response = await request.response()
      const responseHeaders = response ? await response.allHeaders() : {}
      seen.push({
        method: request.method(),
        url: request.url(),
        origin: headers.origin ?? null,
        status: response ? response.status() : null,
        allowOrigin: responseHeaders['access-control-allow-origin'] ?? null,
      })
    })())
  })
  const query = new URLSearchParams({ endpoint })
  if (chunkSize) query.set('chunkSize', chunkSize)
  const url = `${pageURL}?${query}`
  await page.goto(url, { waitUntil: 'load' })
  await page.waitForFunction(
    () => window.__uppyTest && window.__uppyTest.status !== 'running',
    null,
    { timeout: Number(timeout), polling: 100 },
  )
  const result = await page.evaluate(() => window.__uppyTest)
  await Promise.all(pending)
  return { result, seen }
})
