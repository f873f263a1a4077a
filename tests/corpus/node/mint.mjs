// Sign JWTs with panva/jose, an implementation independent of the proxy and of
// tests/corpus/forge.py. Input on stdin (keys are generated at test time and only ever
// passed here through the pipe):
//   {"tokens": [{"name", "alg", "kid", "typ"?, "jwk": <private JWK>, "claims": {...}}]}
// Output on stdout: {"<name>": "<compact JWS>", ...}
import { importJWK, SignJWT } from 'jose';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const request = JSON.parse(await readStdin());
const out = {};
for (const spec of request.tokens) {
  const key = await importJWK(spec.jwk, spec.alg);
  const header = { alg: spec.alg, kid: spec.kid };
  if (spec.typ) header.typ = spec.typ;
  out[spec.name] = await new SignJWT(spec.claims).setProtectedHeader(header).sign(key);
}
process.stdout.write(JSON.stringify(out));
