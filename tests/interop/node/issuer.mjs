// A real OpenID Provider (panva/oidc-provider) for jwtproxy interop tests.
//
//   node issuer.mjs [PORT]        (or PORT=... ; 0 or nothing = an ephemeral port)
//
// Listens on 127.0.0.1 only and prints exactly one line `READY <issuer-url>` on stdout
// once it accepts connections. Everything else goes to stderr.
//
// What it issues:
//   * client_credentials, clients `svc-rs256` / `svc-es256` (secret `secret`, client_secret_basic
//     or _post), resource indicator `https://api.test` (scopes `orders:read orders:write`) and
//     `https://other.test` (scope `other:read`): JWT access tokens (RFC 9068, header
//     `typ: at+jwt`), signed RS256 or ES256 depending on the client.
//   * MCP resources: any `http://127.0.0.1:<port>/mcp` resource (a jwtproxy in front of an
//     MCP server) gets scope `mcp:tools` and a JWT access token with that audience.
//   * DPoP (RFC 9449, on by default in oidc-provider 9): a token request with a `DPoP` proof
//     gets a token bound to the proof's key (`cnf.jkt`, token_type DPoP).
//   * authorization_code for client `web` (secret `secret`, redirect_uri
//     http://127.0.0.1/cb): the interaction logs in `alice` without a form and the grant is
//     created automatically, so a cookie-following HTTP client gets a code in one pass and
//     swaps it for an ID token (header without `typ`, aud = `web`).
//
// Keys: one RS256 and one ES256 key pair generated at start (kid = RFC 7638 thumbprint).
//
// Key rotation. oidc-provider reads `jwks` once, when a Provider is constructed, and has no
// public API to change its keystore. So the HTTP server here never belongs to one Provider:
// its request listener calls `current(req, res)`, and rotation builds a *new* Provider on the
// same issuer URL with the keys [new RS256, new ES256, old RS256, old ES256] and swaps
// `current`. No socket is closed and no request is refused; requests already inside the old
// Provider finish there. oidc-provider signs with the first key of the keystore that fits the
// alg (`keystore.selectForSign`), so new tokens carry the new kids, while /jwks still lists
// the old public keys so tokens issued before the rotation keep verifying. Each rotation
// keeps exactly one previous generation (older ones are dropped). State needed across the
// swap (sessions, grants, codes) lives in oidc-provider's module-level memory adapter, and
// cookie keys are fixed for the process, so it survives the swap.
//
// Triggers:
//   POST /__test/rotate  -> 200 {"signing": {"RS256": kid, "ES256": kid}, "kids": [...]}
//                          (the new Provider is serving when the response is sent)
//   POST /__test/retire  -> drop the previous generation now (JWKS = current keys only)
//   GET  /__test/keys    -> the same JSON as rotate, without changing anything
//   SIGUSR2              -> rotate; prints `ROTATED <rs-kid> <es-kid>` on stdout
// The /__test/ routes are answered by this wrapper, never by oidc-provider.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const API = 'https://api.test';
const OTHER_API = 'https://other.test';
const RESOURCES = {
  [API]: 'orders:read orders:write',
  [OTHER_API]: 'other:read',
};
const MCP_RESOURCE = /^http:\/\/127\.0\.0\.1:\d+\/mcp$/;
const MCP_SCOPE = 'mcp:tools';
const SECRET = 'secret';
const COOKIE_KEYS = [crypto.randomBytes(32).toString('base64url')];

const log = (...args) => console.error('[issuer]', ...args);

async function newKey(alg) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  jwk.kid = await jose.calculateJwkThumbprint(jwk);
  jwk.alg = alg;
  jwk.use = 'sig';
  return jwk;
}

async function newGeneration() {
  return [await newKey('RS256'), await newKey('ES256')];
}

function signingAlgFor(client) {
  return client?.clientId === 'svc-es256' ? 'ES256' : 'RS256';
}

function buildProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    clients: [
      ...['svc-rs256', 'svc-es256'].map((clientId) => ({
        client_id: clientId,
        client_secret: SECRET,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
      })),
      {
        client_id: 'web',
        client_secret: SECRET,
        grant_types: ['authorization_code'],
        redirect_uris: [`http://${HOST}/cb`],
        response_types: ['code'],
        scope: 'openid email',
      },
    ],
    jwks: { keys },
    cookies: { keys: COOKIE_KEYS },
    claims: { openid: ['sub'], email: ['email'] },
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, email: `${sub}@example.test` }),
    }),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP: { enabled: true }, // the default in oidc-provider 9, stated for the DPoP tests
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource, client) => {
          const mcp = MCP_RESOURCE.test(resource);
          if (!(resource in RESOURCES) && !mcp) throw new errors.InvalidTarget();
          return {
            scope: mcp ? MCP_SCOPE : RESOURCES[resource],
            audience: resource,
            accessTokenTTL: 10 * 60,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: signingAlgFor(client) } },
          };
        },
      },
    },
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    // Skip consent: the first-party grant is created on the fly (oidc-provider's documented
    // `loadExistingGrant` recipe).
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email');
      await grant.save();
      return grant;
    },
    pkce: { required: () => false },
    ttl: {
      AccessToken: 10 * 60,
      ClientCredentials: 10 * 60,
      IdToken: 10 * 60,
      Grant: 10 * 60,
      Interaction: 10 * 60,
      Session: 10 * 60,
      AuthorizationCode: 60,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  provider.on('server_error', (_ctx, err) => log('server_error', err));
  return provider;
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function main() {
  const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
  let current = (_req, res) => json(res, 503, { error: 'starting' });
  let provider;
  let generations = [await newGeneration()]; // newest first
  let issuer;

  const publicState = () => ({
    signing: Object.fromEntries(generations[0].map((k) => [k.alg, k.kid])),
    kids: generations.flat().map((k) => k.kid),
  });

  const install = () => {
    provider = buildProvider(issuer, generations.flat());
    current = provider.callback();
  };

  const rotate = async () => {
    generations = [await newGeneration(), generations[0]];
    install();
    log('rotated', JSON.stringify(publicState()));
    return publicState();
  };

  const interaction = async (req, res) => {
    // Log in `alice` without any form; consent is handled by loadExistingGrant.
    await provider.interactionDetails(req, res);
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: 'alice' } },
      { mergeWithLastSubmission: false },
    );
  };

  const server = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const fail = (err) => {
      log('wrapper error', err);
      if (!res.headersSent) json(res, 500, { error: String(err) });
    };
    if (path === '/__test/rotate' && req.method === 'POST') {
      rotate().then((state) => json(res, 200, state), fail);
    } else if (path === '/__test/retire' && req.method === 'POST') {
      generations = generations.slice(0, 1);
      install();
      json(res, 200, publicState());
    } else if (path === '/__test/keys') {
      json(res, 200, publicState());
    } else if (path.startsWith('/interaction/')) {
      interaction(req, res).catch(fail);
    } else {
      current(req, res);
    }
  });

  process.on('SIGUSR2', () => {
    rotate().then(
      (state) => process.stdout.write(`ROTATED ${state.signing.RS256} ${state.signing.ES256}\n`),
      (err) => log('rotate failed', err),
    );
  });
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      server.close();
      server.closeAllConnections();
      process.exit(0);
    });
  }

  server.listen(port, HOST, () => {
    issuer = `http://${HOST}:${server.address().port}`;
    install();
    process.stdout.write(`READY ${issuer}\n`);
  });
}

main().catch((err) => {
  log('fatal', err);
  process.exit(1);
});
