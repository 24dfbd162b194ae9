// Stand-ins for a kvd node in tests that need a server misbehaving in one precise way: a
// WebSocket server whose answers the test writes, and a TCP listener that accepts and never
// says a word.
import { createServer } from 'node:net';
import { WebSocketServer } from 'ws';

/**
 * A WebSocket server on 127.0.0.1. `answer(request, text, connection)` is called with each
 * request frame (parsed, and as received) and the number of the connection it came on (1 for
 * the first accepted), and returns the text to send back, or null to stay silent. Resolves to
 * {url, requests (every request received, parsed, with its `connection`), connections (how
 * many were accepted), close()}.
 */
export function fakeNode(answer) {
  return new Promise((resolve, reject) => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    const requests = [];
    let connections = 0;
    wss.on('error', reject);
    wss.on('connection', (socket) => {
      const connection = ++connections;
      socket.on('message', (data) => {
        const text = data.toString();
        const request = JSON.parse(text);
        requests.push({ ...request, connection });
        const reply = answer(request, text, connection);
        if (reply != null) socket.send(reply);
      });
    });
    wss.on('listening', () => {
      resolve({
        url: `ws://127.0.0.1:${wss.address().port}`,
        requests,
        get connections() {
          return connections;
        },
        /** Drops every connection and stops listening. */
        close: () => new Promise((done) => {
          for (const socket of wss.clients) socket.terminate();
          wss.close(() => done());
        }),
      });
    });
  });
}

/**
 * A TCP listener on 127.0.0.1 (on `port`, else one the OS picks) that accepts connections and
 * never answers: a WebSocket handshake to it never completes. Resolves to {port, close()}.
 */
export function silentListener(port = 0) {
  return new Promise((resolve, reject) => {
    const sockets = new Set();
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
    });
    server.on('error', reject);
    server.listen(port, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        close: () => new Promise((done) => {
          for (const socket of sockets) socket.destroy();
          server.close(() => done());
        }),
      });
    });
  });
}
