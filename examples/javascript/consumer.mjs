// An external system reading its mes-events consumer, in JavaScript (Node.js).
//
// Connects as the system (its NKey seed from `mes-events provision credentials`, and its own
// inbox prefix, which its permissions require), binds to its durable consumer by name (the
// system's account holds only that consumer's pulls and acks, not the JetStream API, so the
// consumer is not looked up), pulls from it, builds each
// CloudEvent with the `cloudevents` package (strict: it enforces the spec's attribute rules),
// handles it and acks it. The consumer is durable: stop this program at any point and start it
// again, and it resumes after the last acked event.
//
//   npm ci
//   node consumer.mjs --url nats://mes-nats:4222 --system quality --seed quality.nk
//   # over TLS, with a client certificate: --tls-ca plant-ca.pem --tls-cert quality.crt --tls-key quality.key
//
// Prints one JSON line per event (id, type, subject, sequence).
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { connect, nkeyAuthenticator } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { CloudEvent } from "cloudevents";

const { values: a } = parseArgs({
  options: {
    url: { type: "string", default: "nats://127.0.0.1:4222" },
    system: { type: "string" },
    seed: { type: "string" },
    stream: { type: "string", default: "MES_EVENTS" },
    consumer: { type: "string" },
    max: { type: "string", default: "0" },
    batch: { type: "string", default: "50" },
    "tls-ca": { type: "string" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
  },
});
const max = Number(a.max);

/** Your integration goes here. Throw to have the event redelivered later. */
function handle(ce) {
  console.log(JSON.stringify({ id: ce.id, type: ce.type, subject: ce.subject, sequence: ce.sequence }));
}

/** Binary mode: ce-* headers, percent-encoded; structured: the JSON event format. */
function decode(m) {
  const attrs = {};
  let structured = false;
  for (const [name, values] of m.headers ?? []) {
    const n = name.toLowerCase();
    if (n === "content-type" && values[0].toLowerCase().startsWith("application/cloudevents")) structured = true;
    if (n.startsWith("ce-")) attrs[n.slice(3)] = decodeURIComponent(values[0]);
  }
  const body = new TextDecoder("utf-8", { fatal: true }).decode(m.data);
  if (structured) return new CloudEvent(JSON.parse(body), true);
  return new CloudEvent({ ...attrs, data: JSON.parse(body) }, true);
}

const seed = readFileSync(a.seed, "utf8").trim();
const nc = await connect({
  servers: a.url,
  authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
  inboxPrefix: `_INBOX_${a.system}`,
  // TLS with the plant's CA, and a client certificate where the server verifies clients.
  ...(a["tls-ca"] || a["tls-cert"]
    ? { tls: { caFile: a["tls-ca"], certFile: a["tls-cert"], keyFile: a["tls-key"] } }
    : {}),
});
const name = a.consumer ?? a.system;
const consumer = jetstream(nc).consumers.getConsumerFromInfo({
  stream_name: a.stream,
  name,
  config: { durable_name: name },
});
let handled = 0;
while (!max || handled < max) {
  // Ask only for what will be handled: an event fetched but not acked waits ack_wait.
  const want = max ? Math.min(Number(a.batch), max - handled) : Number(a.batch);
  const msgs = await consumer.fetch({ max_messages: want, expires: 5000 });
  for await (const m of msgs) {
    try {
      handle(decode(m));
    } catch (e) {
      m.nak(5000);
      continue;
    }
    await m.ackAck(); // confirmed by the server: a restart never sees it again
    handled += 1;
  }
}
await nc.close();
