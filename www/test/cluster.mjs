// Starts a real local kvd cluster for the console test: nodes on 127.0.0.1 with ports picked at
// run time, data in a temporary directory, every process killed when the test ends (also when
// it fails or the test process exits early).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The kvd binary: $KVD_BIN, else the debug build tests/run-all.sh makes. */
export const kvdBin = process.env.KVD_BIN ?? path.join(repoRoot, 'target', 'debug', 'kvd');

const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A port nothing listens on right now (bound then released by the OS). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function health(port) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok ? await res.json() : null;
  } catch {
    return null;
  }
}

async function waitFor(what, check, logs, limitMs = 30_000) {
  const deadline = Date.now() + limitMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} within ${limitMs} ms; node logs:\n${logs()}`);
    await sleep(100);
  }
}

export class Cluster {
  /** {id, port, child, log} per node, in start order. */
  nodes = [];

  constructor(dir, extraArgs) {
    this.dir = dir;
    this.extraArgs = extraArgs;
  }

  /** Starts `n` nodes, the first the seed of the others, and waits until all see all up. */
  static async start(n, extraArgs = []) {
    if (!existsSync(kvdBin)) throw new Error(`no kvd binary at ${kvdBin}: run cargo build -p kvd`);
    const cluster = new Cluster(mkdtempSync(path.join(tmpdir(), 'kv-console-test-')), extraArgs);
    try {
      for (let i = 0; i < n; i++) await cluster.#add();
      await waitFor('the cluster did not converge', async () => {
        for (const nd of cluster.nodes) {
          const h = await health(nd.port);
          if (!h || h.members_up !== n || h.ring_nodes !== n) return false;
        }
        return true;
      }, () => cluster.logs());
    } catch (e) {
      cluster.stop();
      throw e;
    }
    return cluster;
  }

  url(i) {
    return `ws://127.0.0.1:${this.nodes[i].port}`;
  }

  logs() {
    return this.nodes.map((nd) => `--- ${nd.id}\n${nd.log.slice(-3000)}`).join('\n');
  }

  async #add() {
    const i = this.nodes.length;
    const id = `n${i + 1}`;
    const port = await freePort();
    const args = [
      '--id', id, '--listen', `127.0.0.1:${port}`, '--data-dir', path.join(this.dir, id),
      '--sync', 'none', '--gossip-interval-ms', '300', ...this.extraArgs,
    ];
    if (i > 0) args.push('--seed', `127.0.0.1:${this.nodes[0].port}`);
    const node = { id, port, child: null, log: '' };
    this.nodes.push(node);
    const child = spawn(kvdBin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk) => { node.log = (node.log + chunk.toString()).slice(-20_000); };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('exit', () => live.delete(child));
    live.add(child);
    node.child = child;
    await waitFor(`${id} did not answer /health`, async () => (await health(port)) !== null, () => this.logs());
    // Joins one at a time: the next node picks its tokens knowing this one's.
    const seed = this.nodes[0].port;
    await waitFor(`${id} did not enter the ring`, async () => (await health(seed))?.ring_nodes === i + 1, () => this.logs());
  }

  /** SIGKILLs node `i` and waits for it to be gone. */
  async kill(i) {
    const child = this.nodes[i].child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  /** Kills every node and removes the data. */
  stop() {
    for (const nd of this.nodes) {
      if (nd.child && nd.child.exitCode === null && nd.child.signalCode === null) nd.child.kill('SIGKILL');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
