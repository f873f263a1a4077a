// A DPoP client (RFC 9449) built on the npm `dpop` package, against jwtproxy.
//
//   node dpop_client.mjs '<job JSON>'
//
// job: {issuer, client_id, client_secret, resource, scope, url, other_url}
// Gets DPoP-bound access tokens from oidc-provider's token endpoint (a proof on the token
// request), then sends one request per scenario to `url` through the proxy and prints one
// JSON object on stdout: {jkt, token, results: {scenario: {status, www_authenticate, body}}}.
// Proofs come from `dpop.generateProof`; the hostile ones are that proof changed in one
// way (the alg, the signature, the jwk, the segments), signed again with `jose` where the
// change needs a new signature. Old and future `iat` move the clock the library reads.

import * as crypto from 'node:crypto';

import * as DPoP from 'dpop';
import * as jose from 'jose';

const job = JSON.parse(process.argv[2]);
const b64 = (data) => Buffer.from(data).toString('base64url');
const unb64 = (text) => JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));

async function discover() {
  const res = await fetch(`${job.issuer}/.well-known/openid-configuration`);
  return (await res.json()).token_endpoint;
}

async function tokenFor(keypair, tokenEndpoint, resource = job.resource) {
  const headers = {
    'content-type': 'application/x-www-form-urlencoded',
    authorization: `Basic ${b64(`${job.client_id}:${job.client_secret}`)}`,
  };
  if (keypair) headers.dpop = await DPoP.generateProof(keypair, tokenEndpoint, 'POST');
  const res = await fetch(tokenEndpoint, {
    method: 'POST',
    headers,
    body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope: job.scope }),
  });
  const body = await res.json();
  if (res.status !== 200) throw new Error(`token request: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

async function send(method, token, proofs, scheme = 'DPoP') {
  const headers = new Headers({ authorization: `${scheme} ${token}` });
  for (const proof of proofs) headers.append('dpop', proof);
  const res = await fetch(job.url, { method, headers });
  return {
    status: res.status,
    www_authenticate: res.headers.get('www-authenticate'),
    body: await res.text(),
  };
}

async function atTime(offsetSeconds, make) {
  const realNow = Date.now;
  Date.now = () => realNow() + offsetSeconds * 1000;
  try {
    return await make();
  } finally {
    Date.now = realNow;
  }
}

// The same claims and header as `proof`, with `change` applied to the header, signed again.
async function resigned(proof, privateKey, change) {
  const [head, payload] = proof.split('.');
  const header = { ...unb64(head), ...change };
  return new jose.CompactSign(Buffer.from(payload, 'base64url'))
    .setProtectedHeader(header)
    .sign(privateKey);
}

async function main() {
  const tokenEndpoint = await discover();
  const key = await DPoP.generateKeyPair('ES256', { extractable: true });
  const otherKey = await DPoP.generateKeyPair('ES256');
  const issued = await tokenFor(key, tokenEndpoint);
  const token = issued.access_token;
  const second = (await tokenFor(key, tokenEndpoint)).access_token;
  const bearer = (await tokenFor(null, tokenEndpoint)).access_token;
  const proof = (htm = 'GET', url = job.url, at = token, pair = key) =>
    DPoP.generateProof(pair, url, htm, undefined, at);
  const results = {};
  const run = async (name, fn) => {
    results[name] = await fn();
  };

  const good = await proof();
  await run('good', () => send('GET', token, [good]));
  await run('replayed_jti', () => send('GET', token, [good]));
  await run('good_post', async () => send('POST', token, [await proof('POST')]));
  await run('good_ed25519', async () => {
    const edKey = await DPoP.generateKeyPair('Ed25519');
    const edToken = (await tokenFor(edKey, tokenEndpoint)).access_token;
    return send('GET', edToken, [await proof('GET', job.url, edToken, edKey)]);
  });
  await run('other_method', async () => send('GET', token, [await proof('POST')]));
  await run('other_uri', async () => send('GET', token, [await proof('GET', job.other_url)]));
  await run('other_token', async () => send('GET', token, [await proof('GET', job.url, second)]));
  await run('other_key', async () => send('GET', token, [
    await proof('GET', job.url, token, otherKey)]));
  await run('old_iat', async () => send('GET', token, [await atTime(-600, () => proof())]));
  await run('future_iat', async () => send('GET', token, [await atTime(600, () => proof())]));
  await run('no_proof', () => send('GET', token, []));
  await run('two_proofs', async () => send('GET', token, [await proof(), await proof()]));
  await run('bound_as_bearer', async () => send('GET', token, [await proof()], 'Bearer'));
  await run('unbound_as_bearer', () => send('GET', bearer, [], 'Bearer'));
  await run('alg_none', async () => {
    const [head, payload] = (await proof()).split('.');
    return send('GET', token, [`${b64(JSON.stringify({ ...unb64(head), alg: 'none' }))}.${payload}.`]);
  });
  await run('alg_hs256', async () => {
    const p = await proof();
    const [head, payload] = p.split('.');
    const header = b64(JSON.stringify({ ...unb64(head), alg: 'HS256' }));
    const secret = JSON.stringify(unb64(head).jwk); // algorithm confusion: the jwk as secret
    const mac = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest();
    return send('GET', token, [`${header}.${payload}.${b64(mac)}`]);
  });
  await run('private_jwk', async () => {
    const privateJwk = await crypto.subtle.exportKey('jwk', key.privateKey);
    const { kty, crv, x, y, d } = privateJwk;
    return send('GET', token, [await resigned(await proof(), key.privateKey,
      { jwk: { kty, crv, x, y, d } })]);
  });
  await run('extra_segments', async () => send('GET', token, [`${await proof()}.${b64('{}')}`]));
  await run('typ_jwt', async () => send('GET', token, [await resigned(await proof(),
    key.privateKey, { typ: 'JWT' })]));

  const jkt = await DPoP.calculateThumbprint(key.publicKey);
  process.stdout.write(`${JSON.stringify({ jkt, token, token_type: issued.token_type, results })}\n`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
