// The console's pure logic in Node.js: Prometheus parsing, rates and p99 from successive
// scrapes, and the preference-list walk drawn on the ring.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { MetricsHistory, p99Between, parseMetrics, series } from '../metrics.js';
import { preferenceVnodes, tokenFraction } from '../ring.js';

/** A scrape with `counts[op]` requests of which `slow[op]` took over 10 ms. */
function scrape(counts, slow = {}) {
  const lines = ['# TYPE kv_requests_total counter'];
  for (const [op, n] of Object.entries(counts)) {
    lines.push(`kv_requests_total{op="${op}"} ${n}`);
    const s = slow[op] ?? 0;
    lines.push(`kv_request_duration_seconds_bucket{op="${op}",le="0.001"} ${n - s}`);
    lines.push(`kv_request_duration_seconds_bucket{op="${op}",le="0.01"} ${n - s}`);
    lines.push(`kv_request_duration_seconds_bucket{op="${op}",le="0.1"} ${n}`);
    lines.push(`kv_request_duration_seconds_bucket{op="${op}",le="+Inf"} ${n}`);
  }
  lines.push('kv_hints_pending{target="n3"} 7', 'kv_anti_entropy_sessions_total 4', '');
  return parseMetrics(lines.join('\n'));
}

test('Prometheus text is parsed by name and labels', () => {
  const m = scrape({ get: 5 });
  assert.equal(m.get('kv_requests_total{op="get"}'), 5);
  assert.equal(m.get('kv_anti_entropy_sessions_total'), 4);
  assert.deepEqual(series(m, 'kv_hints_pending'), [{ labels: { target: 'n3' }, value: 7 }]);
  assert.equal(series(m, 'kv_request_duration_seconds_bucket').length, 4);
});

test('rates and p99 come from the difference of two scrapes', () => {
  const h = new MetricsHistory();
  h.add(0, scrape({ get: 100, put: 0, delete: 0 }, { get: 100 }));
  // 2 s later: 400 more gets, all fast, and 200 puts of which 3 slow (1 % of 600 is 6 > 3).
  const p = h.add(2000, scrape({ get: 500, put: 200, delete: 0 }, { get: 100, put: 3 }));
  assert.deepEqual(p.rates, { get: 200, put: 100, delete: 0 });
  assert.equal(p.p99, 0.001);
  // 10 slow of 600: the 99th percentile lies in the 0.1 s bucket.
  const q = h.add(4000, scrape({ get: 900, put: 400, delete: 0 }, { get: 110, put: 3 }));
  assert.equal(q.p99, 0.1);
  assert.equal(h.delta('kv_requests_total{op="get"}'), 800);
  // Nothing happened: no p99 to show.
  const r = h.add(6000, scrape({ get: 900, put: 400, delete: 0 }, { get: 110, put: 3 }));
  assert.equal(r.p99, null);
  assert.equal(p99Between(scrape({ get: 1 }), scrape({ get: 1 })), null);
});

test('history keeps only the last five minutes', () => {
  const h = new MetricsHistory();
  for (let t = 0; t <= 10 * 60_000; t += 2000) h.add(t, scrape({ get: t }));
  assert.ok(h.points[0].t >= 5 * 60_000, `oldest kept at ${h.points[0].t}`);
});

test('tokens map onto the circle', () => {
  assert.equal(tokenFraction('0'), 0);
  assert.equal(tokenFraction((2n ** 63n).toString()), 0.5);
  assert.ok(tokenFraction('18446744073709551615') < 1);
});

test('the preference walk marks the first vnode of each replica clockwise from the key', () => {
  const vnodes = [
    { token: '100', node: 'a' }, { token: '200', node: 'b' }, { token: '300', node: 'a' },
    { token: '400', node: 'c' }, { token: '500', node: 'b' },
  ];
  assert.deepEqual(preferenceVnodes(vnodes, '250', ['a', 'c', 'b']), [2, 3, 4]);
  // A token equal to a vnode's belongs to that vnode.
  assert.deepEqual(preferenceVnodes(vnodes, '200', ['b', 'a']), [1, 2]);
  // Past the last token the walk wraps to the first.
  assert.deepEqual(preferenceVnodes(vnodes, '600', ['a', 'b', 'c']), [0, 1, 3]);
  // A placement that skips a node (rack or DC rules) is drawn as the server chose.
  assert.deepEqual(preferenceVnodes(vnodes, '250', ['a', 'b']), [2, 4]);
});
