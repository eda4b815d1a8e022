// The demo page of `resumable serve --demo`.
//
// Left: Uppy's Dashboard uploading to this server's own tus endpoint (pause,
// resume, retry, progress). Below: the uploads this browser started recently
// (remembered in localStorage), each polled with HEAD every second — the
// status polling the server is built for: a HEAD during a PATCH asks the
// writer to commit what it has received, so the offset shown is fresh.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'

import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'
import './demo.css'

const STORAGE_KEY = 'resumable.demo.uploads'
const MAX_REMEMBERED = 25
const POLL_MS = 1000

const endpoint = new URL(document.body.dataset.endpoint || '/files/', window.location.href).href

// ---------------------------------------------------------------------------
// Remembered uploads: [{ url, name, size, added }], newest first
// ---------------------------------------------------------------------------

function loadRemembered () {
  try {
    const list = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || '[]')
    return Array.isArray(list) ? list.filter((item) => item && typeof item.url === 'string') : []
  } catch {
    return []
  }
}

let remembered = loadRemembered()

function saveRemembered () {
  try {
    window.localStorage.setItem(STORAGE_KEY, JSON.stringify(remembered))
  } catch {
    // private mode or quota: the table still works for this page's lifetime
  }
}

function remember (file, url) {
  if (!url || remembered.some((item) => item.url === url)) return
  remembered.unshift({ url, name: file.name, size: file.size ?? null, added: Date.now() })
  remembered = remembered.slice(0, MAX_REMEMBERED)
  saveRemembered()
  fileIds.set(url, file.id)
  render()
  poll(url).then(render)
}

window.addEventListener('storage', (event) => {
  if (event.key === STORAGE_KEY) {
    remembered = loadRemembered()
    render()
  }
})

// ---------------------------------------------------------------------------
// Live state per upload URL, from HEAD (server) and Uppy (this page)
// ---------------------------------------------------------------------------

const status = new Map() // url -> { offset, length, state, detail, checked }
const fileIds = new Map() // url -> Uppy file id (uploads started by this page)
const clientErrors = new Map() // url -> message of Uppy's last upload-error

async function headUpload (url) {
  let response
  try {
    response = await window.fetch(url, {
      method: 'HEAD',
      headers: { 'Tus-Resumable': '1.0.0' },
      cache: 'no-store',
    })
  } catch {
    return { state: 'error', detail: 'server unreachable' }
  }
  await response.arrayBuffer().catch(() => {}) // HEAD: empty; lets the request finish cleanly
  if (response.status === 404 || response.status === 410) {
    return { state: 'error', detail: response.status === 410 ? 'expired (410)' : 'gone (404)' }
  }
  if (!response.ok) return { state: 'error', detail: `HEAD answered ${response.status}` }
  const offset = toInt(response.headers.get('Upload-Offset'))
  const length = toInt(response.headers.get('Upload-Length'))
  if (offset !== null && length !== null && offset === length) {
    return { offset, length, state: 'complete', detail: '' }
  }
  const error = clientErrors.get(url)
  if (error) return { offset, length, state: 'error', detail: error }
  return { offset, length, state: 'uploading', detail: isPaused(url) ? 'paused' : '' }
}

function toInt (text) {
  if (text === null || !/^\d+$/.test(text.trim())) return null
  return Number(text)
}

function isPaused (url) {
  const id = fileIds.get(url)
  const file = id ? uppy.getFile(id) : null
  return Boolean(file && file.isPaused)
}

async function poll (url) {
  const result = await headUpload(url)
  status.set(url, { ...status.get(url), ...result, checked: new Date() })
}

let polling = false
async function pollAll () {
  if (!polling) {
    polling = true
    try {
      await Promise.all(remembered.map((item) => poll(item.url)))
      render()
    } finally {
      polling = false
    }
  }
  window.setTimeout(pollAll, POLL_MS)
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat('en')

function formatBytes (n) {
  if (n === null || n === undefined) return '?'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`
}

function cell (row, className, text, title) {
  const td = document.createElement('td')
  td.className = className
  td.textContent = text
  if (title) td.title = title
  row.appendChild(td)
  return td
}

function numberCell (row, className, value) {
  const td = cell(row, className, value === null || value === undefined ? '?' : numberFormat.format(value))
  td.dataset.value = value === null || value === undefined ? '' : String(value)
  if (value !== null && value !== undefined) td.title = formatBytes(value)
  return td
}

function render () {
  const body = document.querySelector('#uploads tbody')
  const rows = remembered.map((item) => {
    const live = status.get(item.url) || { state: 'uploading', detail: 'checking…' }
    const row = document.createElement('tr')
    row.dataset.url = item.url
    row.dataset.state = live.state
    cell(row, 'name', item.name || '(unnamed)', item.name)

    const link = document.createElement('a')
    link.href = item.url
    link.textContent = item.url.split('/').pop()
    link.title = item.url
    link.target = '_blank'
    link.rel = 'noopener'
    cell(row, 'url', '').appendChild(link)

    numberCell(row, 'offset', live.offset)
    numberCell(row, 'length', live.length)

    const progressCell = cell(row, 'progress', '')
    const bar = document.createElement('progress')
    bar.max = live.length || 1
    bar.value = live.length ? live.offset || 0 : 0
    progressCell.appendChild(bar)
    const percent = document.createElement('span')
    percent.textContent = live.length ? `${Math.floor((100 * (live.offset || 0)) / live.length)}%` : ''
    progressCell.appendChild(percent)

    const stateCell = cell(row, 'state', '')
    const badge = document.createElement('span')
    badge.className = `badge badge-${live.state}`
    badge.textContent = live.state
    stateCell.appendChild(badge)
    if (live.detail) {
      const detail = document.createElement('span')
      detail.className = 'detail'
      detail.textContent = live.detail
      stateCell.appendChild(detail)
    }
    cell(row, 'checked', live.checked ? live.checked.toLocaleTimeString('en-GB') : '—')
    return row
  })
  body.replaceChildren(...rows)
  document.getElementById('empty').hidden = rows.length > 0
}

document.getElementById('forget').addEventListener('click', () => {
  remembered = []
  status.clear()
  saveRemembered()
  render()
})

// ---------------------------------------------------------------------------
// Server capabilities, from OPTIONS
// ---------------------------------------------------------------------------

async function showServerInfo () {
  const info = document.getElementById('server-info')
  try {
    const response = await window.fetch(endpoint, { method: 'OPTIONS', cache: 'no-store' })
    const version = response.headers.get('Tus-Version') || '?'
    const extensions = (response.headers.get('Tus-Extension') || '').split(',').filter(Boolean)
    const maxSize = toInt(response.headers.get('Tus-Max-Size'))
    const parts = [`tus ${version}`, `endpoint ${new URL(endpoint).pathname}`]
    if (maxSize) parts.push(`max ${formatBytes(maxSize)}`)
    info.textContent = parts.join(' · ')
    const list = document.getElementById('extensions')
    list.replaceChildren(...extensions.map((name) => {
      const item = document.createElement('li')
      item.textContent = name
      return item
    }))
  } catch {
    info.textContent = `endpoint ${endpoint} (OPTIONS failed)`
  }
}

// ---------------------------------------------------------------------------
// Uppy
// ---------------------------------------------------------------------------

const uppy = new Uppy({ id: 'resumable-demo', autoProceed: false })
  .use(Dashboard, {
    target: '#dashboard',
    inline: true,
    width: '100%',
    height: 380,
    showProgressDetails: true,
    proudlyDisplayPoweredByUppy: false,
    note: 'Uploads are resumable: pause, resume, or close the tab and add the same file again.',
  })
  .use(Tus, {
    endpoint,
    retryDelays: [0, 1000, 3000, 5000],
    removeFingerprintOnSuccess: true,
  })

function urlOf (file) {
  return file && file.tus && file.tus.uploadUrl
}

uppy.on('upload-progress', (file) => remember(file, urlOf(file)))
uppy.on('upload-success', (file, response) => {
  const url = (response && response.uploadURL) || urlOf(file)
  clientErrors.delete(url)
  remember(file, url)
  poll(url).then(render)
})
uppy.on('upload-error', (file, error) => {
  const url = urlOf(uppy.getFile(file.id) || file)
  if (url) {
    clientErrors.set(url, String((error && error.message) || error).split('\n')[0].slice(0, 120))
    remember(file, url)
  }
})
uppy.on('upload-retry', (file) => clientErrors.delete(urlOf(file)))
uppy.on('retry-all', (files) => files.forEach((file) => clientErrors.delete(urlOf(file))))

window.resumableDemo = { uppy, endpoint, status, remembered: () => remembered }

showServerInfo()
render()
pollAll()
