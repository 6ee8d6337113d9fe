// Reads every message of JetStream streams with the official nats.js JetStream client and builds
// each into a CloudEvent with the `cloudevents` package, whose constructor enforces the spec's
// attribute rules (strict mode). Header values are percent-decoded here with decodeURIComponent,
// independently of the Rust decoder.
//
// Prints one JSON summary line; exits 0 only if exactly --expect events were read without error.
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { CloudEvent } from "cloudevents";

const args = process.argv.slice(2);
const opt = (name) => args.filter((_, i) => args[i - 1] === name);
const url = opt("--url")[0];
const streams = opt("--stream");
const expect = Number(opt("--expect")[0]);

const nc = await connect({ servers: url });
const js = jetstream(nc);
const jsm = await jetstreamManager(nc);
let decoded = 0;
const errors = [];
for (const stream of streams) {
  const last = (await jsm.streams.info(stream)).state.last_seq;
  if (last === 0) continue;
  const consumer = await js.consumers.get(stream); // ordered consumer
  const messages = await consumer.consume();
  for await (const m of messages) {
    try {
      const attrs = {};
      let structured = false;
      for (const [name, values] of m.headers ?? []) {
        const lower = name.toLowerCase();
        if (lower === "content-type" && values[0].toLowerCase().startsWith("application/cloudevents")) structured = true;
        if (lower.startsWith("ce-")) attrs[lower.slice(3)] = decodeURIComponent(values[0]);
      }
      let ce;
      if (structured) {
        ce = new CloudEvent(JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(m.data)), true);
      } else {
        const body = new TextDecoder("utf-8", { fatal: true }).decode(m.data);
        ce = new CloudEvent({ ...attrs, data: attrs.datacontenttype?.includes("json") ? JSON.parse(body) : body }, true);
      }
      ce.validate();
      for (const a of ["subject", "time", "dataschema", "sequence", "partitionkey", "recordedtime"]) {
        if (!ce[a]) throw new Error(`attribute ${a} missing`);
      }
      decoded += 1;
    } catch (e) {
      errors.push(`${stream} #${m.seq}: ${e}`);
    }
    if (m.seq >= last) break;
  }
}
await nc.close();
console.log(JSON.stringify({ decoded, errors }));
process.exit(decoded === expect && errors.length === 0 ? 0 : 1);
