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
