// @tus/server with @tus/file-store (or @tus/s3-store): the server the benchmarks measure
// resumable against.
//
//   node server.mjs DIRECTORY PORT [HOST]
//
// Stores uploads in DIRECTORY (no fsync: @tus/file-store never calls it); with
// TUS_S3_BUCKET set, in that bucket instead (TUS_S3_ENDPOINT, path-style, for an
// S3-compatible server; credentials and region from the AWS SDK's usual chain; part
// buffers in the OS temporary directory, as @tus/s3-store does). Serves the tus
// endpoint at /files/ and hands every request, whatever its path, to the tus handler: no
// other middleware, one process, Node's default HTTP server settings. Prints one line,
// "listening HOST:PORT", when it accepts connections, and exits on SIGTERM or SIGINT.
import process from "node:process";

import { FileStore } from "@tus/file-store";
import { S3Store } from "@tus/s3-store";
import { Server } from "@tus/server";

const [directory, portText, host = "127.0.0.1"] = process.argv.slice(2);
const port = Number.parseInt(portText ?? "", 10);
if (!directory || !Number.isInteger(port) || port < 1 || port > 65535) {
  console.error("usage: node server.mjs DIRECTORY PORT [HOST]");
  process.exit(2);
}

const bucket = process.env.TUS_S3_BUCKET;
const datastore = bucket
  ? new S3Store({
      s3ClientConfig: {
        bucket,
        region: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
        endpoint: process.env.TUS_S3_ENDPOINT,
        forcePathStyle: true,
      },
    })
  : new FileStore({ directory });

const tus = new Server({ path: "/files", datastore });

const http = tus.listen({ host, port }, () => {
  console.log(`listening ${host}:${port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    http.close(() => process.exit(0));
    http.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
