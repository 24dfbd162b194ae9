// Compiled (not run) by build.sh with tsc: the declarations of both packages must accept
// what a caller writes and reject what they should not.
import * as node from '../pkg/node/index.mjs';
import * as web from '../pkg/web/index.js';
import type { Causality, GetResult, KvClient, Value } from '../pkg/node/index.mjs';

async function use(sdk: typeof node | typeof web): Promise<void> {
  const client: KvClient = await sdk.KvClient.connect('ws://127.0.0.1:7070', { token: 't', timeoutMs: 1000 });
  const read: GetResult = await client.get('k', { r: 2 });
  const values: Value[] = read.values;
  const put: { context: string } = await client.put('k', new Uint8Array([1]), { context: read.context, w: 2 });
  await client.delete('k', { context: put.context });
  const counted: number = (await client.incr('n', -2, { w: 2 })).value;
  const shown: number | undefined = (await client.get('n')).counter;
  const merged = sdk.reconcile(values, 'union');
  const joined: string = sdk.reconcile(read, (vs) => vs.length.toString());
  const c: Causality = sdk.compareContexts(read.context, put.context);
  await client.update('k', 'merge');
  await client.update('k', async (vs) => (vs.length ? vs[0] : null));
  try {
    sdk.checkContext('');
  } catch (e) {
    if (e instanceof sdk.KvError) console.log(e.code);
  }
  client.close();
  // @ts-expect-error: only the three built-in strategies are names
  sdk.reconcile(values, 'newest');
  // @ts-expect-error: values are strings or bytes
  await client.put('k', 42);
  void counted;
  void shown;
  void merged;
  void joined;
  void c;
}
void use;

// The example of README.md, as written there (with its import from pkg/node): it must compile
// under strict mode. `process` stands in for @types/node.
declare const process: { env: Record<string, string | undefined> };
async function readmeExample(): Promise<void> {
  const { KvClient, reconcile, compareContexts } = node;

  const kv = await KvClient.connect('ws://127.0.0.1:7070', { token: process.env.KV_TOKEN });

  const first = await kv.put('greeting', 'hello');
  const { found, values, siblings, context } = await kv.get('greeting');

  // Concurrent writers leave siblings; resolve them and write back with the read's context,
  // which replaces exactly the versions that read saw.
  const read = await kv.get('cart');
  const merged = reconcile(read, 'merge');          // or 'union', 'lww', or (values) => value
  if (merged !== null) {                            // null: the read found no value
    await kv.put('cart', merged, { context: read.context });
  }

  // Or let update() do it: read, reconcile, write back, retry while siblings remain.
  await kv.update('tags', 'union');
  await kv.update('cart', (values) => {
    const merged = reconcile(values, 'merge');      // JSON text, or null for no values
    const cart = typeof merged === 'string' ? JSON.parse(merged) : {};
    cart.apple = 1;
    return JSON.stringify(cart);
  });

  compareContexts(first.context, read.context);     // 'before' | 'after' | 'equal' | 'concurrent'
  kv.close();
  void [found, values, siblings, context];
}
void readmeExample;
