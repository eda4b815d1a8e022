"""Real clients against the real server: tuspy, tus-js-client, Uppy in Chromium, the demo page."""
