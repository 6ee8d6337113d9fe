// A system that cannot pull, receiving mes-events webhooks, in JavaScript (Node.js).
//
// `mes-events push` POSTs each event as a CloudEvents HTTP request, signed as Standard Webhooks
// says. This receiver verifies the signature with the specification's own library
// (`standardwebhooks`), refusing a tampered body or a timestamp more than 5 minutes off (401),
// decodes the CloudEvent with the official SDK (`cloudevents`, HTTP binding; in batched mode
// it returns the batch's events), skips an event it already has (by `source` and `id`: an event
// comes again when an answer was lost), handles it, and answers 204. Answer anything else and
// the event (or the batch) is sent again later, its key waiting meanwhile; events of a batch
// already handled are skipped then.
//
//   npm ci
//   WEBHOOK_SECRET=whsec_... node receiver.mjs --port 8080
//
// Prints one JSON line per event handled (id, type, subject, sequence).
import http from "node:http";
import { parseArgs } from "node:util";
import { HTTP } from "cloudevents";
import { Webhook } from "standardwebhooks";

/** Your integration goes here. Throw to have the event sent again later. */
function handle(event) {
  console.log(JSON.stringify({ id: event.id, type: event.type, subject: event.subject, sequence: event.sequence }));
}

export function receiver(secret, onEvent = handle) {
  const webhook = new Webhook(secret);
  const seen = new Set(); // events handled (keep them in your database in production)
  return (headers, body) => {
    try {
      webhook.verify(body, headers);
    } catch {
      return 401;
    }
    // One event, or in batched mode an array of them (at most one per key).
    const events = [].concat(HTTP.toEvent({ headers, body }));
    for (const event of events) {
      const key = `${event.source}#${event.id}`; // unique per event, the same on every retry
      if (seen.has(key)) continue; // delivered again after a lost answer: already handled
      onEvent(event);
      seen.add(key);
    }
    return 204;
  };
}

export function serve(receive, port, host = "127.0.0.1") {
  return http
    .createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        let status;
        try {
          status = receive(req.headers, Buffer.concat(chunks).toString("utf8"));
        } catch {
          status = 500;
        }
        res.writeHead(status, { "content-length": "0" }).end();
      });
    })
    .listen(port, host);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: { port: { type: "string", default: "8080" }, host: { type: "string", default: "127.0.0.1" }, "secret-env": { type: "string", default: "WEBHOOK_SECRET" } },
  });
  serve(receiver(process.env[values["secret-env"]]), Number(values.port), values.host);
}
