// Debian's Chromium under playwright-core, with the flags this machine needs.
// Never downloads a browser: CHROMIUM (default /usr/bin/chromium) must exist.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

/** A fresh browser context on an empty profile; call close() when done. */
export async function launch ({ viewport = { width: 1280, height: 900 } } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'resumable-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport,
    timeout: 30000,
  })
  const page = context.pages()[0] || (await context.newPage())
  const log = []
  page.on('console', (message) => log.push(`console.${message.type()}: ${message.text()}`))
  page.on('pageerror', (error) => log.push(`pageerror: ${error.stack || error}`))
  page.on('response', (response) => {
    if (response.status() >= 400) log.push(`http ${response.status()}: ${response.request().method()} ${response.url()}`)
  })
  page.on('requestfailed', (request) =>
    log.push(`requestfailed: ${request.method()} ${request.url()} ${request.failure()?.errorText}`))
  const close = async () => {
    await context.close().catch(() => {})
    rmSync(profile, { recursive: true, force: true })
  }
  return { context, page, log, close }
}

/** Parse --name value pairs from argv. */
export function args (argv = process.argv.slice(2)) {
  const out = {}
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1]
  return out
}

/** Run main(), print its result as one JSON line, exit 0; on failure print {error, log}, exit 1. */
export async function runDriver (main) {
  let session
  try {
    session = await launch()
    const result = await main(session)
    process.stdout.write(JSON.stringify({ ok: true, ...result, log: session.log }) + '\n')
    await session.close()
    process.exit(0)
  } catch (error) {
    process.stdout.write(JSON.stringify({
      ok: false,
      error: String(error && error.stack ? error.stack : error),
      log: session ? session.log : [],
    }) + '\n')
    if (session) await session.close()
    process.exit(1)
  }
}
