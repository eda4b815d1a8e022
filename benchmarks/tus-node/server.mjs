// @tus/server with @tus/file-store: the server benchmarks/compare.py measures resumable against.
//
//   node server.mjs DIRECTORY PORT [HOST]
//
// Stores uploads in DIRECTORY (no fsync: @tus/file-store never calls it), serves the tus
// endpoint at /files/ and hands every request, whatever its path, to the tus handler: no
// other middleware, one process, Node's default HTTP server settings. Prints one line,
// "listening HOST:PORT", when it accepts connections, and exits on SIGTERM or SIGINT.
import process from "node:process";

import { FileStore } from "@tus/file-store";
import { Server } from "@tus/server";

const [directory, portText, host = "127.0.0.1"] = process.argv.slice(2);
const port = Number.parseInt(portText ?? "", 10);
if (!directory || !Number.isInteger(port) || port < 1 || port > 65535) {
  console.error("usage: node server.mjs DIRECTORY PORT [HOST]");
  process.exit(2);
}

const tus = new Server({
  path: "/files",
  datastore: new FileStore({ directory }),
});

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
