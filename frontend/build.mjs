// Build the demo page's assets into the Python package (committed output, so
// an installed `resumable` needs no npm): resumable/demo/static/demo.{js,css}.
//   npm ci && npm run build
import { build } from 'esbuild'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const outdir = join(here, '..', 'resumable', 'demo', 'static')

await build({
  absWorkingDir: here,
  entryPoints: { demo: 'src/demo.js' }, // also emits demo.css: Uppy's CSS + src/demo.css
  outdir,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome109', 'firefox115', 'safari15.6', 'edge109'],
  minify: true,
  legalComments: 'eof',
  sourcemap: false,
  logLevel: 'warning',
})
