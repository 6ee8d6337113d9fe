// Parses an AsyncAPI document with the AsyncAPI Initiative's own parser (@asyncapi/parser, which
// validates it against the specification's JSON Schema and its ruleset) and prints, as JSON, the
// errors and warnings and the names of the messages it describes. Used by tests/it/catalog.rs.
//
//   node parse_asyncapi.mjs DOCUMENT.json
import fs from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const path = process.argv[2];
const { document, diagnostics } = await new Parser().parse(fs.readFileSync(path, 'utf8'), {
  source: path,
});
const said = (severity) =>
  diagnostics
    .filter((d) => d.severity === severity)
    .map((d) => `${d.code} at /${d.path.join('/')}: ${d.message}`);
const out = {
  errors: said(DiagnosticSeverity.Error),
  warnings: said(DiagnosticSeverity.Warning),
  version: document ? document.version() : null,
  messages: document ? document.allMessages().all().map((m) => m.name()) : [],
  channels: document ? document.allChannels().all().map((c) => c.address()) : [],
};
console.log(JSON.stringify(out, null, 2));
process.exit(document && out.errors.length === 0 ? 0 : 1);
