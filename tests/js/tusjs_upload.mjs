// One tus-js-client scenario against a running server, driven by tests/clients/test_client_tusjs.py.
//
//   node tusjs_upload.mjs '<json>'
//
// The JSON argument:
//   endpoint    creation URL (required)
//   file        path of the file to upload (required)
//   source      "buffer" (default) or "stream" (an fs.ReadStream; needs chunkSize)
//   chunkSize   bytes per PATCH (default: tus-js-client's Infinity)
//   metadata    Upload-Metadata as an object
//   options     further Upload options passed through unchanged (parallelUploads,
//               uploadDataDuringCreation, overridePatchMethod, removeFingerprintOnSuccess, ...)
//   urlStorage  path of a FileUrlStorage JSON file (fingerprints for resuming)
//   abortAt     abort once this many bytes are accepted (between two PATCHes), then resume
//               with a new Upload from findPreviousUploads() in the same process
//   abortAtSent the same, but abort as soon as this many bytes are sent (inside a PATCH)
//   throttle    {piece, delayMs}: in phase 1, send each request body in pieces of this many
//               bytes with a pause after each (a slow network, so abortAtSent lands mid-body)
//   timeoutMs   give up after this long (default 60000)
//
// Prints one JSON line: {ok, version, url, bytes, events, requests, storage[, error]} and
// exits 0 on success, 1 on failure.

import { readFileSync, createReadStream, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import { DefaultHttpStack, FileUrlStorage, Upload } from 'tus-js-client';

const require = createRequire(import.meta.url);
const VERSION = require('tus-js-client/package.json').version;

const REQUEST_HEADERS = [
  'Tus-Resumable',
  'Upload-Length',
  'Upload-Defer-Length',
  'Upload-Offset',
  'Upload-Metadata',
  'Upload-Concat',
  'Content-Type',
  'X-HTTP-Method-Override',
  'Upload-Draft-Interop-Version',
  'Upload-Complete',
];
const RESPONSE_HEADERS = [
  'Location',
  'Upload-Offset',
  'Upload-Length',
  'Upload-Concat',
  'Upload-Complete',
  'Tus-Resumable',
];

const spec = JSON.parse(process.argv[2] ?? '{}');
const events = [];
const requests = [];
const pending = new Map();
let phase = 1;

function emit(result) {
  process.stdout.write(`${JSON.stringify({ version: VERSION, events, requests, ...result })}\n`);
}

function pick(getter, names) {
  const out = {};
  for (const name of names) {
    const value = getter(name);
    if (value !== undefined && value !== null) out[name] = String(value);
  }
  return out;
}

async function* slowPieces(body, piece, delayMs) {
  for (let start = 0; start < body.length; start += piece) {
    yield body.subarray(start, start + piece);
    await new Promise((r) => setTimeout(r, delayMs));
  }
}

// The default Node http stack, but request bodies trickle out (see `throttle`).
class SlowHttpStack {
  constructor(piece, delayMs) {
    this.inner = new DefaultHttpStack();
    this.piece = piece;
    this.delayMs = delayMs;
  }

  createRequest(method, url) {
    const req = this.inner.createRequest(method, url);
    const send = req.send.bind(req);
    req.send = async (body = null) => {
      if (body === null || body === undefined) return send(body);
      let bytes = body;
      if (!(body instanceof Uint8Array)) {
        const parts = [];
        for await (const part of body) parts.push(part);
        bytes = Buffer.concat(parts);
      }
      const slow = Readable.from(slowPieces(bytes, this.piece, this.delayMs), {
        objectMode: false,
      });
      slow.size = bytes.length; // the stack sets Content-Length from .size
      return send(slow);
    };
    return req;
  }

  getName() {
    return `slow ${this.inner.getName()}`;
  }
}

function makeSource() {
  if (spec.source === 'stream') return createReadStream(spec.file);
  return readFileSync(spec.file);
}

async function storageEntries(storage) {
  return storage ? await storage.findAllUploads() : [];
}

function makeUpload(storage, hooks) {
  const options = {
    endpoint: spec.endpoint,
    metadata: spec.metadata ?? {},
    retryDelays: null, // a failure must surface, not be papered over by a retry
    ...(spec.chunkSize ? { chunkSize: spec.chunkSize } : {}),
    ...(storage ? { urlStorage: storage } : {}),
    ...(phase === 1 && spec.throttle
      ? { httpStack: new SlowHttpStack(spec.throttle.piece, spec.throttle.delayMs) }
      : {}),
    ...(spec.options ?? {}),
    onBeforeRequest(req) {
      const entry = {
        phase,
        method: req.getMethod(),
        url: req.getURL(),
        headers: pick((name) => req.getHeader(name), REQUEST_HEADERS),
      };
      pending.set(req, entry);
      requests.push(entry);
    },
    onAfterResponse(req, res) {
      const entry = pending.get(req);
      if (!entry) return;
      pending.delete(req);
      entry.status = res.getStatus();
      entry.response = pick((name) => res.getHeader(name), RESPONSE_HEADERS);
    },
    onProgress(sent) {
      hooks.onProgress?.(sent);
    },
    onChunkComplete(chunkSize, accepted, total) {
      events.push({ type: 'chunk', phase, chunkSize, accepted, total });
      hooks.onChunkComplete?.(accepted);
    },
    onSuccess() {
      hooks.onSuccess();
    },
    onError(error) {
      hooks.onError(error);
    },
  };
  const upload = new Upload(makeSource(), options);
  return upload;
}

async function run() {
  if (!spec.endpoint || !spec.file) throw new Error('endpoint and file are required');
  const size = statSync(spec.file).size;
  const storage = spec.urlStorage ? new FileUrlStorage(spec.urlStorage) : null;

  // Phase 1: upload; with abortAt, stop once that many bytes are accepted.
  const first = await new Promise((resolve, reject) => {
    let upload = null;
    let checkedStorage = false;
    let aborting = false;
    const abort = (at) => {
      if (aborting) return;
      aborting = true;
      events.push({ type: 'abort', phase: 1, ...at, url: upload.url });
      upload.abort(false).then(() => resolve({ aborted: true, url: upload.url }));
    };
    upload = makeUpload(storage, {
      onProgress(sent) {
        if (spec.abortAtSent != null && sent >= spec.abortAtSent) abort({ sent });
      },
      onChunkComplete(accepted) {
        if (!checkedStorage) {
          checkedStorage = true;
          // The fingerprint is stored before the first PATCH: record what the storage holds.
          storageEntries(storage)
            .then((entries) => events.push({ type: 'stored', phase: 1, entries }))
            .catch((error) => events.push({ type: 'stored', phase: 1, error: String(error) }));
        }
        if (spec.abortAt != null && accepted >= spec.abortAt) abort({ accepted });
      },
      onSuccess: () => resolve({ aborted: false, url: upload.url }),
      onError: reject,
    });
    upload.start();
  });
  events.push({ type: first.aborted ? 'aborted' : 'success', phase, url: first.url });

  let finalUrl = first.url;
  if (first.aborted) {
    // Phase 2: a brand-new Upload object finds the stored URL and resumes it.
    phase = 2;
    finalUrl = await new Promise((resolve, reject) => {
      const upload = makeUpload(storage, {
        onSuccess: () => resolve(upload.url),
        onError: reject,
      });
      upload
        .findPreviousUploads()
        .then((previous) => {
          events.push({
            type: 'previous',
            phase,
            count: previous.length,
            urls: previous.map((p) => p.uploadUrl ?? null),
          });
          if (previous.length === 0) throw new Error('findPreviousUploads() found nothing');
          upload.resumeFromPreviousUpload(previous[0]);
          upload.start();
        })
        .catch(reject);
    });
    events.push({ type: 'success', phase, url: finalUrl });
  }

  // removeFingerprintOnSuccess removes the entry without waiting: let it land.
  let entries = await storageEntries(storage);
  if (spec.options?.removeFingerprintOnSuccess) {
    const deadline = Date.now() + 3000;
    while (entries.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      entries = await storageEntries(storage);
    }
  }
  return { ok: true, url: finalUrl, bytes: size, storage: entries };
}

const timeout = setTimeout(() => {
  emit({ ok: false, error: `timed out after ${spec.timeoutMs ?? 60000} ms` });
  process.exit(1);
}, spec.timeoutMs ?? 60000);

run()
  .then((result) => {
    clearTimeout(timeout);
    emit(result);
    process.exit(0);
  })
  .catch((error) => {
    clearTimeout(timeout);
    emit({ ok: false, error: String(error?.stack ?? error) });
    process.exit(1);
  });
