// The official MCP TypeScript SDK client with its client-credentials OAuth provider.
//
//   node mcp_client.mjs <mcp-url> <issuer> <client-id> <client-secret> <scope>
//
// Connects to the MCP server at <mcp-url> (jwtproxy in front of it): the first request gets
// a 401 whose `resource_metadata` leads the SDK to the authorization server, which issues a
// token for the resource; then it lists the tools and calls `add`. Prints one JSON line:
// {tools, result, token_aud, requests: [[method, url, status], ...]}.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const [url, issuer, clientId, clientSecret, scope] = process.argv.slice(2);
const requests = [];
const recordingFetch = async (input, init) => {
  const res = await fetch(input, init);
  requests.push([init?.method ?? 'GET', String(input instanceof Request ? input.url : input),
    res.status]);
  return res;
};

async function main() {
  const authProvider = new ClientCredentialsProvider({
    // the SDK's client_credentials token request takes its scope from here (fetchToken
    // reads clientMetadata.scope), not from the metadata's scopes_supported
    clientId, clientSecret, expectedIssuer: issuer, scope,
  });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    authProvider, fetch: recordingFetch,
  });
  const client = new Client({ name: 'jwtproxy-interop-client', version: '1.0.0' });
  try {
    await client.connect(transport);
  } catch (err) {
    // the SDK authorizes on the first 401 and asks the caller to connect again
    if (err?.name !== 'UnauthorizedError' && !/Unauthorized/.test(String(err))) throw err;
    await client.connect(transport);
  }
  const tools = (await client.listTools()).tools.map((tool) => tool.name);
  const result = await client.callTool({ name: 'add', arguments: { a: 2, b: 3 } });
  const token = authProvider.tokens()?.access_token;
  const payload = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
  process.stdout.write(`${JSON.stringify({
    tools, result: result.content, token_aud: payload.aud, requests,
  })}\n`);
  await client.close();
}

main().catch((err) => {
  console.error(err);
  console.error(JSON.stringify(requests));
  process.exit(1);
});
