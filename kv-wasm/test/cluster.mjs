// Starts a real local kvd cluster for the SDK tests: nodes on 127.0.0.1 with ports picked at
// run time, data in a temporary directory, every process killed when the tests end (also when
// they fail or the test process exits early).
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The kvd binary: $KVD_BIN, else the debug build tests/run-all.sh makes. */
export const kvdBin = process.env.KVD_BIN ?? path.join(repoRoot, 'target', 'debug', 'kvd');

const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A port nothing listens on right now (bound then released by the OS). */
export function freePort() {
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

/**
 * A CA and, signed by it, a node certificate (valid for 127.0.0.1) and a client certificate,
 * made with the openssl command line in `dir`: {ca, nodeCert, nodeKey, clientCert, clientKey}
 * (PEM file paths).
 */
export function makeCertificates(dir) {
  const f = (name) => path.join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '30', '-subj', '/CN=kv test CA');
  const issue = (name, cn, ext) => {
    openssl('req', ...ec, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`);
    writeFileSync(f(`${name}.cnf`), ext);
    openssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'),
      '-CAcreateserial', '-out', f(`${name}.pem`), '-days', '30', '-extfile', f(`${name}.cnf`));
  };
  issue('node', 'kv node', 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  issue('client', 'kv-wasm test', 'extendedKeyUsage=clientAuth\n');
  return {
    ca: f('ca.pem'), nodeCert: f('node.pem'), nodeKey: f('node.key'),
    clientCert: f('client.pem'), clientKey: f('client.key'),
  };
}

/** GET /health over HTTPS trusting `tls.ca` and presenting the client certificate. */
function healthTls(port, tls) {
  return new Promise((resolve) => {
    const req = httpsGet({
      host: '127.0.0.1', port, path: '/health', timeout: 1000,
      ca: readFileSync(tls.ca), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey),
    }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? JSON.parse(body) : null);
        } catch {
          resolve(null);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

/** A node's /health (over mutual TLS with `tls`): null while it does not answer. */
async function health(port, tls) {
  if (tls) return healthTls(port, tls);
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
  constructor(dir, extraArgs) {
    this.dir = dir;
    /** Flags given to every node after the standard ones. */
    this.extraArgs = extraArgs;
    /** {id, port, args, child, log} per node, in start order. */
    this.nodes = [];
    /** The certificate files when the nodes serve mutual TLS (see makeCertificates). */
    this.tls = null;
  }

  /**
   * Starts `n` nodes, the first the seed of the others, and waits until all see all.
   * `extraArgs(dir)` may add flags (given the cluster's temporary directory). With `tls`, the
   * nodes serve only mutual TLS with certificates made for the cluster (`cluster.tls`).
   */
  static async start(n, extraArgs = () => [], { tls = false } = {}) {
    if (!existsSync(kvdBin)) throw new Error(`no kvd binary at ${kvdBin}: run cargo build -p kvd`);
    const dir = mkdtempSync(path.join(tmpdir(), 'kv-wasm-test-'));
    const args = extraArgs(dir);
    const files = tls ? makeCertificates(dir) : null;
    if (files) {
      args.push('--tls-cert', files.nodeCert, '--tls-key', files.nodeKey, '--tls-ca', files.ca,
        '--tls-require-client-cert');
    }
    const cluster = new Cluster(dir, args);
    cluster.tls = files;
    try {
      for (let i = 0; i < n; i++) await cluster.#add();
      await cluster.waitConverged();
    } catch (e) {
      cluster.stop();
      throw e;
    }
    return cluster;
  }

  url(i) {
    return `${this.tls ? 'wss' : 'ws'}://127.0.0.1:${this.nodes[i].port}`;
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
      '--sync', 'none', '--gossip-interval-ms', '300',
    ];
    if (i > 0) args.push('--seed', `127.0.0.1:${this.nodes[0].port}`);
    args.push(...this.extraArgs);
    const node = { id, port, args, child: null, log: '' };
    this.nodes.push(node);
    this.#spawn(node);
    await waitFor(`${id} did not answer /health`, async () => (await health(port, this.tls)) !== null, () => this.logs());
    // Joins are serialized: the next node picks its tokens knowing this one's.
    const seed = this.nodes[0].port;
    await waitFor(`${id} did not enter the ring`,
      async () => (await health(seed, this.tls))?.ring_nodes === i + 1, () => this.logs());
  }

  #spawn(node) {
    const child = spawn(kvdBin, node.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk) => {
      node.log = (node.log + chunk.toString()).slice(-20_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('exit', () => live.delete(child));
    live.add(child);
    node.child = child;
  }

  /** Waits until every running node reports every running node up and all in the ring. */
  async waitConverged() {
    const running = this.nodes.filter((nd) => nd.child && nd.child.exitCode === null && nd.child.signalCode === null);
    await waitFor('the cluster did not converge', async () => {
      for (const nd of running) {
        const h = await health(nd.port, this.tls);
        if (!h || h.members_up !== running.length || h.ring_nodes !== this.nodes.length) return false;
      }
      return true;
    }, () => this.logs());
  }

  /** SIGKILLs node `i` and waits for it to be gone. */
  async kill(i) {
    const child = this.nodes[i].child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  /** Starts node `i` again with its data dir and port. */
  async restart(i) {
    const node = this.nodes[i];
    this.#spawn(node);
    await waitFor(`${node.id} did not come back`, async () => (await health(node.port, this.tls)) !== null, () => this.logs());
  }

  /** Kills every node and removes the data. */
  stop() {
    for (const nd of this.nodes) {
      if (nd.child && nd.child.exitCode === null && nd.child.signalCode === null) nd.child.kill('SIGKILL');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
