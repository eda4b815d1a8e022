// Bundle the test page into one script: dist/uppy-test.js.
import { build } from 'esbuild'

await build({
  entryPoints: ['src/uppy-test.js'],
  outfile: 'dist/uppy-test.js',
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome120'],
  minify: true,
  sourcemap: false,
  logLevel: 'warning',
})
