// A minimal MCP server written with the official TypeScript SDK (stateless Streamable HTTP,
// as the SDK's simpleStatelessStreamableHttp example), for jwtproxy's MCP interop test.
//
//   node mcp_server.mjs     -> prints `READY <url>` once listening on 127.0.0.1 (any port)
//
// It has no authorization of its own: jwtproxy in front of it does all of that. Each
// request's Authorization header, if any reached it, is counted at GET /__test/seen so the
// test can check that the client's token was not passed through.

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import * as z from 'zod/v4';

const seen = { requests: 0, authorization: 0 };

function getServer() {
  const server = new McpServer({ name: 'jwtproxy-interop-mcp', version: '1.0.0' });
  server.registerTool('add', {
    description: 'Adds two numbers',
    inputSchema: { a: z.number(), b: z.number() },
  }, async ({ a, b }) => ({ content: [{ type: 'text', text: String(a + b) }] }));
  return server;
}

const app = createMcpExpressApp();
app.get('/__test/seen', (_req, res) => res.json(seen));
app.post('/mcp', async (req, res) => {
  seen.requests += 1;
  if (req.headers.authorization) seen.authorization += 1;
  const server = getServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, req.body);
});

const listener = app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`READY http://127.0.0.1:${listener.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    listener.close();
    process.exit(0);
  });
}
