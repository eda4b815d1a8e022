// Test page: Uppy + @uppy/tus uploads a generated 8 MiB file to a resumable
// server on another origin. The result lands in window.__uppyTest for the
// driver (driver.mjs) to read.
import Uppy from '@uppy/core'
import Tus from '@uppy/tus'

const MiB = 1024 * 1024
const params = new URLSearchParams(window.location.search)
const endpoint = params.get('endpoint')
const size = Number(params.get('size') || 8 * MiB)
const chunkSize = Number(params.get('chunkSize') || 3 * MiB)

const state = {
  status: 'running',
  origin: window.location.origin,
  endpoint,
  size,
  chunkSize,
  uploadURL: null,
  error: null,
  requests: [], // tus requests as tus-js-client saw them: method, url, status, offset
  retries: 0,
  progress: [],
}
window.__uppyTest = state

/** Byte i is (i * 31 + 7) & 255; tests/clients/test_browser_uppy.py builds the same bytes. */
function deterministicBytes (n) {
  const bytes = new Uint8Array(n)
  for (let i = 0; i < n; i++) bytes[i] = (i * 31 + 7) & 255
  return bytes
}

function finish (status, fields) {
  Object.assign(state, fields, { status })
  document.getElementById('status').textContent = `${status}: ${state.uploadURL || state.error}`
}

async function run () {
  if (!endpoint) throw new Error('no ?endpoint= given')
  const uppy = new Uppy({ autoProceed: false })
  uppy.use(Tus, {
    endpoint,
    chunkSize,
    // Few quick retries: a retry is recorded, so a flaky server shows up in the test.
    retryDelays: [100, 500],
    removeFingerprintOnSuccess: true,
    onShouldRetry (err, attempt, options, next) {
      state.retries++
      state.lastRetryError = String(err)
      return next(err)
    },
    onAfterResponse (req, res) {
      state.requests.push({
        method: req.getMethod(),
        url: req.getURL(),
        status: res.getStatus(),
        offset: res.getHeader('Upload-Offset') ?? null,
        location: res.getHeader('Location') ?? null,
      })
    },
  })
  uppy.on('upload-progress', (file, progress) => {
    state.progress.push(progress.bytesUploaded)
  })
  uppy.on('upload-error', (file, error) => {
    state.error = String(error)
  })
  const data = new Blob([deterministicBytes(size)], { type: 'application/octet-stream' })
  uppy.addFile({ name: 'pattern.bin', type: 'application/octet-stream', data, source: 'test' })
  const result = await uppy.upload()
  if (result.failed && result.failed.length) {
    finish('error', { error: state.error || String(result.failed[0].error) })
  } else if (result.successful.length !== 1) {
    finish('error', { error: `expected 1 successful upload, got ${result.successful.length}` })
  } else {
    finish('done', { uploadURL: result.successful[0].uploadURL })
  }
}

run().catch((error) => finish('error', { error: String(error && error.stack ? error.stack : error) }))
